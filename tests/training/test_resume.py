"""SIGTERM at a random step, then a restart on the same run and checkpoint dir (a spot restart) ends
where an uninterrupted run ends: same global step, no metric step logged twice, same adapter weights."""
from __future__ import annotations

import random
import signal
import time

import pytest
from mlflow import MlflowClient

from ade_mlflow_plugin.training.checkpoints import SIGTERM_EXIT_CODE, complete_checkpoints
from tests.training.conftest import FAST_ARGS, Entry, entry_env, new_run

STEPS = 12


def _args(tiny_model, dataset):
    return ["--dataset", str(dataset), "--base_model", str(tiny_model), "--max_steps", str(STEPS),
            "--save_steps", "4", "--keep_checkpoints", "2", "--lora_dropout", "0.1", "--seed", "7",
            "--registered_model_name", "", *FAST_ARGS]


def _env(tracking_uri, run_id, root):
    env = entry_env(tracking_uri, run_id, root / "ckpt", root / "model")
    env["OMP_NUM_THREADS"] = "1"  # two entries share the CPU; the same thread count keeps numerics equal
    return env


def _adapter(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.slow
def test_sigterm_then_restart_matches_uninterrupted_run(tiny_model, prepared_dataset, tracking_uri, tmp_path):
    import torch

    stop_at = random.Random().randint(2, STEPS - 3)
    print(f"SIGTERM after step {stop_at} is logged")
    run_a, run_b = new_run(tracking_uri, "training-resume"), new_run(tracking_uri, "training-resume")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    args = _args(tiny_model, prepared_dataset)
    straight = Entry("train.py", args, _env(tracking_uri, run_a, tmp_path / "a"))
    first = Entry("train.py", args, _env(tracking_uri, run_b, tmp_path / "b"))
    deadline = time.monotonic() + 120
    while first.logged_steps() < stop_at and first.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait() == SIGTERM_EXIT_CODE, first.output[-3000:]
    saved = complete_checkpoints(tmp_path / "b" / "ckpt")
    assert saved and stop_at <= saved[-1][0] < STEPS and len(saved) <= 2  # keep_checkpoints=2
    client = MlflowClient(tracking_uri)
    assert client.get_run(run_b).info.status == "KILLED"

    second = Entry("train.py", args, _env(tracking_uri, run_b, tmp_path / "b"))
    assert second.wait(timeout=180) == 0, second.output[-3000:]
    assert straight.wait(timeout=180) == 0, straight.output[-3000:]
    assert f"global step {STEPS}" in straight.output and f"global step {STEPS}" in second.output
    assert f"resuming from {saved[-1][1]}" in second.output

    run = client.get_run(run_b)
    assert run.info.status == "FINISHED"
    for key in run.data.metrics:  # system metrics included: resumed monitoring continues the steps
        steps = [m.step for m in client.get_metric_history(run_b, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {sorted(steps)}"
    losses = {k: {m.step: m.value for m in client.get_metric_history(r, "train_loss")} for k, r in
              (("a", run_a), ("b", run_b))}
    assert sorted(losses["b"]) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):  # same data order and dropout draws before and after the restart
        assert losses["b"][step] == pytest.approx(losses["a"][step], abs=1e-4), step

    a, b = _adapter(tmp_path / "a" / "model"), _adapter(tmp_path / "b" / "model")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4)
