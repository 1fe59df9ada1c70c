"""The checkpoint marker: a checkpoint folder counts only once `.ade_complete` is in it, written after the
save. It holds the folder's manifest, JSON {"files": {relative path: {"size", "sha256"}}} ("ok" from jobs
before the manifest). The job writes it (training/checkpoints.py); the client's sync-checkpoints reads it
(backend/checkpoint_sync.py) to see, with no download, whether a copy is whole and which files it has.
Standard library only: both sides import it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MARKER = ".ade_complete"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_of(folder: Path) -> dict[str, dict[str, Any]]:
    """relative path -> {"size", "sha256"} of every file under folder but the marker."""
    return {path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256_of(path)}
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MARKER}


def write(folder: Path) -> None:
    (folder / MARKER).write_text(json.dumps({"files": files_of(folder)}, indent=1, sort_keys=True))


def read(marker_text: str) -> dict[str, dict[str, Any]] | None:
    """The manifest a marker holds; None for an older job's marker ("ok"), which holds none."""
    try:
        data = json.loads(marker_text)
    except ValueError:
        return None
    return data.get("files") if isinstance(data, dict) and isinstance(data.get("files"), dict) else None
