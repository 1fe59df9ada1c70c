"""ADE provider storage on disk (the seed's layout) and the small atomic-file helpers it needs.

    <root>/providers.json                          which version serves under which alias/stage
    <root>/registry/<name>-v<N>/metadata.json      name, version, source run, sha256 of every file, ...
    <root>/registry/<name>-v<N>/performance_metrics.json
    <root>/registry/<name>-v<N>/model_artifacts/... the registered model's artifacts, as MLflow serves them

A version directory only ever appears by an atomic rename of a complete, verified staging directory
(``registry/.staging-*``), so a reader never sees a partial version.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from ade_mlflow_plugin.errors import AdeError, ConfigError, first_line

METADATA = "metadata.json"
METRICS = "performance_metrics.json"
ARTIFACTS = "model_artifacts"
PROVIDERS = "providers.json"
PROVIDERS_SCHEMA = 1
_STAGING_PREFIX = ".staging-"
_TRASH_PREFIX = ".trash-"
_VERSION_DIR = re.compile(r"^(?P<name>.+)-v(?P<version>\d+)$")
_CHUNK = 1 << 20
# Following a growing file wakes rarely and reads big pieces: every wake and read takes the GIL back
# from MLflow's download threads, which are what bounds the download's speed on a busy client.
_FOLLOW_POLL_S = 0.02
_FOLLOW_CHUNK = 16 << 20
#: (size, inode, mtime ns) of a file when it was hashed: a hash is reused only while this still holds.
Stamp = tuple[int, int, int]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_stamp(path: Path | str) -> Stamp:
    st = os.stat(path)
    return (st.st_size, st.st_ino, st.st_mtime_ns)


def checksum_tree(directory: Path, known: dict[str, tuple[str, Stamp]] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """{posix relative path: {"sha256", "size"}} of every file under ``directory``.

    ``known`` holds digests taken while the files downloaded; one is reused only when the file's
    stamp (size, inode, mtime) is unchanged since, else the file is hashed again. Hashing runs in
    threads: hashlib releases the GIL, so large files hash in parallel.
    """
    known = known or {}
    files = sorted(p for p in directory.rglob("*") if p.is_file() or p.is_symlink())
    for path in files:
        if path.is_symlink():
            raise AdeError(f"{path} is a symlink; model artifacts must be plain files, re-log the model")

    def digest(path: Path) -> tuple[str, int]:
        stamp = file_stamp(path)
        hit = known.get(path.relative_to(directory).as_posix())
        return (hit[0], stamp[0]) if hit and hit[1] == stamp else (sha256_file(path), stamp[0])

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(digest, files))
    return {p.relative_to(directory).as_posix(): {"sha256": d, "size": size}
            for p, (d, size) in zip(files, digests)}


def sha256_following(path: str, done: threading.Event) -> tuple[str, Stamp] | None:
    """sha256 of a file taken while a sequential writer is still writing it, or None if that is unsafe.

    Bytes below the file's size are final only for an append-only writer (Linux raises i_size after
    a page is copied in). Any sign of another kind of writer gives None, and the caller hashes the
    finished file: the file shrinking, a hole before its end (a writer at offsets), a different inode
    at the path at the end (a temp file renamed over it), or no file at all. ``done`` is set by the
    caller once the writer has returned.
    """
    fd = _open_when_created(path, done)
    if fd is None:
        return None
    digest, pos, buf = hashlib.sha256(), 0, bytearray(_FOLLOW_CHUNK)
    try:
        while True:
            finished = done.is_set()  # read before the size: after it, the size is final
            end = os.fstat(fd).st_size
            if end < pos or (end > pos and _hole_before(fd, pos, end)):
                return None
            while pos < end:
                got = os.preadv(fd, [memoryview(buf)[:min(_FOLLOW_CHUNK, end - pos)]], pos)
                if got <= 0:
                    return None
                digest.update(memoryview(buf)[:got])
                pos += got
            if finished:
                break
            done.wait(_FOLLOW_POLL_S)
        held, now = os.fstat(fd), os.stat(path)
        if (held.st_ino, held.st_dev) != (now.st_ino, now.st_dev) or now.st_size != pos:
            return None
        return digest.hexdigest(), (now.st_size, now.st_ino, now.st_mtime_ns)
    finally:
        os.close(fd)


def _open_when_created(path: str, done: threading.Event) -> int | None:
    while True:
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            if done.is_set():
                return None
            done.wait(_FOLLOW_POLL_S)


def _hole_before(fd: int, pos: int, end: int) -> bool:
    try:
        return os.lseek(fd, pos, os.SEEK_HOLE) < end
    except (OSError, AttributeError):
        return False  # no SEEK_HOLE here: the caller only follows writers known to append


def check_relative_path(path: str) -> str:
    """Return ``path`` if it stays inside its parent dir; refuse absolute paths and ``..`` parts."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if not path or pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", path):
        raise AdeError(f"artifact path {path!r} would leave the ADE storage root; refusing to sync "
                       "this version (re-log the model without absolute or '..' paths)")
    return pure.as_posix()


