"""Checkpoint folder, SIGTERM handling and picking the checkpoint to resume from.

The Trainer writes `checkpoint-<step>/` folders into the dir the launcher hands over (ADE_CHECKPOINT_DIR,
synced to S3 by SageMaker) and keeps the last K. A folder only counts once COMPLETE_MARKER is in it:
it is written after the Trainer has finished saving, so a job killed mid-save resumes from the one
before. SIGTERM (stop, spot reclaim; 120 s grace) sets a flag; the loop saves at the end of the current
step and the entry exits 143.
"""
from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

COMPLETE_MARKER = ".ade_complete"
SIGTERM_EXIT_CODE = 143
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def checkpoint_dir() -> Path:
    return Path(os.environ.get("ADE_CHECKPOINT_DIR") or "checkpoints").expanduser().resolve()


def mark_complete(folder: Path) -> None:
    (folder / COMPLETE_MARKER).write_text("ok\n")


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under root, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT.fullmatch(child.name)
        if match and (child / COMPLETE_MARKER).is_file() and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


class StopFlag:
    """Set by SIGTERM; read by the training loop at step boundaries."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.training = False  # before the loop starts there is nothing to save: exit at once

    def __bool__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def install(self) -> "StopFlag":
        def handler(signum, frame):  # noqa: ARG001 - signal handler signature
            self.set()
            if not self.training:
                raise SystemExit(SIGTERM_EXIT_CODE)

        signal.signal(signal.SIGTERM, handler)
        return self
