"""Stops of a multi-host local job (issue 21 item 3): a stop on ANY host (its launcher or one training process
gets SIGTERM, its own budget runs out) ends every host cleanly, the run KILLED with the stop's reason, never
FAILED, and no process of any host is left. The toy entry (multihost_stop_project/stops.py) holds a collective
in every step, as training does."""
from __future__ import annotations

import re
import signal
import os
import time
from pathlib import Path

import mlflow
import pytest

from ade_mlflow_plugin.backend import packaging, spec
from ade_mlflow_plugin.backend.local import JobRoot, LocalJob
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.job import contract, procs

PROJECT = Path(__file__).parent / "multihost_stop_project"
pytestmark = pytest.mark.slow  # whole jobs: two launchers and two torchruns each


def _request(tmp_path: Path, tracking: str, on_stop: str, backend: dict | None = None,
             cost: object = None) -> tuple[dict, str]:
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    code_uri = packaging.build_project_tarball(PROJECT, tmp_path / "code").path.as_uri()
    inputs = spec.JobInputs(job_name="stop-hosts", entry_point="main", image_uri="local", code_uri=code_uri,
                            output_uri=(tmp_path / "out").as_uri(), checkpoint_uri=(tmp_path / "ckpt").as_uri(),
                            run=spec.RunInfo(run_id, "0", tracking), params={"on_stop": on_stop},
                            channel_params={}, cost=cost)
    config = CloudTrainingConfig.from_backend_config({"mode": "local", "instance_count": 2, **(backend or {})})
    return spec.build_training_job_request(config, inputs, "us-east-1"), run_id


def _wait_for(what: str, check, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s  # a bound against a hang, not a timing assertion
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _started(tmp_path: Path, request: dict) -> tuple[LocalJob, Path]:
    job = LocalJob(request, job_root=tmp_path / "root", stream=None)
    job.start()
    log = tmp_path / "root" / "job.log"
    _wait_for("both hosts stepping", lambda: all(f"rank {r} on algo-{r + 1}: step 2" in log.read_text()
                                                  for r in (0, 1)))
    return job, log


def _processes(job: LocalJob) -> set[int]:
    """Every process of every host now: its launcher and all below it (torchrun, its workers)."""
    found: set[int] = set()
    for host in job.hosts:
        found |= {host.proc.pid, *procs.descendants(host.proc.pid)}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _ended_stopped(job: LocalJob, log: Path, before: set[int], run_id: str, reason: str) -> mlflow.entities.Run:
    final = job.wait(timeout=300)
    text = log.read_text()
    assert final["TrainingJobStatus"] == "Stopped", text[-4000:]
    assert [h.describe()["TrainingJobStatus"] for h in job.hosts] == ["Stopped", "Stopped"], text[-4000:]
    said = JobRoot(job.root).describe()  # what `ade-mlflow status` reads: a spot reclaim reads Interrupted
    secondary = "Interrupted" if reason == "spot_interrupted" else "Stopped"
    assert (said["TrainingJobStatus"], said["SecondaryStatus"]) == ("Stopped", secondary)
    assert said["SecondaryStatusTransitions"][-1]["StatusMessage"].startswith(f"Training job stopped: {reason}: ")
    assert not [pid for pid in before if _alive(pid)], "processes of the job left running"
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED", text[-4000:]
    assert run.data.tags[contract.STOP_REASON_TAG] == reason, run.data.tags
    return run


def test_a_sigterm_to_one_hosts_launcher_stops_every_host_and_the_run_ends_killed(sqlite_tracking, tmp_path):
    """A spot reclaim of algo-2 alone: its launcher gets SIGTERM, the local runner having written the reason."""
    request, run_id = _request(tmp_path, sqlite_tracking, "agree")
    job, log = _started(tmp_path, request)
    before = _processes(job)
    peer = job.hosts[1]
    peer.paths.stop_reason_file.write_text("spot_interrupted\nspot_interrupted: the spot instance was reclaimed\n")
    os.kill(peer.proc.pid, signal.SIGTERM)
    run = _ended_stopped(job, log, before, run_id, "spot_interrupted")
    assert run.data.tags[contract.STOP_DETAIL_TAG] == "spot_interrupted: the spot instance was reclaimed"
    text = log.read_text()
    assert all(f"rank {r} on algo-{r + 1}: stopping at step" in text for r in (0, 1))


def test_a_sigterm_to_one_training_process_stops_every_host_and_the_run_ends_killed(sqlite_tracking, tmp_path):
    """No launcher was signalled: the ranks agree to stop, and every host's torchrun says its workers exited 143."""
    request, run_id = _request(tmp_path, sqlite_tracking, "agree")
    job, log = _started(tmp_path, request)
    before = _processes(job)
    worker = int(re.search(r"rank 1 on algo-2: pid (\d+)", log.read_text()).group(1))
    os.kill(worker, signal.SIGTERM)
    run = _ended_stopped(job, log, before, run_id, "stopped")
    assert "a training process of the job got SIGTERM" in run.data.tags[contract.STOP_DETAIL_TAG]


def test_a_budget_stop_on_one_host_while_its_peer_is_in_a_collective_ends_killed_not_failed(sqlite_tracking,
                                                                                            tmp_path):
    """The race: algo-2's budget runs out first and its rank leaves; algo-1's rank, in its next all_reduce, loses
    its partner and raises, and algo-1's launcher ends the run before algo-2's host is over (the toy entry makes
    that order certain). The reason algo-2 recorded on the run before it signalled makes it KILLED, budget."""
    from ade_mlflow_plugin.backend import cost

    backend = {"instance_type": "ml.g5.xlarge", "max_cost_usd": 1.0,
               # relative: each host reads its own, in its job root; only algo-2's is ever written
               "environment": {contract.ENV_BUDGET_CLOCK_FILE: "elapsed_s", contract.ENV_BUDGET_INTERVAL_S: "0.2"}}
    plan = cost.plan_cost(CloudTrainingConfig.from_backend_config({"mode": "local", "instance_count": 2, **backend}),
                          None)
    request, run_id = _request(tmp_path, sqlite_tracking, "leave", backend, plan.cost)
    job, log = _started(tmp_path, request)
    before = _processes(job)
    (job.hosts[1].root / "elapsed_s").write_text(str(int(1.1 * plan.cost.affordable_s(2))))
    run = _ended_stopped(job, log, before, run_id, "budget")
    assert "x 2 (on_budget=stop)" in run.data.tags[contract.STOP_DETAIL_TAG]
    text = log.read_text()
    assert "[algo-2] rank 1 on algo-2: SIGTERM, leaving the collective" in text
    # The race did happen: algo-1's rank raised in its collective (a worker failure, exit 1, not a stop's 143),
    # and its launcher still ended as stopped, for the budget.
    lead = (job.root / "logs" / "algo-1.log").read_text()
    assert "[rank0]: RuntimeError" in lead and re.search(r"exitcode\s*:\s*1 ", lead), lead[-3000:]
    assert re.search(r"^launcher: stopped \(budget: .*\); the entry exited with 1$", lead, re.M), lead[-3000:]
