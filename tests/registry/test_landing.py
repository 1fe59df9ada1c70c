"""A run's registered model lands in its local output_dir (<output_dir>/registry/<name>-v<N>/) when whatever
sees the job end sees it: the follower's observer, `ade-mlflow status`, `ade-mlflow reconcile`.
Real sqlite MLflow store and registry; SageMaker jobs in moto."""
from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from ade_mlflow_plugin.backend.commands import reconcile_command, status_command
from ade_mlflow_plugin.backend.monitor import build_observers
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.registry.landing import LANDED_TAG, OUTPUT_DIR_TAG, land_run
from tests.backend.test_cost_command import moto_job


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the sqlite store's artifacts go to ./mlruns: the test's tmp dir
    monkeypatch.setenv("ADE_MLFLOW_CACHE_DIR", str(tmp_path / "cache"))
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def _trained_run(client: mlflow.MlflowClient, tmp_path: Path, name: str, **tags: str) -> str:
    """A run as the job leaves it: a model logged and registered as version 1 of ``name``."""
    experiment = client.get_experiment_by_name("landing") or client.create_experiment("landing")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    model = tmp_path / f"model-{run_id}"
    (model / "weights").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors:\n  transformers: {}\n")
    (model / "weights" / "adapter.bin").write_bytes(b"\x01" * 4096)
    client.log_artifacts(run_id, str(model), "model")
    client.log_metric(run_id, "eval_loss", 1.25)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    return run_id


def _assert_landed(out: Path, name: str, run_id: str) -> None:
    version = out / "registry" / f"{name}-v1"
    assert (version / "model_artifacts" / "weights" / "adapter.bin").read_bytes() == b"\x01" * 4096
    meta = json.loads((version / "metadata.json").read_text())
    assert (meta["name"], meta["version"], meta["source_run"]) == (name, "1", run_id)
    assert json.loads((version / "performance_metrics.json").read_text())["eval_loss"] == 1.25


def test_status_lands_the_model_of_a_completed_job_once(tracking, aws, tmp_path):
    client = mlflow.MlflowClient()
    job, out = f"ade-land-{uuid.uuid4().hex[:8]}", tmp_path / "output"
    moto_job(job, 1, False)  # moto: Completed at creation
    run_id = _trained_run(client, tmp_path, "ade-payments", **{
        "sagemaker.job_name": job, "sagemaker.region": "us-east-1", "sagemaker.mode": "sagemaker",
        OUTPUT_DIR_TAG: str(out)})

    first = CliRunner().invoke(status_command, [run_id])
    assert first.exit_code == 0, first.output
    assert f"model ade-payments/v1 -> {out / 'registry' / 'ade-payments-v1'}" in first.output
    _assert_landed(out, "ade-payments", run_id)
    assert client.get_run(run_id).data.tags[LANDED_TAG] == "ade-payments/v1"

    stamp = (out / "registry" / "ade-payments-v1" / "metadata.json").stat().st_mtime_ns
    again = CliRunner().invoke(status_command, [run_id])
    assert again.exit_code == 0 and "ade-payments/v1 ->" not in again.output, again.output
    assert (out / "registry" / "ade-payments-v1" / "metadata.json").stat().st_mtime_ns == stamp  # untouched


@pytest.mark.slow  # the same path as status (reconcile_run), for every unfinished run
def test_reconcile_lands_it_and_a_run_without_output_dir_is_left_alone(tracking, aws, tmp_path):
    client = mlflow.MlflowClient()
    job, plain_job, out = f"ade-land-{uuid.uuid4().hex[:8]}", f"ade-plain-{uuid.uuid4().hex[:8]}", tmp_path / "o"
    moto_job(job, 1, False)
    moto_job(plain_job, 1, False)
    common = {"sagemaker.region": "us-east-1", "sagemaker.mode": "sagemaker"}
    run_id = _trained_run(client, tmp_path, "ade-svc", **common, **{"sagemaker.job_name": job,
                                                                    OUTPUT_DIR_TAG: str(out)})
    plain = _trained_run(client, tmp_path, "ade-svc", **common, **{"sagemaker.job_name": plain_job})

    result = CliRunner().invoke(reconcile_command, ["--experiment", "landing"])
    assert result.exit_code == 0, result.output
    # (the in-process moto server prints to the same stdout: look for the text, not a whole line)
    assert f"(model ade-svc/v1 -> {out / 'registry' / 'ade-svc-v1'} (" in result.output, result.output
    _assert_landed(out, "ade-svc", run_id)
    assert sorted(p.name for p in (out / "registry").iterdir() if not p.name.startswith(".")) == ["ade-svc-v1"]
    assert LANDED_TAG not in client.get_run(plain).data.tags  # its version 2 went nowhere
    assert land_run(client, client.get_run(plain)) is None


def test_the_follower_tags_the_run_and_lands_the_model_at_a_completed_end(tracking, tmp_path):
    client = mlflow.MlflowClient()
    out = tmp_path / "follower-out"
    config = CloudTrainingConfig.from_backend_config({"mode": "local", "output_dir": str(out)})
    run_id = _trained_run(client, tmp_path, "ade-local")
    console = io.StringIO()
    observers = build_observers(config=config, clients=None, mlflow_client=client, run_id=run_id, job=None,
                                console=console)
    assert client.get_run(run_id).data.tags[OUTPUT_DIR_TAG] == str(out.resolve())

    for observer in observers:
        observer.on_end({"TrainingJobStatus": "Failed", "TrainingJobName": "j"})
    assert not out.exists()  # a failed job lands nothing
    for observer in observers:
        observer.on_end({"TrainingJobStatus": "Completed", "TrainingJobName": "j"})
    _assert_landed(out, "ade-local", run_id)
    assert f"j: model ade-local/v1 -> {out / 'registry' / 'ade-local-v1'}" in console.getvalue()
    assert "WARNING" not in console.getvalue()


def test_no_output_dir_means_no_landing_observer(tracking):
    config = CloudTrainingConfig.from_backend_config({"mode": "local"})
    assert build_observers(config=config, clients=None, mlflow_client=None, run_id="r", job=None) == []
