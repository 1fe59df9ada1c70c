"""More than one process per node: the launcher starts the entry under torchrun (gloo on CPU here);
only rank 0 talks to MLflow and the launcher ends the run once."""
from __future__ import annotations

import mlflow
import pytest

from tests.job.test_bad_job_input import _request, _run


@pytest.mark.slow
def test_two_process_gloo_run_through_the_launcher(sqlite_tracking, tmp_path, monkeypatch):
    monkeypatch.setenv("ADE_NPROC_PER_NODE", "2")
    monkeypatch.setenv("ADE_MASTER_PORT", str(__import__("tests.conftest", fromlist=["free_port"]).free_port()))
    request, run_id = _request(tmp_path, sqlite_tracking, entry="ddp", params={"steps": "2"})
    final = _run(request, tmp_path / "root")
    log = (tmp_path / "root" / "job.log").read_text()
    assert final["TrainingJobStatus"] == "Completed", log[-3000:]
    assert "torch.distributed.run" in log and "--nproc_per_node=2" in log
    # torchrun's workers get SageMaker's grace after a stop, not torchrun's default 30 s.
    assert "rank 0/2: all-reduce 3.0, shutdown grace 110 s" in log
    assert "rank 1/2: all-reduce 3.0, shutdown grace 110 s" in log
    client = mlflow.MlflowClient()
    assert [m.value for m in client.get_metric_history(run_id, "world_size")] == [2.0]
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("resource,gpus,expected", [
    ({"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}, 4,
     ["--nnodes=2", "--node_rank=1", "--nproc_per_node=4", "--master_addr=algo-1"]),
    ({"current_host": "algo-1", "hosts": ["algo-1"]}, 8, ["--nnodes=1", "--node_rank=0", "--nproc_per_node=8"]),
])
def test_torchrun_arguments_follow_the_contract(resource, gpus, expected, monkeypatch):
    from ade_mlflow_plugin.job.launcher import distributed

    monkeypatch.delenv("ADE_NPROC_PER_NODE", raising=False)
    command = distributed("python entrypoints/main.py --lora_r 16", resource, gpus)
    for part in expected:
        assert part in command
    assert command.endswith("entrypoints/main.py --lora_r 16")
    assert distributed("python x.py", {"current_host": "algo-1", "hosts": ["algo-1"]}, 1) == "python x.py"
