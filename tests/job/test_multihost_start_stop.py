"""A local multi-host job at the edges of its life: a host that cannot start leaves no other host running, and a
stop that lands after every host's entry completed (the lead's model still uploading) leaves the job Completed."""
from __future__ import annotations

import time

import mlflow
import pytest

from ade_mlflow_plugin.backend.local import RUNNER_PID_FILE, LocalJob
from tests.job.test_multihost import _request

pytestmark = pytest.mark.slow  # whole jobs: two launchers and two torchruns


def _wait_for(what: str, check, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s  # a bound against a hang, not a timing assertion
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_stop_after_every_host_completed_leaves_the_job_completed(sqlite_tracking, tmp_path, monkeypatch):
    request, run_id = _request(tmp_path, sqlite_tracking)
    job = LocalJob(request, job_root=tmp_path / "root", stream=None)
    upload = LocalJob._upload_model

    def stopped_while_uploading(self):  # noqa: ANN001, ANN202 - the lead host's upload (only it uploads)
        _wait_for("every host's entry to end", lambda: all(host.exited for host in job.hosts))
        job.stop()  # the user's stop as the job's model is packed and sent: every host has completed
        return upload(self)

    monkeypatch.setattr(LocalJob, "_upload_model", stopped_while_uploading)
    job.start()
    final = job.wait(timeout=300)
    assert final["TrainingJobStatus"] == "Completed", (tmp_path / "root" / "job.log").read_text()[-3000:]
    assert [h.describe()["TrainingJobStatus"] for h in job.hosts] == ["Completed", "Completed"]
    assert final["ModelArtifacts"]["S3ModelArtifacts"].endswith("multihost-job/output/model.tar.gz")
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_a_host_that_cannot_start_leaves_no_host_running(sqlite_tracking, tmp_path):
    request, run_id = _request(tmp_path, sqlite_tracking, params={"wait_for_stop": "true"})
    job = LocalJob(request, job_root=tmp_path / "root", stream=None)
    job.prepare()
    (job.hosts[1].root / RUNNER_PID_FILE).mkdir()  # algo-2's launch cannot write its runner.pid
    with pytest.raises(IsADirectoryError):
        job.launch()
    lead = job.hosts[0]
    assert lead.launched and lead.exited  # stopped and waited for: nothing of the job runs on
    final = job.describe()
    assert final["TrainingJobStatus"] == "Failed", final
    assert final["FailureReason"].startswith("ClientError: algo-2: its launcher could not start")
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FAILED"  # the lead ended it: a peer failed
