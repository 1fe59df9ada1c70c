"""Issue 16's stop and spot semantics on a real local-mode training job: a SIGTERM to the launcher (as
SageMaker sends it on a spot reclaim) ends the run KILLED with its reason; the restart of the same job
continues the same run from the newest complete checkpoint; a restart from the final checkpoint trains
no further step. And MaxRuntimeInSeconds stops a local job as SageMaker would."""
from __future__ import annotations

import io
import os
import signal
import time

import pytest
from mlflow import MlflowClient

from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.job.run_state import ATTEMPT_TAG, STOP_TAGS

STEPS = 40  # enough that a SIGTERM sent at step 2 lands before the last step on a fast machine


def _wait_for(what: str, check, timeout_s: float = 600):
    deadline = time.monotonic() + timeout_s  # ends a hung test; never a timing assumption
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _submit(tmp_path, tiny_model, prepared_dataset, tracking_uri, held, extra_config=None):
    """Submit the `train` entry through the backend with "wait": false, holding the detached start:
    the test runs the job in-process (LocalJob) to signal its launcher as SageMaker would."""
    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend
    from tests.conftest import REPO_ROOT

    experiment = MlflowClient(tracking_uri).create_experiment(f"restart-{time.monotonic_ns()}")
    params = {"dataset": str(prepared_dataset), "base_model": str(tiny_model), "max_steps": str(STEPS),
              "save_steps": "4", "registered_model_name": "", "batch_size": "2", "grad_accumulation": "1",
              "max_seq_len": "256", "logging_steps": "1", "eval_samples": "1", "max_new_tokens": "4",
              "warmup_ratio": "0"}
    config = {"mode": "local", "job_root": str(tmp_path / "jobs"), "wait": False, "SYNCHRONOUS": False,
              "checkpoint_s3_uri": str(tmp_path / "ckpt"), **(extra_config or {})}
    submitted = AdeSageMakerBackend(console=io.StringIO()).run(str(REPO_ROOT), "train", params, None, config,
                                                               tracking_uri, experiment)
    return submitted.run_id, held[0]


def _attempt(held: tuple) -> "object":
    from ade_mlflow_plugin.backend.local import LocalJob

    request, root, clients = held
    job = LocalJob(request, job_root=root, clients=clients, stream=None)
    job.start()
    return job


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_spot_reclaim_then_restarts_continue_the_run_and_stop_at_max_steps(tiny_model, prepared_dataset,
                                                                          tracking_uri, tmp_path, held_starts):
    client = MlflowClient(tracking_uri)
    run_id, held = _submit(tmp_path, tiny_model, prepared_dataset, tracking_uri, held_starts)

    first = _attempt(held)
    _wait_for("train step 2", lambda: f"{contract.METRIC_LINE_PREFIX} step=2 " in first.log_path.read_text())
    # The reclaim: the reason is what SageMaker's DescribeTrainingJob would say; the SIGTERM goes to the
    # launcher alone (PID 1 in a container), which forwards it to the entry.
    first.paths.stop_reason_file.write_text("spot_interrupted\nspot_interrupted: the spot instance was reclaimed\n")
    os.kill(first.proc.pid, signal.SIGTERM)
    ended = first.wait(timeout=600)
    log = first.log_path.read_text()
    assert ended["TrainingJobStatus"] == "Stopped", log[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags[contract.STOP_REASON_TAG] == "spot_interrupted"
    saved_at = max(int(p.name.split("-")[1]) for p in (tmp_path / "ckpt").glob("checkpoint-*"))
    assert 2 <= saved_at < STEPS

    second = _attempt(held)  # SageMaker restarts the same job: same request, checkpoints restored
    assert second.wait(timeout=900)["TrainingJobStatus"] == "Completed", second.log_path.read_text()[-3000:]
    log = second.log_path.read_text()
    assert "attempt 2 continues it" in log and "resuming from" in log
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[ATTEMPT_TAG] == "2"
    assert not set(STOP_TAGS) & set(run.data.tags)
    assert _steps(client, run_id, "train_loss") == list(range(1, STEPS + 1))  # each step once

    third = _attempt(held)  # a restart after the final checkpoint (say, reclaimed while logging the model)
    assert third.wait(timeout=900)["TrainingJobStatus"] == "Completed", third.log_path.read_text()[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[ATTEMPT_TAG] == "3"
    for key in ("train_loss", "learning_rate"):
        assert _steps(client, run_id, key) == list(range(1, STEPS + 1)), key
    log = third.log_path.read_text()
    assert f"{contract.METRIC_LINE_PREFIX} step={STEPS + 1} " not in log and "nothing left to train" in log
    # load_best: the published adapter is the best checkpoint's (the final one's when the last eval was best)
    best = int(run.data.tags.get("ade.best_step", STEPS))
    _published_adapter_is_the_final_checkpoint(held[1] / "model", tmp_path / "ckpt" / f"checkpoint-{best}")


def _published_adapter_is_the_final_checkpoint(model_dir, checkpoint) -> None:
    import torch
    from safetensors.torch import load_file

    published = load_file(str(model_dir / "adapter_model.safetensors"))
    saved = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert published.keys() == saved.keys() and published
    assert all(torch.equal(published[k].float(), saved[k].float()) for k in saved)
