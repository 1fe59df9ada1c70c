"""A stop of the job's own (budget, SIGTERM, spot reclaim) ends the run KILLED with its ade.stop_reason, and
no later reader of the job (follower, status, reconcile, sync-run's replay) turns it FAILED.

The launcher exits 143 after such a stop, which SageMaker reports as Failed: these job roots say Failed
with the budget's failure text, as a SageMaker job's description would (a real budget-stopped local job
is in tests/job/test_budget.py)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from ade_mlflow_plugin.backend.commands import reconcile_command, status_command
from ade_mlflow_plugin.backend.local import STATE_FILE, JobRoot, LocalJob
from ade_mlflow_plugin.backend.replay import local_relay_dir, replay
from ade_mlflow_plugin.backend.submitted_run import JobFollower, run_end_status
from ade_mlflow_plugin.job import relay as job_relay
from ade_mlflow_plugin.job.contract import ContainerPaths

JOB = "ade-budget-stopped"
DETAIL = "budget: estimated cost $1.10 reached max_cost_usd $1.00 after 2811 s at $1.408/h x 1 (on_budget=stop)"
REASON = {"ade.stop_reason": "budget", "ade.stop_detail": DETAIL}


def _job_root(tmp_path: Path, run_id: str) -> Path:
    """An ended job root as a budget stop leaves it when SageMaker's word (Failed) is the job status."""
    root = tmp_path / "jobs" / "jobs" / JOB
    root.mkdir(parents=True)
    (root / STATE_FILE).write_text(json.dumps({
        "TrainingJobName": JOB, "TrainingJobStatus": "Failed", "SecondaryStatus": "Failed",
        "FailureReason": f"AlgorithmError: {DETAIL}", "SecondaryStatusTransitions": [],
        "CreationTime": "2026-12-01T00:00:00+00:00", "Environment": {"MLFLOW_RUN_ID": run_id}}))
    (root / "job.log").write_text(f"launcher: {DETAIL}; stopping the entry (SIGTERM, checkpoint, exit)\n")
    return root


def _relay_the_stop(root: Path) -> Path:
    """What the launcher writes when the tracking server is out of its reach at the stop (_relay_end)."""
    relay = job_relay.Relay(ContainerPaths(root).output_data_dir)
    relay.append(job_relay.TAGS, tags=REASON)
    relay.append(job_relay.END, status="KILLED")
    return local_relay_dir(root)


def _run(tmp_path: Path) -> str:
    return mlflow.MlflowClient().create_run("0", tags={
        "sagemaker.job_name": JOB, "sagemaker.mode": "local",
        "ade.local_log": str(tmp_path / "jobs" / "jobs" / JOB / "job.log")}).info.run_id


def _killed_by_the_launcher(run_id: str) -> None:
    client = mlflow.MlflowClient()
    for key, value in REASON.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, "KILLED")


def _assert_killed_for_budget(run_id: str) -> None:
    run = mlflow.MlflowClient().get_run(run_id)
    assert (run.info.status, run.data.tags.get("ade.stop_reason")) == ("KILLED", "budget")


def test_the_rule_keeps_only_a_kill_with_a_stop_reason():
    assert run_end_status("Failed", "KILLED", {"ade.stop_reason": "budget"}) == "KILLED"
    assert run_end_status("Completed", "KILLED", {"ade.stop_reason": "stopped"}) == "KILLED"
    assert run_end_status("Failed", "KILLED", {}) == "FAILED"  # a kill with no reason: the job's word
    assert run_end_status("Failed", "FAILED", {"ade.stop_reason": "spot_interrupted"}) == "FAILED"
    assert run_end_status("Stopped") == "KILLED" and run_end_status("Completed", "RUNNING", {}) == "FINISHED"


def test_the_follower_keeps_the_kill_the_launcher_wrote(sqlite_tracking, tmp_path):
    run_id = _run(tmp_path)
    root = _job_root(tmp_path, run_id)
    _killed_by_the_launcher(run_id)
    console = io.StringIO()
    JobFollower(JobRoot(root), run_id, mlflow.MlflowClient(), console=console, sleep=lambda s: None).follow()
    _assert_killed_for_budget(run_id)
    assert f"{JOB} stopped (ade.stop_reason=budget): {DETAIL}" in console.getvalue()
    assert "failed:" not in console.getvalue()


def test_the_follower_ends_the_run_as_the_relay_recorded_the_stop(sqlite_tracking, tmp_path):
    run_id = _run(tmp_path)
    _relay_the_stop(_job_root(tmp_path, run_id))
    follower = JobFollower(JobRoot(tmp_path / "jobs" / "jobs" / JOB), run_id, mlflow.MlflowClient(),
                           console=io.StringIO(), sleep=lambda s: None)
    follower.follow()
    _assert_killed_for_budget(run_id)
    assert follower.ended_as == "KILLED"


def test_reconcile_and_status_end_the_run_as_the_relay_recorded_the_stop(sqlite_tracking, tmp_path):
    run_id = _run(tmp_path)
    _relay_the_stop(_job_root(tmp_path, run_id))
    result = CliRunner().invoke(reconcile_command, ["--job-root", str(tmp_path / "jobs")])
    assert result.exit_code == 0, result.output
    assert f"{run_id}  {JOB}  job Failed  run RUNNING -> KILLED" in result.output
    _assert_killed_for_budget(run_id)
    shown = CliRunner().invoke(status_command, [run_id, "--job-root", str(tmp_path / "jobs")])
    assert f"run:       {run_id} KILLED\n" in shown.output, shown.output
    _assert_killed_for_budget(run_id)


def test_status_keeps_the_kill_the_launcher_wrote(sqlite_tracking, tmp_path):
    run_id = _run(tmp_path)
    _job_root(tmp_path, run_id)
    _killed_by_the_launcher(run_id)
    shown = CliRunner().invoke(status_command, [run_id, "--job-root", str(tmp_path / "jobs")])
    assert f"run:       {run_id} KILLED\n" in shown.output, shown.output
    assert shown.exit_code == 0, "a stop the launcher asked for is not a failed command"
    _assert_killed_for_budget(run_id)


@pytest.mark.parametrize("already_killed", [False, True])
def test_a_replay_with_the_job_status_failed_keeps_the_stop(sqlite_tracking, tmp_path, already_killed):
    """sync-run of a SageMaker job (and reconcile, the follower) pass SageMaker's status: Failed."""
    run_id = _run(tmp_path)
    relay = _relay_the_stop(_job_root(tmp_path, run_id))
    if already_killed:
        _killed_by_the_launcher(run_id)
    client = mlflow.MlflowClient()
    first = replay(client, run_id, relay, "FAILED")
    assert first.status == (None if already_killed else "KILLED")
    _assert_killed_for_budget(run_id)
    assert not replay(client, run_id, relay, "FAILED").changed
    _assert_killed_for_budget(run_id)


@pytest.mark.parametrize("code,failure,stopped", [
    (143, None, True),  # SIGTERM straight to the launcher: it writes no failure for a stop it was sent
    (143, DETAIL, True),  # its own budget stop
    (143, "Traceback (most recent call last):\nentry exited with code 143", False),  # the entry's own 143
    (1, DETAIL, False),
    (0, None, False),
])
def test_a_local_job_reads_stopped_when_its_launcher_stopped_on_purpose(tmp_path, code, failure, stopped):
    job = LocalJob({"TrainingJobName": JOB}, job_root=tmp_path / JOB, stream=None)
    job.paths.failure_file.parent.mkdir(parents=True)
    if failure is not None:
        job.paths.failure_file.write_text(failure + "\n")
    assert job._stopped_itself(code) is stopped
