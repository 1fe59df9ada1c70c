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

from ade_mlflow_plugin.job import contract

COMPLETE_MARKER = ".ade_complete"
SIGTERM_EXIT_CODE = 143


def checkpoint_dir() -> Path:
    return Path(os.environ.get(contract.ENV_CHECKPOINT_DIR) or "checkpoints").expanduser().resolve()


def mark_complete(folder: Path) -> None:
    (folder / COMPLETE_MARKER).write_text("ok\n")


# transformers is imported where used: the launcher side imports this module's constants without it.

def checkpoint_folder(root: Path, step: int) -> Path:
    """Where the Trainer saves the checkpoint of ``step``."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return root / f"{PREFIX_CHECKPOINT_DIR}-{step}"


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and (folder / "trainer_state.json").is_file()


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under root, oldest first."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not root.is_dir():
        return []
    pattern, found = re.compile(rf"{re.escape(PREFIX_CHECKPOINT_DIR)}-(\d+)"), []
    for child in root.iterdir():
        match = pattern.fullmatch(child.name)
        if match and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint: transformers' own pick, unless the job died while saving it
    (transformers knows no completeness); then the newest complete one before it."""
    from transformers.trainer_utils import get_last_checkpoint

    newest = get_last_checkpoint(str(root)) if root.is_dir() else None
    if newest is None or is_complete(Path(newest)):
        return Path(newest) if newest else None
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
