"""Local mode through the real `mlflow run` CLI: the same request runs here, ends the run, resumes."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tests.conftest import FIXTURES

# A whole job, a subprocess `mlflow run` or a training entry: not in `make test-fast`.
pytestmark = pytest.mark.slow

COUNTER = FIXTURES / "projects" / "counter"


def _mlflow_run(project: Path, config: dict, params: list[str], cwd: Path, tracking: str, entry: str = "main"):
    cmd = [sys.executable, "-m", "mlflow", "run", str(project), "-e", entry, "-b", "ade-sagemaker",
           "--backend-config", json.dumps(config), *params]
    with _ctrl_c_as_in_a_terminal():
        return subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "MLFLOW_TRACKING_URI": tracking},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@contextlib.contextmanager
def _ctrl_c_as_in_a_terminal() -> Iterator[None]:
    """The child starts with SIGINT's default action, as a command typed in a terminal does.

    A test run started in the background (`make test &`, nohup) ignores SIGINT, and an ignored signal stays
    ignored across exec: `mlflow run` would never see the Ctrl-C a test sends it (the job then ran to its
    end). A handled signal is reset to its default at exec, so a handler here for the moment of the fork
    gives the child the terminal's disposition.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _runs(tracking: str):
    mlflow.set_tracking_uri(tracking)
    try:
        return mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["start_time ASC"])
    finally:
        mlflow.set_tracking_uri(None)


def test_local_job_logs_checkpoints_and_outputs(tmp_path):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    config = {"mode": "local", "job_root": str(tmp_path / "jobs"), "checkpoint_s3_uri": str(tmp_path / "ckpt")}
    proc = _mlflow_run(FIXTURES / "backend_project", config,
                       ["-P", f"data={FIXTURES / 'backend_project_data'}", "-P", "epochs=3"], tmp_path, tracking)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "trained on 3 lines" in out
    run = _runs(tracking)[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["data_lines"] == "3" and run.data.metrics["loss"] == pytest.approx(0.1 / 3)
    assert (tmp_path / "ckpt" / "last.txt").read_text() == "epoch=3\n"
    job = run.data.tags["sagemaker.job_name"]
    model = tmp_path / "jobs" / "output" / job / "output" / "model.tar.gz"
    assert tarfile.open(model).extractfile("weights.txt").read().startswith(b"lr=0.1")
    assert run.data.tags["sagemaker.model_artifacts"] == model.as_uri()


def test_sigterm_checkpoints_kills_the_run_and_a_restart_resumes(tmp_path):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    config = {"mode": "local", "job_root": str(tmp_path / "jobs"), "checkpoint_s3_uri": str(tmp_path / "ckpt")}
    # 400 steps of 0.25 s leave 100 s for the stop to arrive even on a loaded machine.
    proc = _mlflow_run(COUNTER, config, ["-P", "steps=400", "-P", "step_seconds=0.25"], tmp_path, tracking)
    log = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the entry has counted a few steps
        logs = list((tmp_path / "jobs" / "jobs").glob("*/job.log"))
        if logs and "counter: step 3" in logs[0].read_text():
            log = logs[0]
            break
        time.sleep(0.2)
    assert log is not None, "the counter never reached step 3"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C on `mlflow run`: the backend stops the job
    proc.communicate(timeout=120)
    text = log.read_text()
    stopped_at = int(text.split("SIGTERM, checkpoint at step ")[1].split()[0])
    first = _runs(tracking)[0]
    assert first.info.status == "KILLED"
    assert json.loads((tmp_path / "ckpt" / "counter.json").read_text())["step"] == stopped_at

    again = _mlflow_run(COUNTER, config, ["-P", "steps=400", "-P", "step_seconds=0"], tmp_path, tracking)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"counter: starting at step {stopped_at}" in out
    second = _runs(tracking)[1]
    assert second.info.status == "FINISHED"
    assert f"resumed_from_{stopped_at}" in second.data.params
    history = mlflow.MlflowClient(tracking).get_metric_history(second.info.run_id, "count")
    assert [m.step for m in history] == list(range(stopped_at + 1, 401))


def test_python_api_synchronous_run_waits_through_wait(sqlite_tracking, tmp_path):
    import mlflow.projects

    submitted = mlflow.projects.run(str(COUNTER), entry_point="main", parameters={"steps": "3"},
                                    backend="ade-sagemaker", synchronous=True,
                                    backend_config={"mode": "local", "job_root": str(tmp_path / "jobs")})
    assert submitted.get_status() == "FINISHED"
    run = mlflow.get_run(submitted.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["count"] == 3
    assert run.data.tags["mlflow.project.backend"] == "ade-sagemaker"
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(submitted.run_id, "logs")] == ["logs/job.log"]


def test_a_failing_entry_fails_mlflow_run_and_the_run_says_why(tmp_path):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    config = {"mode": "local", "job_root": str(tmp_path / "jobs")}
    proc = _mlflow_run(COUNTER, config, ["-P", "fail_at=2"], tmp_path, tracking, entry="fails")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-2000:]
    assert "ended Failed" in err or "ended FAILED" in err, err[-2000:]
    assert "Traceback" not in err
    run = _runs(tracking)[0]
    assert run.info.status == "FAILED"
    assert "counter: failing at step 2 as asked" in run.data.tags["sagemaker.failure_reason"]
    assert run.data.metrics["count"] == 2  # what the entry logged before it failed stays on the run
    failure = next((tmp_path / "jobs" / "jobs").glob("*/output/failure")).read_text()
    assert "Traceback" in failure and "RuntimeError: counter: failing at step 2" in failure
    # The cause leads the file (SageMaker shows its first 1024 characters as FailureReason), and the
    # local job reports the same start of the file.
    assert failure.startswith("RuntimeError: counter: failing at step 2 as asked\n\n")
    reason = run.data.tags["sagemaker.failure_reason"]
    assert reason.startswith("AlgorithmError: RuntimeError: counter: failing at step 2 as asked")
    assert reason == "AlgorithmError: " + failure.strip()[:1024].rstrip()


