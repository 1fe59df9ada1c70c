"""Training parameters are checked by the backend with TrainingConfig's own parsers, declared in the
MLproject or passed undeclared with `-P`, before any MLflow run exists (so never inside a paid job)."""
from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import uuid

import pytest
from mlflow.projects.utils import load_project

from ade_mlflow_plugin.backend.params import entry_point_names, resolve_params
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.training.entry import parse_config
from tests.conftest import REPO_ROOT

CODEBASE = str(REPO_ROOT / "examples")

#: The values the review found passing the backend and failing in the job, and what the line must say.
BAD_TRAINING_VALUES = [
    ("lora_r", "0", "expected an integer between 1 and 1024"),
    ("quantization", "16bit", "expected 'none' or '8bit' or '4bit'"),
    ("learning_rate", "5", "expected a number in (0.0, 1.0]"),
    ("num_examples", "12.5", "expected an integer >= 1"),
    ("synthetic_ratio", "2", "expected a number in [0.0, 1.0]"),
    ("eval_fraction", "1.5", "expected a number in [0.0, 1.0)"),
]


@pytest.fixture(scope="module")
def project():
    return load_project(str(REPO_ROOT))


def _resolve(project, params: dict[str, str], entry: str = "main"):  # noqa: ANN001, ANN202
    return resolve_params(project, entry, {"codebase": CODEBASE, **params}, REPO_ROOT)


def test_entry_point_names_come_from_the_mlproject():
    assert entry_point_names(REPO_ROOT) == ["evaluate", "main", "prepare_data", "train"]


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
    ({"epochs": "0"}, "parameter 'epochs': must be > 0 when max_steps is 0: pass e.g. epochs=2 or max_steps=500"),
])
def test_bad_options_are_one_line(project, params, message):
    with pytest.raises(ConfigError) as info:
        _resolve(project, params)

    assert info.value.message == message


def test_entries_that_do_not_train_still_refuse_them(project):
    with pytest.raises(ConfigError, match="'packing' is not declared by entry point 'prepare_data'"):
        _resolve(project, {"packing": "false"}, entry="prepare_data")


@pytest.fixture
def experiment(tracking_uri):  # noqa: ANN001, ANN201
    import mlflow

    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment(f"bad-training-values-{uuid.uuid4().hex[:8]}")
    yield experiment_id, lambda: len(client.search_runs([experiment_id]))


@pytest.mark.parametrize("name, value, expected", BAD_TRAINING_VALUES, ids=[v[0] for v in BAD_TRAINING_VALUES])
def test_bad_training_value_exits_2_before_any_run(experiment, tracking_uri, name, value, expected):
    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend

    experiment_id, runs = experiment
    with pytest.raises(ConfigError) as info:
        AdeSageMakerBackend(console=io.StringIO()).run(
            str(REPO_ROOT), "main", {"codebase": CODEBASE, name: value}, None, {"mode": "local"}, tracking_uri,
            experiment_id)

    assert info.value.exit_code == 2
    assert info.value.message == f"parameter '{name}': got '{value}', {expected}"
    assert runs() == 0


@pytest.mark.slow  # a subprocess `mlflow run`: make test runs it, make test-fast does not
def test_bad_training_value_through_the_mlflow_run_cli(experiment, tracking_uri, tmp_path):
    experiment_id, runs = experiment
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), "-b", "ade-sagemaker", "--backend-config",
           json.dumps({"mode": "local"}), "--experiment-id", experiment_id, "-P", f"codebase={CODEBASE}",
           "-P", "lora_r=0"]
    result = subprocess.run(cmd, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ade-sagemaker: error:")]
    assert lines == ["ade-sagemaker: error: parameter 'lora_r': got '0', expected an integer between 1 and 1024"]
    assert runs() == 0


@pytest.mark.parametrize("entry, params, message", [
    ("prepare_data", {"num_examples": "12.5"}, "parameter 'num_examples': got '12.5', expected an integer >= 1"),
    ("prepare_data", {"synthetic_ratio": "2"}, "parameter 'synthetic_ratio': got '2', expected a number in "
                                               "[0.0, 1.0]"),
    ("evaluate", {"num_samples": "0", "model_uri": "models:/m/1", "dataset": CODEBASE},
     "parameter 'num_samples': got '0', expected an integer >= 1"),
])
def test_the_other_entries_check_their_own_options_before_the_job(project, entry, params, message):
    given = params if entry == "evaluate" else {"codebase": CODEBASE, **params}
    with pytest.raises(ConfigError) as info:
        resolve_params(project, entry, given, REPO_ROOT)

    assert info.value.message == message
