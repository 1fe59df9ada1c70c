"""Checkpoints -> local storage: `ade-mlflow sync-checkpoints RUN_ID|JOB --root DIR [--follow]`, and the
follower's observer when the backend config sets `sync_checkpoints` (issue 18 item 3).

A job's checkpoints live at its CheckpointConfig.S3Uri (s3://, or file:// in local mode). Each complete one
(its `.ade_complete` marker holds the manifest: size and sha256 per file, written by the job) is copied to
DIR/checkpoint-<step>/:
- atomically: a new checkpoint is fetched into DIR/.staging-*, checked against the manifest and renamed
  into place; into an existing folder, each changed file is replaced whole (rename), the marker last;
- checksummed: DIR/checkpoint-<step>/SHA256SUMS (`sha256sum -c SHA256SUMS` checks it);
- with 0 bytes for what is already there (same size and the checksum SHA256SUMS recorded, or computed);
- removing nothing: checkpoints the job has rotated out, and files of the user's, stay.
A checkpoint still uploading (files missing or short) is left for the next pass.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import click

from ade_mlflow_plugin.job import contract, manifest

COMPLETE_MARKER = manifest.MARKER  # the job writes it (training/checkpoints.py), with its manifest
SUMS_FILE = "SHA256SUMS"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_RUNNING = ("InProgress", "Stopping")


@dataclass
class Remote:
    """One complete checkpoint at the location: its files (relative path -> size) and manifest."""

    name: str
    sizes: dict[str, int]
    manifest: dict[str, dict[str, Any]] | None  # None: a marker of an older job, sizes only

    def whole(self) -> bool:
        """Every file the manifest names is there at its full size (uploads land in any order)."""
        if self.manifest is None:
            return True
        return all(self.sizes.get(rel) == entry.get("size") for rel, entry in self.manifest.items())


@dataclass
class Report:
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    bytes: int = 0

    def line(self, dest: Path) -> str:
        return (f"checkpoints in {dest}: {len(self.copied)} copied ({_size(self.bytes)}), "
                f"{len(self.unchanged)} already there" + (f", {len(self.pending)} still uploading"
                                                           if self.pending else ""))


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count} B"


# ---------------------------------------------------------------- where the checkpoints are
class LocalSource:
    """A file:// location (local mode) or plain folder."""

    def __init__(self, uri: str) -> None:
        # Local mode's location is pathlib's as_uri(): "a b" is "a%20b" there.
        self.root = contract.local_path(uri)

    def checkpoints(self) -> Iterator[Remote]:
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            marker = folder / COMPLETE_MARKER
            if _CHECKPOINT.fullmatch(folder.name) and marker.is_file():
                sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
                yield Remote(folder.name, sizes, manifest.read(marker.read_text()))

    def fetch(self, name: str, rel: str, target: Path) -> None:
        shutil.copyfile(self.root / name / rel, target)


class S3Source:
    """An s3:// location (SageMaker's CheckpointConfig.S3Uri)."""

    def __init__(self, uri: str, s3: Any) -> None:
        self.bucket, _, prefix = uri[5:].partition("/")
        self.prefix = prefix.strip("/")
        self.s3 = s3

    def _key(self, name: str, rel: str) -> str:
        return "/".join(p for p in (self.prefix, name, rel) if p)

    def checkpoints(self) -> Iterator[Remote]:
        found: dict[str, dict[str, int]] = {}
        start = f"{self.prefix}/" if self.prefix else ""
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            for item in page.get("Contents", []):
                name, _, rel = item["Key"][len(start):].partition("/")
                if _CHECKPOINT.fullmatch(name) and rel and not rel.endswith("/"):
                    found.setdefault(name, {})[rel] = item["Size"]
        for name, sizes in sorted(found.items()):
            if COMPLETE_MARKER in sizes:
                body = self.s3.get_object(Bucket=self.bucket, Key=self._key(name, COMPLETE_MARKER))["Body"].read()
                yield Remote(name, sizes, manifest.read(body.decode("utf-8", "replace")))

    def fetch(self, name: str, rel: str, target: Path) -> None:
        self.s3.download_file(self.bucket, self._key(name, rel), str(target))


