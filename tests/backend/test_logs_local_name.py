"""`ade-mlflow logs JOB` for a local-mode job's name: its log is read from --job-root, as status and sync-run
find it, with no AWS call (the lead's ask)."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ade_mlflow_plugin.backend.commands import logs_command
from ade_mlflow_plugin.backend.local import STATE_FILE


def test_logs_of_a_local_job_by_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # any AWS call would fail loudly
    root = tmp_path / "job root ü" / "jobs" / "ade-coder-20261206-000000-beef"
    root.mkdir(parents=True)
    (root / "job.log").write_text("step 1 train_loss=2.0\nstep 2 train_loss=1.5\n")
    (root / STATE_FILE).write_text(json.dumps({"TrainingJobName": root.name, "TrainingJobStatus": "Completed",
                                               "SecondaryStatus": "Completed"}))
    result = CliRunner().invoke(logs_command, [root.name, "--job-root", str(tmp_path / "job root ü")])
    assert result.exit_code == 0, result.output
    assert result.stdout == "step 1 train_loss=2.0\nstep 2 train_loss=1.5\n"


def test_logs_follow_of_an_ended_local_job_returns(tmp_path: Path) -> None:
    root = tmp_path / "jobs" / "ade-x-1"
    root.mkdir(parents=True)
    (root / "job.log").write_text("done\n")
    (root / STATE_FILE).write_text(json.dumps({"TrainingJobName": "ade-x-1", "TrainingJobStatus": "Failed"}))
    result = CliRunner().invoke(logs_command, ["ade-x-1", "--job-root", str(tmp_path), "-f", "--poll-interval", "0.01"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "done\n"
