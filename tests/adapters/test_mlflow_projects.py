"""adapters.mlflow_projects: MLflow's backend_config keys and its `mlflow run` click command are still there."""
from __future__ import annotations

import click
import mlflow.cli
import pytest
from mlflow.projects import utils as project_utils

from ade_mlflow_plugin.adapters import mlflow_projects

CHANGED = "mlflow changed {name}: update ade_mlflow_plugin/adapters/mlflow_projects.py and docs/internals.md"


@pytest.mark.parametrize("constant, key", sorted(mlflow_projects._FALLBACK_KEYS.items()))
def test_backend_config_keys_are_mlflows_constants(constant, key):
    value = getattr(project_utils, constant, None)
    assert value == key, CHANGED.format(name=f"mlflow.projects.utils.{constant} ({value!r}, was {key!r})")
    assert mlflow_projects.backend_key(constant) == key


def test_synchronous_reads_mlflows_key_and_defaults_to_waiting():
    assert mlflow_projects.synchronous({project_utils.PROJECT_SYNCHRONOUS: False}) is False
    assert mlflow_projects.synchronous({project_utils.PROJECT_SYNCHRONOUS: True}) is True
    assert mlflow_projects.synchronous({}) is True and mlflow_projects.synchronous("config.json") is True
    assert "SYNCHRONOUS" in mlflow_projects.mlflow_backend_keys()


def test_mlflow_run_command_is_recognised_and_nothing_else():
    command = getattr(mlflow.cli, "run", None)
    assert isinstance(command, click.Command) and command.name == "run", CHANGED.format(
        name="mlflow.cli.run (the `mlflow run` click command)")
    options = {p.name for p in command.params}
    assert {"backend", "backend_config"} <= options, CHANGED.format(name=f"mlflow.cli.run options {options}")
    assert mlflow_projects.under_mlflow_run_cli() is False  # no click context: the Python API
    with click.Context(mlflow.cli.cli, info_name="mlflow") as parent:
        with click.Context(command, info_name="run", parent=parent):
            assert mlflow_projects.under_mlflow_run_cli() is True
        with click.Context(click.Command("run"), info_name="run", parent=parent):
            assert mlflow_projects.under_mlflow_run_cli() is False  # another tool's `run` verb
