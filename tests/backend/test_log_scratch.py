"""The local copy of a job's CloudWatch log (an `ade-logs-*` temp dir) exists only while the job is followed,
and never outlives the command."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.backend.test_mlflow_run_sagemaker import _start
from tests.conftest import REPO_ROOT

# A whole job, a subprocess `mlflow run` or a training entry: not in `make test-fast`.
pytestmark = pytest.mark.slow


def test_wait_false_submission_makes_no_log_dir(project, data_dir, tmp_path, moto_jobs):
    proc = _start(project, data_dir, tmp_path, f"sqlite:///{tmp_path}/mlflow.db", wait=False)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "ade-mlflow logs" in err  # submitted and left running, not followed
    assert moto_jobs.wait_for_job().training_job_status == "InProgress"
    assert not list((tmp_path / "tmp").glob("ade-logs-*")), "a job nobody follows got a local log dir"


# A Python API caller who starts following a submitted job and then leaves (Ctrl-C, a crash, an
# MLflow outage before the logs are uploaded): the dir made for the log copy must still go.
ABANDON = textwrap.dedent("""
    import glob, os, sys, tempfile
    sys.path.insert(0, sys.argv[1])
    import mlflow
    mlflow.set_tracking_uri(sys.argv[2])
    from tests.conftest import submit_to_moto
    submitted, _ = submit_to_moto("ade-log-scratch", sys.argv[2])
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "ade-logs-*")), "made before following"
    submitted.follower.poll()
    print("DIRS", len(glob.glob(os.path.join(tempfile.gettempdir(), "ade-logs-*"))))
""")


def test_followed_then_abandoned_log_dir_is_removed_at_exit(aws, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    result = subprocess.run([sys.executable, "-c", ABANDON, str(REPO_ROOT), f"sqlite:///{tmp_path}/mlflow.db"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "DIRS 1" in result.stdout, result.stdout  # following made exactly one
    assert not list(scratch.glob("ade-logs-*")), "the log copy outlived the process"

