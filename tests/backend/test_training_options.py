"""Training options the MLproject does not declare (packing, checkpoint_layers, ...) pass through `-P`."""
from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

import pytest
from mlflow.projects._project_spec import load_project

from ade_mlflow_plugin.backend.params import resolve_params
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.training.entry import parse_config
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def project():
    return load_project(str(REPO_ROOT))


def _resolve(project, params: dict[str, str], entry: str = "main"):  # noqa: ANN001, ANN202
    return resolve_params(project, entry, {"codebase": str(REPO_ROOT / "examples"), **params}, REPO_ROOT)


def test_undeclared_training_options_reach_the_entry_parsed(project):
    resolved = _resolve(project, {"packing": "false", "checkpoint_layers": "4", "eval_samples": "8"})

    # What the job's launcher runs: MLflow's compute_command appends undeclared params as --name value.
    with tempfile.TemporaryDirectory() as storage:
        command = project.get_entry_point("main").compute_command({**resolved.values, **resolved.paths}, storage)
    argv = shlex.split(command)
    assert argv[:2] == ["python", "entrypoints/main.py"]
    config = parse_config("main", argv[2:])
    assert (config.packing, config.checkpoint_layers, config.eval_samples) == (False, "4", 8)


@pytest.mark.parametrize("params, message", [
    ({"pakcing": "false"}, "parameter 'pakcing' is not declared by entry point 'main' (did you mean 'packing'?)"),
    ({"packing": "maybe"}, "parameter 'packing': got 'maybe', expected true or false"),
    ({"checkpoint_layers": "x"}, "parameter 'checkpoint_layers': got 'x', expected auto or a whole number >= 0"),
])
def test_bad_undeclared_options_are_one_line(project, params, message):
    with pytest.raises(ConfigError) as info:
        _resolve(project, params)

    assert info.value.message == message


def test_entries_that_do_not_train_still_refuse_them(project):
    with pytest.raises(ConfigError, match="'packing' is not declared by entry point 'prepare_data'"):
        _resolve(project, {"packing": "false"}, entry="prepare_data")