def open_source(uri: str, clients: Any = None) -> LocalSource | S3Source:
    if uri.startswith("s3://"):
        from ade_mlflow_plugin.backend.aws import AwsClients

        return S3Source(uri, (clients or AwsClients()).s3)
    return LocalSource(uri)


# ---------------------------------------------------------------- copying
def read_sums(folder: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    path = folder / SUMS_FILE
    if path.is_file():
        for line in path.read_text().splitlines():
            digest, _, rel = line.partition("  ")
            if rel:
                sums[rel] = digest
    return sums


def _write_sums(folder: Path, sums: dict[str, str]) -> None:
    tmp = folder / f".{SUMS_FILE}.tmp"
    tmp.write_text("".join(f"{digest}  {rel}\n" for rel, digest in sorted(sums.items())))
    os.replace(tmp, folder / SUMS_FILE)


def sync_once(source: LocalSource | S3Source, dest: Path) -> Report:
    """One pass: every complete checkpoint at the source into dest (see the module's docstring)."""
    dest.mkdir(parents=True, exist_ok=True)
    report = Report()
    for remote in source.checkpoints():
        if not remote.whole():
            report.pending.append(remote.name)
            continue
        copied = _sync_checkpoint(source, remote, dest)
        if copied is None:
            report.pending.append(remote.name)
        elif copied:
            report.copied.append(remote.name)
            report.bytes += copied
        else:
            report.unchanged.append(remote.name)
    return report


def _expected(remote: Remote, rel: str) -> str | None:
    return (remote.manifest or {}).get(rel, {}).get("sha256")


def _have(target: Path, rel: str, size: int, remote: Remote, sums: dict[str, str]) -> bool:
    """Whether target already holds rel as the location has it: same size, and the checksum SHA256SUMS
    recorded when it was copied (computed when there is none); the marker by the manifest it holds."""
    path = target / rel
    if not path.is_file() or path.stat().st_size != size:
        return False
    if rel == COMPLETE_MARKER:
        return remote.manifest is None or manifest.read(path.read_text()) == remote.manifest
    expected = _expected(remote, rel)
    if expected is None:
        return True
    if rel in sums:
        return sums[rel] == expected
    return manifest.sha256_of(path) == expected


def _sync_checkpoint(source: LocalSource | S3Source, remote: Remote, dest: Path) -> int | None:
    """Bytes copied (0: all there); None when the files fetched do not match the manifest (mid-upload)."""
    target = dest / remote.name
    sums = read_sums(target)
    files = {rel: size for rel, size in remote.sizes.items() if rel != SUMS_FILE}
    todo = [rel for rel, size in files.items() if not _have(target, rel, size, remote, sums)]
    if not todo:
        return 0
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{remote.name}-", dir=dest))
    try:
        fetched = _fetch(source, remote, todo, staging)
        if fetched is None:
            return None
        if target.exists():
            _replace_into(target, staging, todo, fetched, sums)
        else:
            _write_sums(staging, fetched)
            os.rename(staging, target)  # the whole checkpoint appears at once
        return sum(files[rel] for rel in todo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(source: LocalSource | S3Source, remote: Remote, todo: list[str], staging: Path) -> dict[str, str] | None:
    """Fetch todo into staging; rel -> sha256, or None when one does not match the manifest."""
    digests = {}
    for rel in todo:
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        source.fetch(remote.name, rel, path)
        digests[rel] = manifest.sha256_of(path)
        expected = _expected(remote, rel)
        if expected is not None and digests[rel] != expected:
            return None
    return digests


def _replace_into(target: Path, staging: Path, todo: list[str], fetched: dict[str, str], sums: dict[str, str]) -> None:
    """Each fetched file replaces its old copy whole, the marker last; nothing else in target is touched."""
    for rel in sorted(todo, key=lambda r: r == COMPLETE_MARKER):
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, target / rel)
    for rel in list(sums):
        if not (target / rel).is_file():
            sums.pop(rel)
    _write_sums(target, {**sums, **fetched})


# ---------------------------------------------------------------- following a job
def follow_job(job: Any, source: LocalSource | S3Source, dest: Path, console: TextIO, poll_s: float,
           sleep: Callable[[float], None] = time.sleep) -> Report:
    """Sync until the job ends, then once more (its last checkpoints land at the end)."""
    while True:
        status = job.describe()["TrainingJobStatus"]
        report = sync_once(source, dest)
        for name in report.copied:
            console.write(f"{name} -> {dest / name}\n")
        if status not in _RUNNING:
            return report
        sleep(poll_s)


@dataclass
class CheckpointSync:
    """The follower's observer: each poll copies what is new (backend config `sync_checkpoints`)."""

    dest: Path
    console: TextIO
    clients: Any = None
    _source: Any = None

    def _pass(self, description: dict[str, Any]) -> Report | None:
        uri = (description.get("CheckpointConfig") or {}).get("S3Uri")
        if not uri:
            return None
        if self._source is None:
            self._source = open_source(uri, self.clients)
        report = sync_once(self._source, self.dest)
        for name in report.copied:
            self.console.write(f"{description.get('TrainingJobName', 'job')}: {name} -> {self.dest / name}\n")
        return report

    def on_poll(self, description: dict[str, Any]) -> None:
        self._pass(description)

    def on_end(self, description: dict[str, Any]) -> None:
        report = self._pass(description)
        if report is not None:
            self.console.write(report.line(self.dest) + "\n")


def checkpoint_sync_observer(config: Any, console: TextIO, clients: Any = None) -> list[Any]:
    """[the guarded CheckpointSync] when the config sets sync_checkpoints, else []."""
    if not getattr(config, "sync_checkpoints", None):
        return []
    from ade_mlflow_plugin.backend.submitted_run import Guarded

    sync = CheckpointSync(Path(config.sync_checkpoints).expanduser(), console, clients)
    return [Guarded(sync, console, "checkpoint sync")]


# ---------------------------------------------------------------- the verb
def locate(ref: str, region: str | None, job_root: Path | None) -> tuple[Any, str]:
    """(the job, its checkpoint location) for a run id or a job name, local or SageMaker."""
    from ade_mlflow_plugin.backend.commands import resolve_target
    from ade_mlflow_plugin.backend.reconcile import find_local_root, local_root, open_job
    from ade_mlflow_plugin.errors import ConfigError

    root = None if re.fullmatch(r"[0-9a-f]{32}", ref) else find_local_root(ref, job_root)
    if root is not None:
        job = open_job("local", ref, region, root)
    else:
        target = resolve_target(ref, region)
        if target.mode == "local":
            root = local_root(target.run.data.tags if target.run else {}, target.job_name, job_root)
        job = open_job(target.mode, target.job_name, target.region, root)
    description = job.describe()
    uri = (description.get("CheckpointConfig") or {}).get("S3Uri")
    if not uri:
        raise ConfigError(f"job '{description.get('TrainingJobName', ref)}' keeps no checkpoints (its request "
                          "has no CheckpointConfig)")
    return job, uri


@click.command("sync-checkpoints")
@click.argument("ref", metavar="RUN_ID|JOB")
@click.option("--root", "dest", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Local folder the checkpoints are copied into (one checkpoint-<step>/ each).")
@click.option("--follow", is_flag=True, help="Go on copying new checkpoints until the job ends.")
@click.option("--region", default=None, help="AWS region of a SageMaker job (default: the run's, or AWS's).")
@click.option("--job-root", type=click.Path(path_type=Path), default=None,
              help="Local mode: the folder jobs run in (default: ./.ade).")
@click.option("--poll-interval", default=15.0, show_default=True, type=click.FloatRange(0.1, 600),
              help="Seconds between passes with --follow.")
def sync_checkpoints_command(ref: str, dest: Path, follow: bool, region: str | None, job_root: Path | None,
                             poll_interval: float) -> None:
    """Copy the checkpoints a job keeps into --root: atomic, with SHA256SUMS, nothing fetched twice."""
    from ade_mlflow_plugin.errors import ConfigError

    job, uri = locate(ref, region, job_root)
    source = open_source(uri)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--root '{dest}' cannot be created ({exc.strerror}): pass a folder you can "
                          "write to") from None
    run = follow_job if follow else (lambda _job, src, where, *_: sync_once(src, where))
    if isinstance(source, S3Source):
        from ade_mlflow_plugin.backend.aws import aws_call

        run = aws_call(f"Copying checkpoints from {uri}", permission="s3:GetObject")(run)
    report = run(job, source, dest, sys.stdout, poll_interval)
    click.echo(report.line(dest))
