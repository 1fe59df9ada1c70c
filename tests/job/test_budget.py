"""The job keeps its own budget: cost_usd, 50/80 % alert tags and the stop at 100 %, with nobody following."""
from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest

from ade_mlflow_plugin.backend import cost, packaging, spec
from ade_mlflow_plugin.backend.local import LocalJob
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.job import budget, contract, launcher, run_state
from tests.conftest import FIXTURES

COUNTER = FIXTURES / "projects" / "counter"


class Clock:
    """Elapsed seconds the test sets by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Writer:
    def __init__(self) -> None:
        self.metrics: list[tuple[str, float, int]] = []
        self.tags: dict[str, str] = {}

    def metric(self, key: str, value: float, step: int) -> None:
        self.metrics.append((key, value, step))

    def tag(self, key: str, value: str) -> None:
        self.tags[key] = value


def _guard(on_budget: str = "stop", writer: Writer | None = None) -> tuple[budget.BudgetGuard, Clock, list]:
    clock, stops = Clock(), []
    # $1 at 2 x $1.8/h: the budget lasts 1000 s.
    guard = budget.BudgetGuard(contract.Cost(1.8, "test", 1.0, on_budget), 2, clock,
                                 lambda reason, detail: stops.append((reason, detail)), writer)
    return guard, clock, stops


def test_cost_is_logged_by_elapsed_second_alerts_fire_once_and_the_stop_comes_at_100_percent(capsys):
    writer = Writer()
    guard, clock, stops = _guard(writer=writer)
    for now in (0, 100, 100, 499, 500, 650, 800, 999, 1000, 1200):
        clock.now = now
        guard.tick()
    assert [(step, round(value, 4)) for _, value, step in writer.metrics] == [
        (0, 0.0), (100, 0.1), (499, 0.499), (500, 0.5), (650, 0.65), (800, 0.8), (999, 0.999), (1000, 1.0),
        (1200, 1.2)]  # one point per new second, step = elapsed seconds
    assert sorted(writer.tags) == ["ade.budget_alert_100", "ade.budget_alert_50", "ade.budget_alert_80"]
    assert writer.tags["ade.budget_alert_50"] == "estimated cost $0.50 is 50% of max_cost_usd $1.00 after 500 s"
    assert stops == [("budget", "budget: estimated cost $1.00 reached max_cost_usd $1.00 after 1000 s at $1.8/h "
                                "x 2 (on_budget=stop)")]
    out = capsys.readouterr().out
    assert "ade-metrics step=650 cost_usd=0.650000" in out  # the line SageMaker's cost_usd metric reads


def test_alert_mode_never_stops_and_off_the_lead_host_nothing_is_written():
    guard, clock, stops = _guard(on_budget="alert")
    clock.now = 5000
    guard.tick()
    assert stops == [] and guard.fired == {0.5, 0.8, 1.0}
    stopping, clock, stops = _guard(writer=None)  # another host: stops its entry, writes nothing
    clock.now = 1000
    stopping.tick()
    assert [reason for reason, _ in stops] == ["budget"]


def test_the_clock_file_drives_the_guard_and_reads_zero_until_written(tmp_path):
    clock_file = tmp_path / "elapsed"
    clock = budget.budget_clock({contract.ENV_BUDGET_CLOCK_FILE: str(clock_file)})
    assert clock() == 0.0
    clock_file.write_text("1234.5\n")
    assert clock() == 1234.5
    assert 0 <= budget.budget_clock({})() < 60  # the real one counts from its creation


def test_a_spot_restart_goes_on_from_the_seconds_billed_before(tmp_path, capsys):
    """Billed seconds are kept beside the checkpoints (restored on a restart): a job reclaimed at 800 s
    of a 1000 s budget stops 200 s into its next attempt, not 1000 s."""
    first = budget.BudgetGuard(contract.Cost(1.8, "test", 1.0), 2, Clock(), lambda *_: None,
                               billed=budget.BilledSeconds.load(tmp_path / "ckpt", "job-a"))
    first.clock.now = 800
    first.tick()
    saved = json.loads((tmp_path / "ckpt" / budget.BILLED_FILE).read_text())
    assert saved == {"job": "job-a", "seconds": 800.0}  # the job's name: another job does not inherit the bill
    assert budget.BilledSeconds.load(tmp_path / "ckpt", "job-b").earlier_s == 0.0
    stops: list = []
    writer = Writer()
    again = budget.BudgetGuard(contract.Cost(1.8, "test", 1.0), 2, Clock(), lambda *a: stops.append(a), writer,
                               budget.BilledSeconds.load(tmp_path / "ckpt", "job-a"))
    again.clock.now = 150
    again.tick()
    assert stops == [] and writer.metrics[-1][2] == 950  # cost_usd's step is the job's billed seconds
    again.clock.now = 200
    again.tick()
    assert [reason for reason, _ in stops] == ["budget"]
    assert budget.BilledSeconds.load(tmp_path / "nowhere").earlier_s == 0.0


def _wait_for(what: str, check, timeout_s: float = 180):
    """Waits for an event (never for an amount of time); the deadline only ends a hung test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_local_job_nobody_follows_is_stopped_by_its_own_launcher_at_the_budget(sqlite_tracking, tmp_path):
    clock_file = tmp_path / "elapsed_s"
    config = CloudTrainingConfig.from_backend_config({
        "mode": "local", "instance_type": "ml.g5.xlarge", "max_cost_usd": 1.0,
        "environment": {contract.ENV_BUDGET_CLOCK_FILE: str(clock_file), contract.ENV_BUDGET_INTERVAL_S: "0.2"}})
    plan = cost.plan_cost(config, None)  # what the backend does before submitting: $1.408/h, bundled
    budget_s = plan.cost.affordable_s(1)  # 2556 s of billing
    root = tmp_path / "job"
    run_id = mlflow.MlflowClient().create_run("0", tags={  # the tags the backend gives a local job's run
        "sagemaker.job_name": "budget-job", "sagemaker.mode": "local",
        "ade.local_log": str(root / "job.log")}).info.run_id
    code = packaging.build_project_tarball(COUNTER, tmp_path / "code").path.as_uri()
    inputs = spec.JobInputs(job_name="budget-job", entry_point="main", image_uri="local", code_uri=code,
                            output_uri=(tmp_path / "out").as_uri(), checkpoint_uri=(tmp_path / "ckpt").as_uri(),
                            run=spec.RunInfo(run_id, "0", sqlite_tracking),
                            params={"steps": "1000", "step_seconds": "0.2"}, cost=plan.cost)
    job = LocalJob(spec.build_training_job_request(config, inputs, "us-east-1"), job_root=root, stream=None)
    job.start()  # the local runner plays SageMaker; no follower, no observer polls this job
    log = root / "job.log"
    _wait_for("the counter's step 2", lambda: "counter: step 2" in log.read_text())

    client = mlflow.MlflowClient()
    for share, tag in ((0.6, "ade.budget_alert_50"), (0.9, "ade.budget_alert_80")):
        clock_file.write_text(str(int(share * budget_s)))
        _wait_for(tag, lambda: client.get_run(run_id).data.tags.get(tag))
    assert client.get_run(run_id).info.status == "RUNNING"
    clock_file.write_text(str(int(1.1 * budget_s)))
    final = job.wait(timeout=180)

    run = client.get_run(run_id)
    assert run.info.status == "KILLED", final
    assert run.data.tags["ade.stop_reason"] == "budget"
    assert run.data.tags["ade.stop_detail"].startswith("budget: estimated cost $1.10 reached max_cost_usd $1.00")
    text = log.read_text()
    stopped_at = int(text.split("SIGTERM, checkpoint at step ")[1].split()[0])
    assert json.loads((tmp_path / "ckpt" / "counter.json").read_text()) == {"step": stopped_at, "final": True}
    assert (root / "output" / "failure").read_text().startswith("budget: estimated cost $1.10")
    steps = [m.step for m in client.get_metric_history(run_id, "cost_usd")]
    assert {int(0.6 * budget_s), int(0.9 * budget_s), int(1.1 * budget_s)} <= set(steps)
    last = int(1.1 * budget_s)
    assert f"ade-metrics step={last} cost_usd={plan.cost.usd(last, 1):.6f}" in text  # SageMaker's cost_usd line
    _the_stop_outlives_every_reader(final, job, run_id)