def test_ctrl_c_before_the_follower_starts_stops_the_job(tmp_path, monkeypatch):
    """Ctrl-C that lands while the backend still tags the run (the job already running, nobody following it
    yet): the job is stopped and the run KILLED, never left running on its own (seen on a loaded machine);
    then the interrupt goes on (nothing was submitted)."""
    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend

    tag_run, calls = AdeSageMakerBackend._tag_run, []

    def interrupted_once(self, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append(1)
        tag_run(self, *args, **kwargs)
        if len(calls) == 1:  # as in the flake: the user saw the entry counting, then pressed Ctrl-C
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(
                    "counter: step 1" in log.read_text() for log in (tmp_path / "jobs" / "jobs").glob("*/job.log")):
                time.sleep(0.2)
            raise KeyboardInterrupt

    monkeypatch.setattr(AdeSageMakerBackend, "_tag_run", interrupted_once)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    config = {"mode": "local", "job_root": str(tmp_path / "jobs"), "checkpoint_s3_uri": str(tmp_path / "ckpt")}
    with pytest.raises(KeyboardInterrupt):
        mlflow.projects.run(str(COUNTER), entry_point="main", backend="ade-sagemaker", backend_config=config,
                            parameters={"steps": "400", "step_seconds": "0.25"}, env_manager="local")
    run = _runs(tracking)[0]
    assert run.info.status == "KILLED" and run.data.tags["ade.stop_reason"] == "stopped"
    assert run.data.tags["sagemaker.job_name"]  # tagged all the same: status and reconcile find the job
    log = next((tmp_path / "jobs" / "jobs").glob("*/job.log")).read_text()
    assert "counter: SIGTERM, checkpoint at step" in log and "counter: step 400" not in log


def _kept_jobs(monkeypatch) -> list:
    """Every job the backend starts, kept for the test (the backend hands none back when interrupted)."""
    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend

    start, jobs = AdeSageMakerBackend._start, []

    def kept(self, *args, **kwargs):  # noqa: ANN001, ANN202
        jobs.append(start(self, *args, **kwargs))
        return jobs[-1]

    monkeypatch.setattr(AdeSageMakerBackend, "_start", kept)
    return jobs


def test_ctrl_c_as_the_job_starts_stops_the_job(tmp_path, monkeypatch):
    """Ctrl-C that lands once the job exists but before the backend's submission returns (SageMaker:
    CreateTrainingJob's answer on its way back; local: the launcher just started, in a session of its own that
    the terminal's SIGINT never reaches): the job is stopped, its run tagged and KILLED, and the interrupt goes
    on. Before, the run was FAILED (submit_error) while the job trained on, unfollowed."""
    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend

    start, started = AdeSageMakerBackend._start, []

    def interrupted(self, *args, **kwargs):  # noqa: ANN001, ANN202
        started.append(start(self, *args, **kwargs))  # the job exists ...
        raise KeyboardInterrupt  # ... and the user's Ctrl-C lands before the submission returns

    monkeypatch.setattr(AdeSageMakerBackend, "_start", interrupted)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    config = {"mode": "local", "job_root": str(tmp_path / "jobs"), "checkpoint_s3_uri": str(tmp_path / "ckpt")}
    try:
        with pytest.raises(KeyboardInterrupt):
            mlflow.projects.run(str(COUNTER), entry_point="main", backend="ade-sagemaker", backend_config=config,
                                parameters={"steps": "400", "step_seconds": "0.25"}, env_manager="local")
        [job] = started
        assert job.describe()["TrainingJobStatus"] == "Stopped"
        run = _runs(tracking)[0]
        assert run.info.status == "KILLED" and run.data.tags["ade.stop_reason"] == "stopped"
        assert run.data.tags["sagemaker.job_name"] == job.name and "ade.submit_error" not in run.data.tags
        assert "counter: step 400" not in job.log_path.read_text()
    finally:
        for job in started:  # never leave the counter running after the test
            job.stop()
            job.wait(timeout=120)


def test_a_stop_while_the_model_uploads_does_not_turn_a_completed_job_stopped(tmp_path, monkeypatch):
    """A stop (Ctrl-C in the follower, `ade-mlflow stop`, MaxRuntime) that lands after the entry exited 0, while
    the model is packed and uploaded (long for a merged model): the job completed and its run, which the
    launcher ended FINISHED with the model registered, stays FINISHED. Before, the job read Stopped and the
    follower turned the run KILLED (CLI) or FAILED (in-process)."""
    from ade_mlflow_plugin.backend.local import LocalJob

    upload = LocalJob._upload_model

    def stopped_while_uploading(self):  # noqa: ANN001, ANN202
        self.stop()  # the user's stop as the finished job's model is packed and sent
        return upload(self)

    monkeypatch.setattr(LocalJob, "_upload_model", stopped_while_uploading)
    jobs = _kept_jobs(monkeypatch)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    config = {"mode": "local", "job_root": str(tmp_path / "jobs"), "checkpoint_s3_uri": str(tmp_path / "ckpt")}
    try:
        submitted = mlflow.projects.run(str(COUNTER), entry_point="main", backend="ade-sagemaker",
                                        backend_config=config, parameters={"steps": "2"}, env_manager="local")
        [job] = jobs
        log = job.log_path.read_text()
        assert "counter: step 2" in log and "SIGTERM" not in log  # the entry ran to its end, exit 0
        assert job.describe()["TrainingJobStatus"] == "Completed" and submitted.get_status() == "FINISHED"
        assert _runs(tracking)[0].info.status == "FINISHED"
        assert job.describe()["ModelArtifacts"]["S3ModelArtifacts"]  # the model was uploaded all the same
    finally:
        for job in jobs:
            job.stop()
            job.wait(timeout=120)
