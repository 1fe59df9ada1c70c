"""What ships is scanned for secrets: project files before their upload, job environment values.

The scanner is the core's (secret_scan.py: a cheap pre-filter, then detect-secrets on the candidate
lines), the one the dataset uses, so a file that would be dropped from training is also refused from shipping. A
project scan costs seconds (detect-secrets is slow), so its findings are cached under the tarball's
content hash, which packaging computes anyway (an unchanged project is scanned once per machine), and
each file's under its own content hash (an edit to one file rescans that file only). The findings are
cached before ``allow_secret_files`` is applied, so changing the allow list needs no rescan.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pathspec

from ade_mlflow_plugin.errors import AdeError, ConfigError
# Environment values are checked by the core scanner (config/cloud.py calls it); the backend's name for it.
from ade_mlflow_plugin.secret_scan import check_environment_values

#: Where scan results are cached (``secret-scans/`` below it); default $XDG_CACHE_HOME/ade-mlflow.
CACHE_ENV = "ADE_CACHE_DIR"
#: Bytes looked at to tell a binary file (a NUL byte) from text; detect-secrets reads text only.
_SNIFF_BYTES = 8192
#: Files are scanned in pieces of about this size (cut at a newline), so a large data file in the
#: project does not have to fit in memory at once.
_CHUNK_BYTES = 8 << 20
#: Files up to this size are read whole to look their findings up by content hash; larger ones stream.
_FILE_CACHE_MAX_BYTES = 64 << 20
#: Findings listed in the refusal; the rest are counted.
_SHOWN = 20


@dataclass(frozen=True)
class Finding:
    """A line of a file that would ship on which the scanner finds a secret (line numbers from 1)."""

    path: str
    line: int


def default_cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ade-mlflow")
    return Path(base) / "secret-scans"


def _is_binary(head: bytes) -> bool:
    return b"\0" in head


def _chunks(handle: BinaryIO) -> Iterator[tuple[int, str]]:
    """(first 0-based row, text) pieces of a text file, each ending at a newline; nothing for binaries."""
    head = handle.read(_SNIFF_BYTES)
    if _is_binary(head):
        return
    row, pending = 0, head
    while True:
        block = handle.read(_CHUNK_BYTES)
        pending += block
        cut = pending.rfind(b"\n") + 1 if block else len(pending)
        if cut == 0 and block:
            continue  # one very long line: keep reading until it ends
        piece, pending = pending[:cut], pending[cut:]
        if piece:
            text = piece.decode("utf-8", errors="replace")
            yield row, text
            row += text.count("\n")
        if not block:
            return


def _scanner() -> Callable[[str, list[str], str], set[int]]:
    """The core's scanner, imported when first needed (detect-secrets loads its plugins at the first scan)."""
    try:
        from ade_mlflow_plugin.secret_scan import secret_rows
    except ImportError as exc:
        raise AdeError(f"the secret scan of what ships needs detect-secrets ({exc.name} is missing): "
                       "pip install 'detect-secrets>=1.5,<1.6'") from exc
    return secret_rows


def scan_stream(handle: BinaryIO, arcname: str) -> list[Finding]:
    """Lines of one file's content that hold a secret, by the core's scanner (the dataset's too)."""
    secret_rows = _scanner()
    found: list[Finding] = []
    for first_row, text in _chunks(handle):
        body = text[:-1] if text.endswith("\n") else text
        lines = body.split("\n")
        found += [Finding(arcname, first_row + row + 1) for row in sorted(secret_rows(body, lines, arcname))]
    return found


def scan_files(files: Iterable[tuple[str, Path]]) -> list[Finding]:
    """Findings over (name as shipped, path on disk) pairs, in the given order."""
    found: list[Finding] = []
    for arcname, source in files:
        with open(source, "rb") as handle:
            found += scan_stream(handle, arcname)
    return found


