"""Issue 21's done-when: `mlflow run` of `main` in local mode with instance_count 2 on the tiny model (CPU,
gloo): both hosts' logs in the console and in the run's artifacts, train_loss once per logged step, run
FINISHED, one registered version that loads and generates."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import mlflow
import pytest

from ade_mlflow_plugin.config.training import TrainingConfig
from tests.conftest import FIXTURES, REPO_ROOT

# A whole job, a subprocess `mlflow run` or a training entry: not in `make test-fast`.
pytestmark = pytest.mark.slow


def test_main_on_two_local_hosts(tmp_path):
    from ade_mlflow_plugin.training.tiny import make_tiny_model

    codebase = FIXTURES / "codebases" / "polyglot"
    base = make_tiny_model(tmp_path / "base", codebase)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    name = f"ade-two-hosts-{uuid.uuid4().hex[:6]}"
    params = {"codebase": str(codebase), "base_model": str(base), "num_examples": "40", "max_steps": "20",
              "batch_size": "2", "grad_accumulation": "1", "max_seq_len": "128", "eval_fraction": "0.2",
              "registered_model_name": name}
    args = [a for k, v in params.items() for a in ("-P", f"{k}={v}")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "CUDA_VISIBLE_DEVICES": ""}
    config = {"mode": "local", "instance_count": 2, "job_root": str(tmp_path / "jobs")}
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), "-e", "main", "-b", "ade-sagemaker",
         "--backend-config", json.dumps(config), *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for host, rank in (("algo-1", 0), ("algo-2", 1)):  # each host's stream on the console, told apart
        assert f"[{host}] launcher: running in" in output and f"--node_rank={rank}" in output
    mlflow.set_tracking_uri(tracking)
    try:
        client = mlflow.MlflowClient()
        run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
        # Once per logged step (logging_steps' default decides which: every step of a 20-step run), none
        # missing; a second host logging would double them.
        every, _, _ = TrainingConfig().intervals(20)
        assert steps == list(range(every, 21, every)), f"train_loss steps {steps}"
        logs = client.download_artifacts(run.info.run_id, "logs", str(tmp_path / "artifacts"))
        merged = open(os.path.join(logs, "job.log"), encoding="utf-8").read()
        assert "[algo-1] " in merged and "[algo-2] " in merged
        for host in ("algo-1", "algo-2"):  # and each host's own stream, as CloudWatch keeps one per host
            assert "launcher: running in" in open(os.path.join(logs, f"{host}.log"), encoding="utf-8").read()
        versions = client.search_model_versions(f"name='{name}'")
        assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == run.info.run_id
        model = mlflow.pyfunc.load_model(f"models:/{name}/1")
        out = model.predict(["def add(a, b):"], params={"max_new_tokens": 6})
        assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str) and out[0]
    finally:
        mlflow.set_tracking_uri(None)
