"""The CPU part of the multi-GPU issue: `main` on the tiny model as a 2-process gloo run through the same
launcher path a multi-GPU SageMaker host takes (torchrun), with only rank 0 logging to MLflow."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import FIXTURES, REPO_ROOT, free_port

# A whole job, a subprocess `mlflow run` or a training entry: not in `make test-fast`.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sharding, said", [("none", "sharding: none (sharding=none)"),
                                             ("fsdp", "sharding: FSDP over 2 processes (sharding=fsdp)")])
def test_main_under_torchrun_two_processes(tmp_path, sharding, said):
    """DDP, and sharded (FSDP2): the same run, the sharded one's model published from rank 0's unsharded copy."""
    from ade_mlflow_plugin.training.tiny import make_tiny_model

    codebase = FIXTURES / "codebases" / "polyglot"
    base = make_tiny_model(tmp_path / "base", codebase)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    params = {"codebase": str(codebase), "base_model": str(base), "num_examples": "40", "max_steps": "20",
              "batch_size": "2", "grad_accumulation": "1", "max_seq_len": "128", "eval_fraction": "0.2", "sharding": sharding}
    args = [a for k, v in params.items() for a in ("-P", f"{k}={v}")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "ADE_NPROC_PER_NODE": "2",
           "ADE_MASTER_PORT": str(free_port()), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), "-e", "main", "-b", "ade-sagemaker",
         "--backend-config", json.dumps({"mode": "local", "job_root": str(tmp_path / "jobs")}), *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "--nproc_per_node=2" in output and said in output
    mlflow.set_tracking_uri(tracking)
    try:
        run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
        client = mlflow.MlflowClient()
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
        # logging_steps auto: every step of a 20-step run, each exactly once (only rank 0 logs)
        assert steps == list(range(1, 21)), f"train_loss steps {steps} (two ranks logging would double them)"
        assert "eval_loss" in run.data.metrics and run.data.params["sharding"] == sharding
        assert run.data.tags.get("ade.base_model") == str(base)  # set once rank 0 has logged the model
    finally:
        mlflow.set_tracking_uri(None)
