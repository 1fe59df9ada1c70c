"""MLflow: run input with the digest, stats.json artifact, digest tag; the MLproject entry end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from ade_mlflow_plugin.dataset import build_dataset

REPO = Path(__file__).resolve().parents[2]


def _check_run(client, run_id: str, digest: str) -> None:
    run = client.get_run(run_id)
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    assert inputs[0].dataset.name == "codebase" and inputs[0].dataset.digest == digest
    assert {t.key: t.value for t in inputs[0].tags}.get("mlflow.data.context") == "training"
    assert run.data.tags["ade.dataset_digest"] == digest
    stats_file = client.download_artifacts(run_id, "stats.json")
    assert json.loads(Path(stats_file).read_text())["digest"] == digest


def test_active_run_gets_input_stats_and_tag(codebase, tracking_uri):
    with mlflow.start_run() as run:
        prepared = build_dataset(codebase, None, num_examples=20, synthetic_ratio=0.3, progress=False)
    _check_run(mlflow.MlflowClient(), run.info.run_id, prepared.digest)
    profile = json.loads(mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs[0].dataset.profile)
    assert profile["num_rows"] == 20


def test_without_a_run_nothing_is_logged(codebase, tracking_uri):
    before = mlflow.search_runs(search_all_experiments=True)
    build_dataset(codebase, None, num_examples=5, synthetic_ratio=0.3, progress=False)
    assert mlflow.active_run() is None
    assert len(mlflow.search_runs(search_all_experiments=True)) == len(before)


@pytest.fixture
def tokenizer_dir(chat_tokenizer, tmp_path) -> Path:
    path = tmp_path / "tiny-base"
    chat_tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_mlflow_run_prepare_data_entry(codebase, tracking_uri, tokenizer_dir, tmp_path):
    """`mlflow run -e prepare_data` runs the MLproject command line and logs to the run MLflow made."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "SM_OUTPUT_DATA_DIR": str(tmp_path / "sm"),
           # the MLproject command says `python`: make it this interpreter
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "prepare_data", "--env-manager", "local",
           "--experiment-name", "prepare-data-entry",
           "-P", f"codebase={codebase}", "-P", f"base_model={tokenizer_dir}", "-P", "num_examples=24",
           "-P", "synthetic_ratio=0.25", "-P", "seed=5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((tmp_path / "sm" / "prepared_dataset" / "stats.json").read_text())
    assert stats["examples"] == {**stats["examples"], "total": 24, "synthetic": 6}
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("prepare-data-entry")
    (run,) = client.search_runs([experiment.experiment_id])
    _check_run(client, run.info.run_id, stats["digest"])
    assert run.data.params["num_examples"] == "24"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "dataset")}
    assert {"dataset/dataset_dict.json", "dataset/train", "dataset/eval", "dataset/stats.json"} <= logged


def test_entry_bad_param_is_one_line(codebase, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "entrypoints" / "prepare_data.py"), "--codebase",
                           str(codebase), "--num_examples", "12.5", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()  # the wording is the options kit's; here: one line naming key and value
    assert err.startswith("prepare_data: error: ") and "\n" not in err, err
    assert "num_examples" in err and "'12.5'" in err, err