def _the_stop_outlives_every_reader(final: dict, job: LocalJob, run_id: str) -> None:
    """The job reads Stopped (not Failed, though the launcher exited 143), and neither the follower nor
    `status` nor `reconcile` turns the run FAILED afterwards."""
    import io

    from click.testing import CliRunner

    from ade_mlflow_plugin.backend.commands import reconcile_command, status_command
    from ade_mlflow_plugin.backend.submitted_run import JobFollower

    assert final["TrainingJobStatus"] == "Stopped" and "FailureReason" not in final
    assert final["SecondaryStatusTransitions"][-1]["StatusMessage"].startswith("Training job stopped: budget: ")
    client = mlflow.MlflowClient()

    def still_killed_for_budget() -> None:
        run = client.get_run(run_id)
        assert (run.info.status, run.data.tags["ade.stop_reason"]) == ("KILLED", "budget")

    console = io.StringIO()
    JobFollower(job, run_id, client, console=console, sleep=lambda s: None).follow()
    still_killed_for_budget()
    assert "budget-job stopped (ade.stop_reason=budget): budget: estimated cost $1.10" in console.getvalue()
    shown = CliRunner().invoke(status_command, [run_id])
    assert shown.exit_code == 0 and f"run:       {run_id} KILLED\n" in shown.output, shown.output
    still_killed_for_budget()
    reconciled = CliRunner().invoke(reconcile_command, [])
    assert reconciled.exit_code == 0, reconciled.output
    still_killed_for_budget()


