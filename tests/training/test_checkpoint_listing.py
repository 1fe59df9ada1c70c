"""Issue 18 item 3 done-when: a local-mode run with `sync_checkpoints` leaves every kept checkpoint under
the local root with checksums, and the run lists them (checkpoints.json artifact, ade.checkpoints tag)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ade_mlflow_plugin.training.checkpoints import (CHECKPOINT_URI_TAG, INDEX_ARTIFACT, STEPS_TAG, checkpoint_index,
                                                    mark_complete)
from tests.conftest import REPO_ROOT


def test_index_lists_complete_checkpoints_with_eval_loss_and_where_they_live(tmp_path):
    for step, evals in ((4, [{"step": 4, "eval_loss": 1.5}]), (8, [])):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"x" * step)
        state = {"global_step": step, "log_history": [{"step": step, "loss": 2.0}, *evals],
                 "best_model_checkpoint": str(tmp_path / "checkpoint-4") if step == 8 else None}
        (folder / "trainer_state.json").write_text(json.dumps(state))
        mark_complete(folder)
    (tmp_path / "checkpoint-12").mkdir()  # being saved: not listed
    index = checkpoint_index(tmp_path, "s3://b/ckpt/job/")
    assert index["location"] == "s3://b/ckpt/job/"
    assert [(e["step"], e["eval_loss"], e["best"], e["uri"]) for e in index["checkpoints"]] == [
        (4, 1.5, True, "s3://b/ckpt/job/checkpoint-4"), (8, None, False, "s3://b/ckpt/job/checkpoint-8")]
    assert index["checkpoints"][0]["files"] == 3 and index["checkpoints"][0]["bytes"] > 4
    assert checkpoint_index(tmp_path, None)["checkpoints"][1]["uri"] is None


@pytest.mark.slow
def test_local_run_with_sync_checkpoints_copies_and_lists_every_kept_checkpoint(tiny_model, prepared_dataset,
                                                                                 tracking_uri, tmp_path):
    import mlflow.projects

    local_root = tmp_path / "my-checkpoints"
    params = {"dataset": str(prepared_dataset), "base_model": str(tiny_model), "max_steps": "6",
              "save_steps": "2", "keep_checkpoints": "2", "registered_model_name": "", "batch_size": "2",
              "grad_accumulation": "1", "max_seq_len": "256", "logging_steps": "1", "eval_samples": "1",
              "max_new_tokens": "4", "warmup_ratio": "0"}
    config = {"mode": "local", "job_root": str(tmp_path / "jobs"), "sync_checkpoints": str(local_root),
              "poll_interval_s": 1}
    submitted = mlflow.projects.run(str(REPO_ROOT), entry_point="train", parameters=params,
                                    backend="ade-sagemaker", synchronous=True, backend_config=config)
    assert submitted.get_status() == "FINISHED"
    client = MlflowClient(tracking_uri)
    run = client.get_run(submitted.run_id)
    # keep_checkpoints=2: the last one and (load_best) the best one by eval_loss, or the last two
    steps = [int(step) for step in run.data.tags[STEPS_TAG].split(",")]
    assert 6 in steps and len(steps) == 2, steps
    listing = json.loads(Path(client.download_artifacts(submitted.run_id, INDEX_ARTIFACT, str(tmp_path)))
                         .read_text())
    assert [(e["step"], e["path"]) for e in listing["checkpoints"]] == [(s, f"checkpoint-{s}") for s in steps]
    assert all(e["eval_loss"] is not None for e in listing["checkpoints"])  # each checkpoint was evaluated
    best = run.data.tags["ade.best_step"]
    assert [e["step"] for e in listing["checkpoints"] if e["best"]] == [int(best)]
    assert listing["location"] == run.data.tags[CHECKPOINT_URI_TAG] and listing["location"].startswith("file://")
    assert [e["uri"] for e in listing["checkpoints"]] == [f"{listing['location']}/checkpoint-{s}" for s in steps]
    kept = {f"checkpoint-{s}" for s in steps}
    assert kept <= {p.name for p in local_root.iterdir()}  # checkpoint-2 too when a poll saw it before rotation
    for name in kept:
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=local_root / name, capture_output=True,
                               text=True)
        assert check.returncode == 0 and "adapter_model.safetensors: OK" in check.stdout, check.stdout