def check_model_name(name: str) -> str:
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or name != name.strip():
        raise ConfigError(f"model name {name!r} cannot be a directory name in ADE storage; use a name "
                          "without '/', '\\', leading '.' or surrounding spaces")
    return name


def write_json_atomic(path: Path, data: Any, durable: bool = True) -> None:
    """Write JSON to a temp file in the same directory, fsync (when durable), os.replace over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as exc:
        raise AdeError(f"{path} is not valid JSON ({first_line(exc)}); delete it and sync again") from exc


class AdeStore:
    """One ADE provider storage root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.registry_dir = self.root / "registry"
        self.providers_path = self.root / PROVIDERS
        self.lock_path = self.root / ".sync.lock"

    # -- paths ---------------------------------------------------------------------------------
    def version_dir(self, name: str, version: str | int) -> Path:
        check_model_name(name)
        if not str(version).isdigit():
            raise ConfigError(f"model version {version!r} is not a number; pass e.g. 3")
        path = (self.registry_dir / f"{name}-v{int(version)}").resolve()
        if path.parent != self.registry_dir.resolve():
            raise ConfigError(f"model name {name!r} would leave the ADE storage root; rename the model")
        return path

    def ensure(self) -> None:
        self.registry_dir.mkdir(parents=True, exist_ok=True)

    def new_staging(self) -> Path:
        """A fresh staging dir inside registry/ (same filesystem, so the final rename is atomic)."""
        self.ensure()
        path = self.registry_dir / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
        path.mkdir()
        return path

    def clean_leftovers(self) -> list[Path]:
        """Remove staging/trash dirs of syncs that died (call only while holding the sync lock)."""
        if not self.registry_dir.is_dir():
            return []
        dead = [p for p in self.registry_dir.iterdir()
                if p.name.startswith((_STAGING_PREFIX, _TRASH_PREFIX))]
        for path in dead:
            shutil.rmtree(path, ignore_errors=True)
        return dead

    # -- versions ------------------------------------------------------------------------------
    def read_metadata(self, version_dir: Path) -> dict[str, Any] | None:
        return read_json(version_dir / METADATA)

    def is_intact(self, version_dir: Path) -> bool:
        """True when the version dir holds exactly the files its metadata lists, with their sha256."""
        meta = self.read_metadata(version_dir)
        artifacts = version_dir / ARTIFACTS
        if not meta or not artifacts.is_dir():
            return False
        expected = meta.get("files", {})
        actual = sorted(p.relative_to(artifacts).as_posix() for p in artifacts.rglob("*") if p.is_file())
        if actual != sorted(expected):
            return False
        sizes_ok = all((artifacts / rel).stat().st_size == info["size"] for rel, info in expected.items())
        return sizes_ok and checksum_tree(artifacts) == expected

    def install(self, staging: Path, final: Path) -> None:
        """Move a complete staging dir to ``final`` by rename.

        An older copy at ``final`` is swapped out in one step where the kernel can (renameat2
        RENAME_EXCHANGE), so readers see the old copy or the new one, never none; elsewhere it is
        moved aside first.
        """
        if final.exists():
            if _exchange(staging, final):
                shutil.rmtree(staging, ignore_errors=True)  # now holds the old copy
            else:
                trash = self.registry_dir / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
                os.rename(final, trash)
                os.rename(staging, final)
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(staging, final)
        _fsync_dir(self.registry_dir)

    def versions(self, name: str) -> list[int]:
        """Versions of ``name`` present in storage, ascending."""
        if not self.registry_dir.is_dir():
            return []
        found = []
        for path in self.registry_dir.iterdir():
            match = _VERSION_DIR.match(path.name)
            if match and match["name"] == name and path.is_dir():
                found.append(int(match["version"]))
        return sorted(found)

    def prune(self, name: str, keep: int, protected: set[int]) -> list[int]:
        """Delete all but the newest ``keep`` versions of ``name``; never a ``protected`` one."""
        present = self.versions(name)
        doomed = [v for v in present[:-keep] if v not in protected] if len(present) > keep else []
        for version in doomed:
            trash = self.registry_dir / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
            os.rename(self.version_dir(name, version), trash)  # vanish atomically, then delete
            shutil.rmtree(trash, ignore_errors=True)
        return doomed

    # -- providers.json ------------------------------------------------------------------------
    def read_providers(self) -> dict[str, Any]:
        data = read_json(self.providers_path) or {}
        data.setdefault("schema_version", PROVIDERS_SCHEMA)
        data.setdefault("models", {})
        return data

    def write_providers(self, data: dict[str, Any]) -> None:
        data["updated_at"] = utc_now()
        write_json_atomic(self.providers_path, data)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where that is not available."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    # Make the rename durable: without it a crash right after could lose the new directory entry.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
