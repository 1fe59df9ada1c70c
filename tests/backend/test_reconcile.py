"""`ade-mlflow reconcile` and `status` bring unfollowed runs level with their jobs (moto SageMaker, sqlite MLflow)."""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from ade_mlflow_plugin.backend.commands import reconcile_command, status_command
from ade_mlflow_plugin.backend.local import STATE_FILE, JobRoot
from tests.backend.test_cost_command import moto_job
from tests.backend.test_mlflow_run_sagemaker import _put_logs
from tests.conftest import free_port


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns: not in the repository
    monkeypatch.setenv("ADE_MLFLOW_CACHE_DIR", str(tmp_path / "cache"))  # no price cache of the user's
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def _lines(output: str) -> list[str]:
    """reconcile's lines (the in-process moto server prints its own complaints to the same stdout)."""
    return [line for line in output.splitlines() if re.match(r"[0-9a-f]{32}  |no unfinished run", line)]


def _submitted_run(client: mlflow.MlflowClient, experiment: str, job_name: str, **tags: str) -> str:
    experiment_id = client.get_experiment_by_name(experiment)
    experiment_id = experiment_id.experiment_id if experiment_id else client.create_experiment(experiment)
    run = client.create_run(experiment_id, tags={"sagemaker.job_name": job_name, "sagemaker.region": "us-east-1",
                                                 "sagemaker.mode": "sagemaker", **tags})
    return run.info.run_id


def test_reconcile_ends_a_running_run_whose_job_completed(tracking, moto_jobs):
    client = mlflow.MlflowClient()
    name = f"ade-rec-{uuid.uuid4().hex[:8]}"
    job = moto_job(name, 1, False, training_time_in_seconds=1800, billable_time_in_seconds=1800)
    run_id = _submitted_run(client, "walked-away", name)
    other = _submitted_run(client, "elsewhere", f"ade-gone-{uuid.uuid4().hex[:8]}")  # no such job
    _put_logs(name, ["hello from the unfollowed job"])

    still = CliRunner().invoke(reconcile_command, ["--experiment", "walked-away"])
    assert still.exit_code == 0, still.output
    assert _lines(still.output) == [f"{run_id}  {name}  job InProgress  run RUNNING (unchanged)"]

    moto_jobs.finish(job, "Completed")
    ended = CliRunner().invoke(reconcile_command, ["--experiment", "walked-away"])
    assert ended.exit_code == 0, ended.output
    assert _lines(ended.output) == [f"{run_id}  {name}  job Completed  run RUNNING -> FINISHED"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sagemaker.status"] == "Completed"
    assert run.data.tags["sagemaker.billable_seconds"] == "1800"
    assert [a.path for a in client.list_artifacts(run_id, "logs")] == [f"logs/{name}_algo-1-1700000000.log"]
    assert "cost_usd" in run.data.metrics  # the bundled price for ml.g5.2xlarge when the Price List API fails

    again = CliRunner().invoke(reconcile_command, ["--experiment", "walked-away"])
    assert again.exit_code == 0 and _lines(again.output) == ["no unfinished run with a sagemaker.job_name tag"]
    assert len(client.get_metric_history(run_id, "cost_usd")) == 1  # nothing twice

    everywhere = CliRunner().invoke(reconcile_command, [])  # all experiments: the job-less run is an error line
    assert everywhere.exit_code == 1
    [line] = _lines(everywhere.output)
    assert line.startswith(f"{other}  ") and "error:" in line
    assert client.get_run(other).info.status == "RUNNING"


def test_reconcile_of_an_unknown_experiment_is_one_line(tracking):
    result = CliRunner().invoke(reconcile_command, ["--experiment", "no-such-experiment"])
    assert result.exit_code != 0 and "experiment 'no-such-experiment' not found" in str(result.exception)


def test_status_by_job_name_reconciles_the_run_it_carries(tracking, moto_jobs):
    client = mlflow.MlflowClient()
    name = f"ade-rec-{uuid.uuid4().hex[:8]}"
    run_id = _submitted_run(client, "walked-away", name)
    job = moto_job(name, 1, False, training_time_in_seconds=60, billable_time_in_seconds=60,
                   environment={"MLFLOW_RUN_ID": run_id})
    moto_jobs.finish(job, "Failed", "AlgorithmError: boom")
    result = CliRunner().invoke(status_command, [name])
    assert result.exit_code == 1
    assert "AlgorithmError: boom" in result.output and f"run:       {run_id} FAILED (was RUNNING)" in result.output
    assert client.get_run(run_id).data.tags["sagemaker.failure_reason"] == "AlgorithmError: boom"


def _local_root(tmp_path: Path, run_id: str, status: str, runner_pid: int) -> Path:
    root = tmp_path / "jobs" / "jobs" / "ade-local-job"
    root.mkdir(parents=True)
    (root / STATE_FILE).write_text(json.dumps({
        "TrainingJobName": root.name, "TrainingJobStatus": status, "SecondaryStatus": "Training",
        "SecondaryStatusTransitions": [], "CreationTime": "2026-12-01T00:00:00+00:00",
        "Environment": {"MLFLOW_RUN_ID": run_id}}))
    (root / "runner.pid").write_text(f"{runner_pid}\n")
    (root / "job.log").write_text("counter: step 1\n")
    return root


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_local_job_whose_runner_died_reads_failed_and_status_ends_its_run(tracking, tmp_path):
    client = mlflow.MlflowClient()
    run_id = _submitted_run(client, "local", "ade-local-job", **{"sagemaker.mode": "local"})
    root = _local_root(tmp_path, run_id, "InProgress", _dead_pid())
    description = JobRoot(root).describe()
    assert description["TrainingJobStatus"] == "Failed" and "ended before the job did" in description["FailureReason"]

    result = CliRunner().invoke(status_command, [run_id, "--job-root", str(tmp_path / "jobs")])
    assert result.exit_code == 1, result.output
    assert f"run:       {run_id} FAILED (was RUNNING)" in result.output
    assert [a.path for a in client.list_artifacts(run_id, "logs")] == ["logs/job.log"]


def test_a_local_job_with_a_live_runner_stays_in_progress(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        root = _local_root(tmp_path, "0" * 32, "InProgress", sleeper.pid)
        assert JobRoot(root).describe()["TrainingJobStatus"] == "InProgress"
    finally:
        os.kill(sleeper.pid, signal.SIGKILL)
        sleeper.wait()


def test_status_with_the_tracking_server_down_names_a_missing_local_job(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(status_command, ["a" * 32, "--job-root", str(tmp_path)])
    assert result.exit_code != 0
    assert "cannot be reached" in str(result.exception) and "give the SageMaker job name" in str(result.exception)
