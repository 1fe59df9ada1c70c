"""A local job stopped by its runner ends its run KILLED with the reason the runner gave: a stop on
request reads "stopped", MaxRuntimeInSeconds reads "max_runtime" (SecondaryStatus MaxRuntimeExceeded),
whatever the job was doing when the SIGTERM came."""
from __future__ import annotations

import time

import mlflow
import pytest

from ade_mlflow_plugin.backend import packaging, spec
from ade_mlflow_plugin.backend.local import LocalJob
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.job import contract
from tests.conftest import FIXTURES

COUNTER = FIXTURES / "projects" / "counter"


def _job(tmp_path, tracking_uri: str, max_runtime_s: int | None = None) -> tuple[LocalJob, str]:
    config = CloudTrainingConfig.from_backend_config({"mode": "local"})
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    code = packaging.build_project_tarball(COUNTER, tmp_path / "code").path.as_uri()
    inputs = spec.JobInputs(job_name="stop-job", entry_point="main", image_uri="local", code_uri=code,
                            output_uri=(tmp_path / "out").as_uri(), checkpoint_uri=(tmp_path / "ckpt").as_uri(),
                            run=spec.RunInfo(run_id, "0", tracking_uri),
                            params={"steps": "100000", "step_seconds": "0.1"})
    request = spec.build_training_job_request(config, inputs, "us-east-1")
    if max_runtime_s is not None:  # below the config's floor on purpose: the test must not wait an hour
        request["StoppingCondition"]["MaxRuntimeInSeconds"] = max_runtime_s
    return LocalJob(request, job_root=tmp_path / "job", stream=None), run_id


def _ended(run_id: str) -> tuple[str, str | None]:
    run = mlflow.MlflowClient().get_run(run_id)
    return run.info.status, run.data.tags.get(contract.STOP_REASON_TAG)


@pytest.mark.slow
def test_max_runtime_stops_a_local_job_and_says_so(sqlite_tracking, tmp_path):
    job, run_id = _job(tmp_path, sqlite_tracking, max_runtime_s=5)
    job.start()
    final = job.wait(timeout=300)
    assert (final["TrainingJobStatus"], final["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded"), \
        job.log_path.read_text()[-3000:]
    assert _ended(run_id) == ("KILLED", "max_runtime")
    assert "MaxRuntimeInSeconds=5 reached" in job.log_path.read_text()


@pytest.mark.slow
def test_a_stop_on_request_reads_stopped(sqlite_tracking, tmp_path):
    job, run_id = _job(tmp_path, sqlite_tracking)
    job.start()
    deadline = time.monotonic() + 180  # ends a hung test only
    while "counter: step 1" not in job.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    job.stop()
    final = job.wait(timeout=300)
    assert final["TrainingJobStatus"] == "Stopped", job.log_path.read_text()[-3000:]
    assert _ended(run_id) == ("KILLED", "stopped")
    detail = mlflow.MlflowClient().get_run(run_id).data.tags[contract.STOP_DETAIL_TAG]
    assert detail.startswith("stopped: StopTrainingJob")
