"""Issue 18 item 3: checkpoints copied into local storage (sync-checkpoints, and the follower's observer):
atomic, with SHA256SUMS, 0 bytes for what is already there, nothing the user has removed; S3 and local."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ade_mlflow_plugin.backend.checkpoint_sync import (SUMS_FILE, CheckpointSync, LocalSource, S3Source,
                                                       follow_job, sync_checkpoints_command, sync_once)
from ade_mlflow_plugin.training.checkpoints import COMPLETE_MARKER, mark_complete


def make_checkpoint(location: Path, step: int, weights: bytes = b"", complete: bool = True) -> Path:
    """A checkpoint folder as the Trainer leaves it, marked complete by the job (manifest in the marker)."""
    folder = location / f"checkpoint-{step}"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(weights or os.urandom(2000 + step))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    (folder / "sub" / "rng.pth").write_bytes(os.urandom(64))
    if complete:
        mark_complete(folder)
    return folder


def assert_checksummed(folder: Path) -> None:
    sums = (folder / SUMS_FILE).read_text().splitlines()
    names = {line.split("  ", 1)[1] for line in sums}
    assert names >= {"adapter_model.safetensors", "trainer_state.json", "sub/rng.pth", COMPLETE_MARKER}
    result = subprocess.run(["sha256sum", "-c", SUMS_FILE], cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_copies_each_checkpoint_with_sums_then_nothing_twice(tmp_path):
    source, dest = tmp_path / "at", tmp_path / "mine"
    for step in (2, 4):
        make_checkpoint(source, step)
    first = sync_once(LocalSource(source.as_uri()), dest)
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert first.copied == ["checkpoint-2", "checkpoint-4"] and first.bytes == total
    for step in (2, 4):
        assert_checksummed(dest / f"checkpoint-{step}")
        assert (dest / f"checkpoint-{step}" / "sub" / "rng.pth").read_bytes() == \
            (source / f"checkpoint-{step}" / "sub" / "rng.pth").read_bytes()
    again = sync_once(LocalSource(source.as_uri()), dest)
    assert again.bytes == 0 and again.copied == [] and again.unchanged == ["checkpoint-2", "checkpoint-4"]
    assert not [p for p in dest.iterdir() if p.name.startswith(".staging")]


def test_rotation_keeps_what_is_here_and_a_changed_file_alone_is_fetched(tmp_path):
    source, dest = tmp_path / "at", tmp_path / "mine"
    make_checkpoint(source, 2), make_checkpoint(source, 4)
    sync_once(LocalSource(str(source)), dest)
    (dest / "checkpoint-4" / "my-notes.txt").write_text("the user's")
    import shutil

    shutil.rmtree(source / "checkpoint-2")  # rotated out by the job
    make_checkpoint(source, 6)
    folder = source / "checkpoint-4"
    new_weights = os.urandom(3000)
    (folder / "adapter_model.safetensors").write_bytes(new_weights)  # saved again (a restart at step 4)
    mark_complete(folder)
    report = sync_once(LocalSource(str(source)), dest)
    assert sorted(report.copied) == ["checkpoint-4", "checkpoint-6"]
    six = sum(p.stat().st_size for p in (source / "checkpoint-6").rglob("*") if p.is_file())
    assert report.bytes == six + len(new_weights) + (folder / COMPLETE_MARKER).stat().st_size
    assert (dest / "checkpoint-2").is_dir()  # nothing removed
    assert (dest / "checkpoint-4" / "my-notes.txt").read_text() == "the user's"
    assert (dest / "checkpoint-4" / "adapter_model.safetensors").read_bytes() == new_weights
    assert_checksummed(dest / "checkpoint-4")


def test_a_checkpoint_still_uploading_or_damaged_is_left_for_the_next_pass(tmp_path):
    source, dest = tmp_path / "at", tmp_path / "mine"
    uploading = make_checkpoint(source, 2)
    (uploading / "sub" / "rng.pth").unlink()  # the marker landed before this file
    damaged = make_checkpoint(source, 4)
    weights = damaged / "adapter_model.safetensors"
    weights.write_bytes(bytes(len(weights.read_bytes())))  # same size, other bytes
    make_checkpoint(source, 6, complete=False)  # the job is saving it
    report = sync_once(LocalSource(str(source)), dest)
    assert report.pending == ["checkpoint-2", "checkpoint-4"] and report.copied == []
    assert sorted(p.name for p in dest.iterdir()) == []  # no half checkpoint, no staging left


def test_s3_location(s3_bucket, tmp_path):
    import boto3

    local, dest = tmp_path / "made", tmp_path / "mine"
    make_checkpoint(local, 3)
    s3 = boto3.client("s3")
    for path in (local / "checkpoint-3").rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), s3_bucket, f"jobs/j1/{path.relative_to(local).as_posix()}")
    source = S3Source(f"s3://{s3_bucket}/jobs/j1", s3)
    report = sync_once(source, dest)
    assert report.copied == ["checkpoint-3"]
    assert_checksummed(dest / "checkpoint-3")
    assert sync_once(source, dest).bytes == 0


class _Job:
    """A job whose status goes InProgress -> Completed; each poll the job saves another checkpoint."""

    def __init__(self, statuses):
        self.statuses = list(statuses)

    def describe(self):
        return {"TrainingJobStatus": self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]}


def test_follow_copies_as_checkpoints_appear_until_the_job_ends(tmp_path):
    source, dest = tmp_path / "at", tmp_path / "mine"
    make_checkpoint(source, 1)
    seen = []

    def between_polls(_seconds):
        seen.append(sorted(p.name for p in dest.iterdir()))
        make_checkpoint(source, len(seen) + 1)

    console = io.StringIO()
    follow_job(_Job(["InProgress", "InProgress", "Completed"]), LocalSource(str(source)), dest, console, 0,
               sleep=between_polls)
    assert seen == [["checkpoint-1"], ["checkpoint-1", "checkpoint-2"]]  # each there while the job ran
    assert sorted(p.name for p in dest.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert "checkpoint-3 -> " in console.getvalue()


def test_observer_copies_from_the_described_location(tmp_path):
    source, dest = tmp_path / "job root é" / "at", tmp_path / "mine"  # as_uri() escapes both
    make_checkpoint(source, 5)
    console = io.StringIO()
    sync = CheckpointSync(dest, console)
    description = {"TrainingJobName": "j", "CheckpointConfig": {"S3Uri": source.as_uri()}}
    sync.on_poll(description)
    assert (dest / "checkpoint-5" / SUMS_FILE).is_file()
    sync.on_end(description)
    assert "1 already there" in console.getvalue()
    sync.on_poll({"TrainingJobName": "j"})  # a request without checkpoints: nothing to do


def test_command_on_a_job_name_copies_and_says_so(tmp_path, monkeypatch):
    """A local job found by name under --job-root (its job.json holds the request's CheckpointConfig)."""
    source, dest = tmp_path / "at", tmp_path / "mine"
    make_checkpoint(source, 2)
    root = tmp_path / "jobs" / "jobs" / "ade-x-1"
    root.mkdir(parents=True)
    (root / "job.json").write_text(json.dumps({"TrainingJobName": "ade-x-1", "TrainingJobStatus": "Completed",
                                               "CheckpointConfig": {"S3Uri": source.as_uri()}}))
    result = CliRunner().invoke(sync_checkpoints_command, ["ade-x-1", "--root", str(dest), "--job-root",
                                                           str(tmp_path / "jobs")])
    assert result.exit_code == 0, result.output
    assert "1 copied" in result.output and (dest / "checkpoint-2" / SUMS_FILE).is_file()
    digest = hashlib.sha256((dest / "checkpoint-2" / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert digest in (dest / "checkpoint-2" / SUMS_FILE).read_text()


def test_the_ade_mlflow_verb_runs_it(tmp_path, capsys, monkeypatch):
    """`ade-mlflow sync-checkpoints JOB --root DIR --job-root ROOT` (the CLI's registered verb)."""
    from ade_mlflow_plugin.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    source, dest = tmp_path / "at", tmp_path / "mine"
    make_checkpoint(source, 3)
    root = tmp_path / "jobs" / "jobs" / "ade-y-1"
    root.mkdir(parents=True)
    (root / "job.json").write_text(json.dumps({"TrainingJobName": "ade-y-1", "TrainingJobStatus": "InProgress",
                                               "CheckpointConfig": {"S3Uri": source.as_uri()}}))
    main(["sync-checkpoints", "ade-y-1", "--root", str(dest), "--job-root", str(tmp_path / "jobs")])
    assert "1 copied" in capsys.readouterr().out and (dest / "checkpoint-3" / SUMS_FILE).is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["sync-checkpoints", "0" * 32, "--root", str(dest), "--job-root", str(tmp_path / "jobs")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ade-mlflow: error:")]
    assert exit_info.value.code == 2 and len(err) == 1 and f"run '{'0' * 32}' not found" in err[0], err
