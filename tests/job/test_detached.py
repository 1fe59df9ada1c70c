"""Local mode with "wait": false: the job runs detached, survives its submitter, and `status` finds it later."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from ade_mlflow_plugin.backend.local import RUNNER_PID_FILE, JobRoot
from tests.conftest import FIXTURES, free_port

# A whole job, a subprocess `mlflow run` or a training entry: not in `make test-fast`.
pytestmark = pytest.mark.slow

COUNTER = FIXTURES / "projects" / "counter"


def _cli(*args: str, tracking: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ade_mlflow_plugin.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "MLFLOW_TRACKING_URI": tracking}, timeout=120)


def _wait_for(predicate, what: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _job_root(jobs: Path) -> Path | None:
    found = sorted((jobs / "jobs").glob("*/job.log")) if (jobs / "jobs").is_dir() else []
    return found[0].parent if found else None


@pytest.fixture(scope="module")
def detached_job(tmp_path_factory):
    """One counter job submitted with wait:false; the submitting process group is killed mid-job."""
    tmp = tmp_path_factory.mktemp("detached")
    tracking = f"sqlite:///{tmp}/mlflow.db"
    config = {"mode": "local", "wait": False, "job_root": str(tmp / "jobs")}
    cmd = [sys.executable, "-m", "mlflow", "run", str(COUNTER), "-b", "ade-sagemaker", "--backend-config",
           json.dumps(config), "-P", "steps=60", "-P", "step_seconds=0.1"]
    submitter = subprocess.Popen(cmd, cwd=tmp, env={**os.environ, "MLFLOW_TRACKING_URI": tracking},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    root = _wait_for(lambda: _job_root(tmp / "jobs"), "the job root")
    _wait_for(lambda: "counter: step 1" in (root / "job.log").read_text(), "the job's first step")
    try:
        os.killpg(submitter.pid, signal.SIGKILL)  # the laptop closes: the submitter and its group go
    except ProcessLookupError:
        pass  # `mlflow run` with wait:false may have exited already; its group is gone either way
    submitter.communicate(timeout=60)
    job = JobRoot(root)
    try:
        ended = _wait_for(lambda: job.describe()["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"),
                          "the detached job's end")
        yield tmp, tracking, root, ended
    finally:
        pid = job.runner_pid()
        if pid and job.describe()["TrainingJobStatus"] == "InProgress":
            os.kill(pid, signal.SIGKILL)  # the runner this test made, should it still be there


def test_detached_job_survives_the_submitter_and_status_shows_finished(detached_job):
    tmp, tracking, root, _ = detached_job
    job = JobRoot(root).describe()
    assert job["TrainingJobStatus"] == "Completed", (root / "job.log").read_text()
    assert "counter: step 60" in (root / "job.log").read_text()
    assert (root / RUNNER_PID_FILE).is_file() and (root / "runner.log").is_file()
    mlflow.set_tracking_uri(tracking)
    try:
        run_id = mlflow.search_runs(search_all_experiments=True, output_format="list")[0].info.run_id
    finally:
        mlflow.set_tracking_uri(None)

    status = _cli("status", run_id, tracking=tracking, cwd=tmp)
    assert status.returncode == 0, status.stderr
    assert "Completed" in status.stdout and f"run:       {run_id} FINISHED" in status.stdout
    run = mlflow.MlflowClient(tracking_uri=tracking).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sagemaker.status"] == "Completed"
    assert [a.path for a in mlflow.MlflowClient(tracking_uri=tracking).list_artifacts(run_id, "logs")] == \
        ["logs/job.log"]


def test_status_with_the_tracking_server_down_shows_the_job(detached_job):
    tmp, tracking, root, _ = detached_job
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run_id = json.loads((root / "job.json").read_text())["Environment"]["MLFLOW_RUN_ID"]
    for ref in (run_id, root.name):
        status = _cli("status", ref, "--job-root", str(tmp / "jobs"), tracking=down, cwd=tmp)
        assert status.returncode == 0, status.stderr
        warnings = [line for line in status.stderr.splitlines() if line.strip()]
        assert len(warnings) == 1 and warnings[0].startswith("WARNING: tracking server") and down in warnings[0]
        assert f"job:       {root.name}" in status.stdout and "status:    Completed" in status.stdout