def scan_tarball(path: Path, names: Collection[str],
                 file_cache: "ScanCache | None" = None) -> tuple[list[Finding], int]:
    """(findings, members scanned) over the members ``names`` of a tar archive: the scan reads exactly
    the bytes that ship, not the disk again (a file edited meanwhile cannot slip through). With
    ``file_cache``, a member whose content was scanned before is not scanned again."""
    found: list[Finding] = []
    scanned = 0
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name in names:
                handle = tar.extractfile(member)
                if handle is not None:
                    findings, fresh = _scan_member(handle, member, file_cache)
                    found += findings
                    scanned += fresh
    return found, scanned


def _scan_member(handle: BinaryIO, member: tarfile.TarInfo, cache: "ScanCache | None") -> tuple[list[Finding], bool]:
    """(findings, whether it was scanned now) of one member, looked up by its content hash first."""
    if cache is None or member.size > _FILE_CACHE_MAX_BYTES:
        return scan_stream(handle, member.name), True
    data = handle.read()
    digest = hashlib.sha256(data).hexdigest()
    known = cache.get(digest)
    if known is not None:  # the same content under any name: the same lines
        return [Finding(member.name, f.line) for f in known], False
    findings = scan_stream(io.BytesIO(data), member.name)
    cache.put(digest, findings)
    return findings, True


class ScanCache:
    """Findings by content hash, one small JSON file each (written atomically: scans may run in parallel)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def _file(self, digest: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{16,128}", digest):
            raise ValueError(f"not a content hash: {digest!r}")
        return self.folder / f"{digest}.json"

    def get(self, digest: str) -> list[Finding] | None:
        try:
            data = json.loads(self._file(digest).read_text(encoding="utf-8"))
            return [Finding(str(path), int(line)) for path, line in data["findings"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or unreadable: scan again

    def put(self, digest: str, findings: list[Finding]) -> None:
        target = self._file(digest)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
            partial.write_text(json.dumps({"findings": [[f.path, f.line] for f in findings]}), encoding="utf-8")
            os.replace(partial, target)
        except OSError:
            pass  # an unwritable cache costs a rescan next time, nothing else


def allowed(findings: list[Finding], allow_secret_files: Sequence[str]) -> list[Finding]:
    """Findings in files the user did not allow (gitignore-style patterns relative to the project)."""
    if not allow_secret_files:
        return findings
    spec = pathspec.GitIgnoreSpec.from_lines(list(allow_secret_files))
    return [f for f in findings if not spec.match_file(f.path)]


def _runs(findings: list[Finding]) -> list[tuple[str, int, int]]:
    """(path, first line, last line) of consecutive flagged lines (a private key block is one run)."""
    runs: list[tuple[str, int, int]] = []
    for f in findings:
        if runs and runs[-1][0] == f.path and runs[-1][2] == f.line - 1:
            runs[-1] = (f.path, runs[-1][1], f.line)
        else:
            runs.append((f.path, f.line, f.line))
    return runs


def refusal(findings: list[Finding]) -> str:
    """The refusal: one line per file:line (consecutive lines as one range), each with the way to allow it."""
    runs = _runs(findings)
    lines = [f"{path}:{first}{'' if last == first else f'-{last}'}: looks like a secret (nothing was uploaded); "
             f"remove it, or allow the file with the backend-config key \"allow_secret_files\": [\"{path}\"]"
             for path, first, last in runs[:_SHOWN]]
    if len(runs) > _SHOWN:
        rest = runs[_SHOWN:]
        lines.append(f"... and {len(rest)} more in {len({r[0] for r in rest})} files")
    return "\n".join(lines)


def check_shipped_files(tarball: Path, names: Collection[str], digest: str, allow_secret_files: Sequence[str] = (),
                        cache: ScanCache | None = None) -> int:
    """Refuse (ConfigError) when a member of ``tarball`` among ``names`` holds a secret the user did not allow.

    ``digest`` is the tarball's sha256: findings are cached under it, and each file's under its own
    content hash. Returns how many files were scanned now (0 when the caches answered).
    """
    cache = cache or ScanCache()
    findings = cache.get(digest)
    scanned = 0
    if findings is None:
        findings, scanned = scan_tarball(tarball, names, ScanCache(cache.folder / "files"))
        cache.put(digest, findings)
    left = allowed(findings, allow_secret_files)
    if left:
        raise ConfigError(refusal(left))
    return scanned