def test_with_the_tracking_server_out_of_reach_cost_tags_and_the_end_go_to_the_relay(tmp_path, capsys):
    from ade_mlflow_plugin.job import relay
    from tests.conftest import free_port

    env = {contract.ENV_RUN_ID: "abc", contract.ENV_TRACKING_URI: f"http://127.0.0.1:{free_port()}",
           contract.ENV_OUTPUT_DATA_DIR: str(tmp_path / "data")}
    writer = budget.RunWriter(env)
    writer.metric("cost_usd", 0.25, 600)
    writer.tag("ade.budget_alert_50", "estimated cost $0.50 ...")
    writer.close()
    run_state.end_run(env, "KILLED", {"hosts": ["algo-1"]}, {"ade.stop_reason": "budget"})
    records = list(relay.read_records(tmp_path / "data" / relay.RELAY_DIR))
    assert [r["kind"] for r in records] == ["metrics", "tags", "tags", "end"]
    assert {k: records[0]["metrics"][0][k] for k in ("key", "value", "step")} == {
        "key": "cost_usd", "value": 0.25, "step": 600}
    assert records[2]["tags"] == {"ade.stop_reason": "budget"} and records[3]["status"] == "KILLED"
    assert "cost and budget records go to the relay" in capsys.readouterr().err


def test_an_entry_that_ignores_the_budget_stop_is_killed_after_the_grace_period(tmp_path):
    import os

    from ade_mlflow_plugin.job.procs import group_members

    stubborn = "trap '' TERM; echo ready; while :; do sleep 0.1; done"
    entry = launcher.EntryProcess(stubborn, tmp_path, dict(os.environ))
    _wait_for("the entry to ignore SIGTERM", lambda: "ready" in entry.tail)
    entry.stop("budget", "budget: test", grace_s=0.5)
    assert entry.wait() == -9 and group_members(entry.proc.pid) == []
    assert (entry.terminated, entry.stop_reason) == (True, "budget")
