"""sharding=auto|none|fsdp: a TrainingConfig option the main and train entries take (issue 21 item 2)."""
from __future__ import annotations

import pytest
from mlflow.projects.utils import load_project

from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.training.entry import parse_config
from tests.conftest import REPO_ROOT


def test_default_is_auto_and_values_parse_case_insensitively():
    assert TrainingConfig().sharding == "auto"
    assert TrainingConfig.from_params({"sharding": "FSDP"}).sharding == "fsdp"
    assert TrainingConfig.from_params({"sharding": " none "}).sharding == "none"


def test_bad_value_is_one_line_naming_the_choices():
    with pytest.raises(ConfigError) as caught:
        TrainingConfig.from_params({"sharding": "zero3"})
    message = caught.value.message
    assert "'sharding'" in message and "'zero3'" in message and "'auto' or 'none' or 'fsdp'" in message
    assert "\n" not in message


@pytest.mark.parametrize("entry", ["main", "train"])
def test_entries_declare_and_take_sharding(entry):
    """MLproject declares it (default auto) and the rendered command line parses."""
    spec = load_project(str(REPO_ROOT)).get_entry_point(entry)
    assert spec.parameters["sharding"].default == "auto"
    assert "--sharding {sharding}" in spec.command
    assert parse_config(entry, ["--sharding", "fsdp"]).sharding == "fsdp"
