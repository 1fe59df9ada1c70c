"""instance_count > 1 in local mode: N hosts on this machine, each with its own job root and launcher, their
torchruns meeting over loopback; the job's status aggregates them (issue 21 item 1)."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import mlflow
import pytest

from ade_mlflow_plugin.backend import packaging, spec
from ade_mlflow_plugin.backend.local import LocalJob, JobRoot
from ade_mlflow_plugin.backend.local_hosts import LocalCluster
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.job import contract

PROJECT = Path(__file__).parent / "multihost_project"


def _request(tmp_path: Path, tracking: str, count: int = 2, params: dict | None = None,
             environment: dict | None = None) -> tuple[dict, str]:
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    code_uri = packaging.build_project_tarball(PROJECT, tmp_path / "code").path.as_uri()
    inputs = spec.JobInputs(job_name="multihost-job", entry_point="main", image_uri="local", code_uri=code_uri,
                            output_uri=(tmp_path / "out").as_uri(), checkpoint_uri=(tmp_path / "ckpt").as_uri(),
                            run=spec.RunInfo(run_id, "0", tracking), params=params or {}, channel_params={})
    config = CloudTrainingConfig.from_backend_config({"mode": "local", "instance_count": count})
    request = spec.build_training_job_request(config, inputs, "us-east-1")
    request.setdefault("Environment", {}).update(environment or {})
    return request, run_id


def _wait_for(what: str, check, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s  # a bound against a hang, not a timing assertion
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_request_for_two_instances_is_a_cluster_of_two_host_roots(tmp_path):
    request = {"TrainingJobName": "two", "ResourceConfig": {"InstanceCount": 2, "InstanceType": "local"},
               "HyperParameters": {}}
    job = LocalJob(request, job_root=tmp_path / "two", stream=None)
    assert isinstance(job, LocalCluster)
    assert [h.host for h in job.hosts] == ["algo-1", "algo-2"]
    assert [h.root for h in job.hosts] == [tmp_path / "two" / "algo-1", tmp_path / "two" / "algo-2"]
    assert job.log_files == [tmp_path / "two" / "job.log", tmp_path / "two" / "logs"]
    single = LocalJob({**request, "ResourceConfig": {"InstanceCount": 1}}, job_root=tmp_path / "one", stream=None)
    assert type(single) is LocalJob and single.log_files == [tmp_path / "one" / "job.log"]


@pytest.mark.slow
def test_two_hosts_train_as_one_job(sqlite_tracking, tmp_path):
    console = io.StringIO()
    request, run_id = _request(tmp_path, sqlite_tracking)
    job = LocalJob(request, job_root=tmp_path / "root", stream=console)
    job.start()
    final = job.wait(timeout=300)
    root = tmp_path / "root"
    merged = (root / "job.log").read_text()
    assert final["TrainingJobStatus"] == "Completed", merged[-3000:]
    for host, rank in (("algo-1", 0), ("algo-2", 1)):
        resource = json.loads((root / host / contract.RESOURCE_CONFIG_FILE).read_text())
        assert resource["current_host"] == host and resource["hosts"] == ["algo-1", "algo-2"]
        # Each host's lines reach the console and the merged log prefixed with its name, and its own log.
        line = f"rank {rank}/2 on {host}: all-reduce 3.0"
        assert f"[{host}] {line}" in console.getvalue() and f"[{host}] {line}" in merged
        assert line in (root / "logs" / f"{host}.log").read_text()
        assert "--master_addr=127.0.0.1" in merged and "--nnodes=2" in merged
    # Only the lead host's model is the job's: one archive, at SageMaker's place.
    assert final["ModelArtifacts"]["S3ModelArtifacts"].endswith("multihost-job/output/model.tar.gz")
    assert JobRoot(root).describe()["TrainingJobStatus"] == "Completed"
    client = mlflow.MlflowClient()
    assert [m.value for m in client.get_metric_history(run_id, "world_size")] == [2.0]
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_failed_host_fails_the_job_with_its_reason_and_stops_the_other(sqlite_tracking, tmp_path):
    request, run_id = _request(tmp_path, sqlite_tracking, params={"fail_rank": "1"})
    job = LocalJob(request, job_root=tmp_path / "root", stream=None)
    job.start()
    final = job.wait(timeout=300)
    merged = (tmp_path / "root" / "job.log").read_text()
    assert final["TrainingJobStatus"] == "Failed", merged[-3000:]
    assert final["FailureReason"].startswith("AlgorithmError: algo-2: ValueError: rank 1 on algo-2 gave up"), \
        final["FailureReason"][:500]
    # The lead host was stopped (not left waiting), and its launcher failed the run: no KILLED, no stop reason.
    assert job.hosts[0].describe()["TrainingJobStatus"] == "Stopped"
    assert "stopped because host algo-2 of the job failed" in merged
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED" and contract.STOP_REASON_TAG not in run.data.tags


@pytest.mark.slow
def test_a_stop_stops_every_host_and_the_run_ends_killed(sqlite_tracking, tmp_path):
    request, run_id = _request(tmp_path, sqlite_tracking, params={"wait_for_stop": "true"})
    job = LocalJob(request, job_root=tmp_path / "root", stream=None)
    job.start()
    log = tmp_path / "root" / "job.log"
    _wait_for("both hosts working", lambda: all(f"rank {r} on algo-{r + 1}: step 1" in log.read_text()
                                                 for r in (0, 1)))
    job.stop()
    final = job.wait(timeout=300)
    assert final["TrainingJobStatus"] == "Stopped", log.read_text()[-3000:]
    assert [h.describe()["TrainingJobStatus"] for h in job.hosts] == ["Stopped", "Stopped"]
    for rank in (0, 1):
        assert f"[algo-{rank + 1}] rank {rank} on algo-{rank + 1}: SIGTERM, exiting" in log.read_text()
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags[contract.STOP_REASON_TAG] == "stopped"


@pytest.mark.slow
def test_a_host_whose_peers_never_come_fails_in_bounded_time_with_one_line(sqlite_tracking, tmp_path):
    """What `instance_count: 2` did before: one host started, its torchrun waiting for algo-1 for ever."""
    from tests.conftest import free_port

    request, run_id = _request(tmp_path, sqlite_tracking)
    env = {contract.ENV_MASTER_ADDR: "127.0.0.1", contract.ENV_MASTER_PORT: str(free_port()),
           contract.ENV_RENDEZVOUS_TIMEOUT_S: "3"}
    job = LocalJob(request, job_root=tmp_path / "root", stream=None, host="algo-1", extra_env=env)
    job.start()
    final = job.wait(timeout=300)
    assert final["TrainingJobStatus"] == "Failed", job.log_path.read_text()[-3000:]
    cause = final["FailureReason"].splitlines()[0]
    assert cause.startswith("AlgorithmError: host algo-1 could not rendezvous with the other 1 host(s) at "
                            f"127.0.0.1:{env[contract.ENV_MASTER_PORT]}"), cause
    assert "waiting for clients" in cause and contract.ENV_RENDEZVOUS_TIMEOUT_S in cause
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FAILED"


@pytest.mark.slow
def test_a_detached_two_host_job_runs_to_its_end(sqlite_tracking, tmp_path):
    """`"wait": false`: the submitter prepares both host roots, a runner of its own session runs them."""
    from ade_mlflow_plugin.backend.local import ENDED, start_detached

    request, run_id = _request(tmp_path, sqlite_tracking)
    root = tmp_path / "root"
    job = start_detached(request, root)
    assert (root / "algo-1" / contract.RESOURCE_CONFIG_FILE).is_file()
    assert (root / "algo-2" / contract.RESOURCE_CONFIG_FILE).is_file()
    _wait_for("the detached job's end", lambda: job.describe()["TrainingJobStatus"] in ENDED, timeout_s=300)
    final = job.describe()
    assert final["TrainingJobStatus"] == "Completed", (root / "job.log").read_text()[-3000:]
    assert "[algo-2] rank 1/2 on algo-2: all-reduce 3.0" in job.log_path.read_text()
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("count,gpus,expected", [
    (2, ["0", "1", "2", "3"], [{"CUDA_VISIBLE_DEVICES": "0,1", "SM_NUM_GPUS": "2"},
                               {"CUDA_VISIBLE_DEVICES": "2,3", "SM_NUM_GPUS": "2"}]),
    (2, ["4", "6", "7"], [{"CUDA_VISIBLE_DEVICES": "4", "SM_NUM_GPUS": "1"},
                          {"CUDA_VISIBLE_DEVICES": "6", "SM_NUM_GPUS": "1"}]),
    (2, [], [{}, {}]),  # CPU: nothing to split
    (3, ["0", "1"], [{}, {}, {}]),  # fewer GPUs than hosts: shared, as before
])
def test_each_host_gets_its_share_of_the_gpus(count, gpus, expected):
    from ade_mlflow_plugin.backend.local_hosts import host_devices

    assert host_devices(count, gpus) == expected


@pytest.mark.slow
def test_a_budget_stop_stops_every_host_and_the_run_ends_killed_for_budget(sqlite_tracking, tmp_path):
    from ade_mlflow_plugin.backend import cost

    clock_file = tmp_path / "elapsed_s"
    config = CloudTrainingConfig.from_backend_config({
        "mode": "local", "instance_type": "ml.g5.xlarge", "instance_count": 2, "max_cost_usd": 1.0,
        "environment": {contract.ENV_BUDGET_CLOCK_FILE: str(clock_file), contract.ENV_BUDGET_INTERVAL_S: "0.2"}})
    plan = cost.plan_cost(config, None)
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    code = packaging.build_project_tarball(PROJECT, tmp_path / "code").path.as_uri()
    inputs = spec.JobInputs(job_name="budget-hosts", entry_point="main", image_uri="local", code_uri=code,
                            output_uri=(tmp_path / "out").as_uri(), checkpoint_uri=(tmp_path / "ckpt").as_uri(),
                            run=spec.RunInfo(run_id, "0", sqlite_tracking), params={"wait_for_stop": "true"},
                            cost=plan.cost)
    job = LocalJob(spec.build_training_job_request(config, inputs, "us-east-1"), job_root=tmp_path / "root",
                   stream=None)
    job.start()
    log = tmp_path / "root" / "job.log"
    _wait_for("both hosts working", lambda: all(f"rank {r} on algo-{r + 1}: step 1" in log.read_text()
                                                 for r in (0, 1)))
    clock_file.write_text(str(int(1.1 * plan.cost.affordable_s(2))))  # 2 instances: half the seconds
    final = job.wait(timeout=300)
    assert final["TrainingJobStatus"] == "Stopped", log.read_text()[-3000:]
    assert final["SecondaryStatusTransitions"][-1]["StatusMessage"].startswith("Training job stopped: budget: ")
    assert [h.describe()["TrainingJobStatus"] for h in job.hosts] == ["Stopped", "Stopped"]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags[contract.STOP_REASON_TAG] == "budget"
    assert "x 2 (on_budget=stop)" in run.data.tags[contract.STOP_DETAIL_TAG]


def test_a_job_root_names_the_logs_the_follower_uploads(tmp_path):
    root = tmp_path / "job"
    root.mkdir()
    assert JobRoot(root).log_files == [root / "job.log"]  # one host
    (root / "logs").mkdir()
    assert JobRoot(root).log_files == [root / "job.log", root / "logs"]  # several: each host's own log too
