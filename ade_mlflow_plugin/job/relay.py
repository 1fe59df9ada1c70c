"""The relay: what the job would have logged to MLflow, kept in its output when the tracking server is out of reach.

The job writes here instead of MLflow when the tracking URI cannot be reached at start, or when metric
logging gives up during the run; `ade-mlflow sync-run` (and the follower when a followed job ends) replays
it into the run (backend/replay.py). Layout, under the job's output data dir (SM_OUTPUT_DATA_DIR: on
SageMaker /opt/ml/output/data, which SageMaker uploads as `<output path>/<job>/output/output.tar.gz`; in
local mode `<job root>/output/data`):

    ade-relay/records.jsonl     one JSON object a line: {"seq": N, "pid": writer, "kind": ..., ...}
                                (seq counts per writer: the launcher and the entry both append)
    ade-relay/files/<seq>-<pid>-<ns>/...   the files of one record (artifacts, the saved model)

Append-only: a record is written (and flushed to disk) only once its files are complete, so a relay cut
short by a crash holds whole records plus at most one torn last line, which readers skip.

Standard library only (the launcher's side of the job may import it before any requirement is installed).
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping

from ade_mlflow_plugin.job import contract

RELAY_DIR = "ade-relay"
RECORDS_FILE = "records.jsonl"
FILES_DIR = "files"
PROBE_TIMEOUT_S = 5.0

# Record kinds (the replay handles each; an unknown kind from a newer job is skipped with a warning).
PARAMS, METRICS, TAGS, DATASET, ARTIFACTS, MODEL, REGISTER, END = (
    "params", "metrics", "tags", "dataset", "artifacts", "model", "register", "end")


def relay_home(env: Mapping[str, str] | None = None) -> Path:
    """The job's output data dir (uploaded with the job's output), or ./ when run outside the contract."""
    env = os.environ if env is None else env
    if env.get(contract.ENV_OUTPUT_DATA_DIR):
        return Path(env[contract.ENV_OUTPUT_DATA_DIR])
    if env.get(contract.ENV_BASE_DIR) or env.get(contract.ENV_JOB_NAME):
        return contract.ContainerPaths.from_env(env).output_data_dir
    return Path.cwd()


def unreachable_reason(tracking_uri: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """Why the job cannot log to `tracking_uri` (None: it can). An http(s) server must answer /health
    within a few seconds; a file or sqlite store inside a real SageMaker container (no SAGEMAKER_BASE_DIR:
    not local mode) would be lost with the container."""
    env = os.environ if env is None else env
    uri = tracking_uri or ""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S) as answer:
                return None if answer.status < 500 else f"{uri} answered HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            return None if exc.code < 500 else f"{uri} answered HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # refused, timed out, DNS: no server there for this job
            return f"{uri} cannot be reached ({type(exc).__name__}: {exc})"
    in_sagemaker = bool(env.get(contract.ENV_JOB_NAME)) and not env.get(contract.ENV_BASE_DIR)
    if in_sagemaker and scheme in ("", "file", "sqlite"):
        return f"the tracking store '{uri or './mlruns'}' is local to the training container"
    return None


class Relay:
    """Appends records (and their files) under `<home>/ade-relay`; safe to share between threads."""

    def __init__(self, home: Path | None = None) -> None:
        self.dir = (home or relay_home()) / RELAY_DIR
        self.records = self.dir / RECORDS_FILE
        self._lock = threading.Lock()
        self._seq: int | None = None  # opened on the first write: a job that never relays leaves no folder

    def _open(self) -> int:
        if self._seq is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._end_torn_line()
            self._seq = max((record["seq"] for record in read_records(self.dir)), default=0)
        return self._seq

    def _end_torn_line(self) -> None:
        """A restart after a crash mid-write: the torn piece gets its own (skipped) line, so it does not
        swallow the first record appended now."""
        if self.records.is_file() and self.records.stat().st_size:
            with open(self.records, "rb+") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")

    def append(self, kind: str, **fields: Any) -> int:
        """One complete line, flushed to disk before returning; the record's sequence number."""
        with self._lock:
            self._seq = self._open() + 1
            line = json.dumps({"seq": self._seq, "pid": os.getpid(), "kind": kind,
                               "time_ms": int(time.time() * 1000), **fields}, sort_keys=True, default=str)
            # One O_APPEND write per record: the launcher and the entry append to the same file from two
            # processes, and a buffered text write could interleave their lines.
            data = (line + "\n").encode("utf-8")
            fd = os.open(self.records, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, data)
                while written < len(data):  # a short write (a signal): the rest follows at once
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
            return self._seq

    def files_dir(self) -> Path:
        """A fresh folder for the files of the next record (filled before the record is appended)."""
        with self._lock:
            folder = self.dir / FILES_DIR / f"{self._open() + 1}-{os.getpid()}-{time.monotonic_ns()}"
        folder.mkdir(parents=True)
        return folder

    def add_files(self, kind: str, source: Path, **fields: Any) -> int:
        """Copy a file or folder into the relay, then record it (the record names the copy)."""
        folder = self.files_dir()
        target = folder / source.name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
        return self.append(kind, files=str(target.relative_to(self.dir)), **fields)

    def metrics(self, items: list[dict[str, Any]]) -> int:
        """Metrics as {key, value, timestamp (ms), step}."""
        return self.append(METRICS, metrics=items)


def read_records(relay_dir: Path) -> Iterator[dict[str, Any]]:
    """The complete records in order; a torn line (a crash mid-write) or a foreign line is skipped."""
    path = Path(relay_dir) / RECORDS_FILE
    if not path.is_file():
        return
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return  # the last line, cut short: not a record
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("seq"), int) and "kind" in record:
                yield record
