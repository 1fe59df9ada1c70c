"""`ade-mlflow status` / `logs` attach to a submitted job by run id or job name (moto + sqlite)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import boto3
import mlflow
import pytest

from tests.backend.test_mlflow_run_sagemaker import _put_logs, _start

# A whole job, a subprocess `mlflow run` or a training entry: not in `make test-fast`.
pytestmark = pytest.mark.slow


def _cli(*args, tracking):
    return subprocess.run([sys.executable, "-m", "ade_mlflow_plugin.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_TRACKING_URI": tracking}, timeout=120)


def test_status_and_logs_by_run_id_and_job_name(project, data_dir, tmp_path, moto_jobs):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    proc = _start(project, data_dir, tmp_path, tracking, wait=False)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "ade-mlflow logs" in err  # tells the user how to attach later
    job = moto_jobs.wait_for_job()
    _put_logs(job.training_job_name, ["hello from the job"])
    mlflow.set_tracking_uri(tracking)
    run_id = mlflow.search_runs(search_all_experiments=True, output_format="list")[0].info.run_id
    mlflow.set_tracking_uri(None)

    status = _cli("status", run_id, tracking=tracking)
    assert status.returncode == 0, status.stderr
    assert job.training_job_name in status.stdout and "InProgress" in status.stdout

    moto_jobs.finish(job, "Failed", "AlgorithmError: boom")
    by_name = _cli("status", job.training_job_name, "--region", "us-east-1", tracking=tracking)
    assert by_name.returncode == 1 and "AlgorithmError: boom" in by_name.stdout

    logs = _cli("logs", run_id, "--follow", "--poll-interval", "0.2", tracking=tracking)
    assert logs.returncode == 0, logs.stderr
    assert "[algo-1-1700000000] hello from the job" in logs.stdout

    missing = _cli("status", "0" * 32, tracking=tracking)
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr
