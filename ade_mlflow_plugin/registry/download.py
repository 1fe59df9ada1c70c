"""Download a model version's files through MLflow, each hashed as it lands, checked against the listing.

MLflow's download_artifacts drives the download (listing, thread pool, directory layout); the
repository's per-file writer is wrapped so every file is hashed in the worker that fetches it:
- presigned (mlflow-artifacts:/ on a server with an S3 store): fetch.py fetches the presigned URL
  MLflow asks the server for, in streamed byte ranges hashed in order as they land;
- stream (the server's proxied stream, written in order): hashed while the file grows;
- anything else: MLflow's writer, the file hashed right after.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow.environment_variables import MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repo import ArtifactRepository

from ade_mlflow_plugin.adapters import mlflow_artifacts
from ade_mlflow_plugin.errors import AdeError, first_line
from ade_mlflow_plugin.registry import fetch
from ade_mlflow_plugin.registry import store as st

_log = logging.getLogger(__name__)

#: ModelsArtifactRepository adds this file to every models:/ download; it is not in the listing.
MLFLOW_ADDED_FILES = frozenset({"registered_model_meta"})
#: Files at least this large are hashed while MLflow's in-order stream writes them; smaller ones after.
FOLLOW_MIN_BYTES = 4 << 20
#: Parallel byte ranges per file on the presigned path when the repository does not say; MLflow's
#: own range download uses its repository's max_workers (2 per CPU, at most 20), and so does sync.
FETCH_WORKERS_PER_FILE = 4


def download_verified(repo: ArtifactRepository, what: str, dst: Path, fetched: threading.Event | None = None,
                      *, presigned_fetch: bool = True) -> dict[str, dict[str, Any]]:
    """Download every file of ``repo`` into ``dst`` (made here); return {path: {"sha256", "size"}}.

    The recorder keeps the listing MLflow fetches for its own download (no second listing) and
    hashes each file in the worker that fetches it. ``fetched`` is set once no transfer runs any
    more. A file missing, unexpected or of the wrong size against the listing raises AdeError.
    """
    dst.mkdir(parents=True)
    recorder = _DownloadRecorder(repo, dst, fetched or threading.Event(), presigned_fetch)
    try:
        repo.download_artifacts("", str(dst))
    except BaseException as exc:
        recorder.cancel.set()  # transfers still running (Ctrl-C) stop within a megabyte
        if isinstance(exc, MlflowException) and recorder.failure is not None:
            raise recorder.failure_error(what) from None  # one line, not MLflow's per-file report
        raise
    finally:
        recorder.fetched.set()
    expected = recorder.listing or remote_listing(repo)
    if not expected:
        raise AdeError(f"no artifacts at models:/{what}; the model version's files are missing "
                       "from the artifact store, re-register it")
    files = st.checksum_tree(dst, recorder.digests)
    verify_against_listing(files, expected, what)
    return files


class _DownloadRecorder:
    """Watches MLflow's own download through the repository that fetches the files.

    MLflow's download_artifacts lists the repository and then calls its per-file writer in its
    thread pool; both are wrapped on this repository instance only (the writer through
    adapters.mlflow_artifacts; without it every file is hashed after the download). Listed paths are checked
    before anything is fetched; each file is hashed in the worker that fetches it, so hashing
    overlaps the rest of the download: while it lands (presigned ranges fetched by fetch.py, or
    MLflow's in-order stream), else right after MLflow's writer returns.
    """

    def __init__(self, repo: ArtifactRepository, dst: Path, fetched: threading.Event,
                 presigned_fetch: bool = True) -> None:
        self.dst = dst
        #: Set when no transfer is running any more (a hint for other work; the caller sets it too).
        self.fetched = fetched
        self._active = 0
        self.listing: dict[str, int | None] = {}
        self.digests: dict[str, tuple[str, st.Stamp]] = {}
        #: Set on the first failure (or by the caller): the other files' transfers stop.
        self.cancel = threading.Event()
        #: (relative path, exception) of the first file that failed.
        self.failure: tuple[str, BaseException] | None = None
        self._guard = threading.Lock()
        inner = _fetching_repo(repo)
        self._mode = download_mode(inner, presigned_fetch)
        self._repo = inner
        self._list = inner.list_artifacts
        inner.list_artifacts = self._list_artifacts
        self._fetch: mlflow_artifacts.Writer | None = None
        mlflow_artifacts.wrap_file_writer(inner, self._writer)

    def _writer(self, original: mlflow_artifacts.Writer) -> mlflow_artifacts.Writer:
        self._fetch = original
        return self._download_file

    def _list_artifacts(self, path: str | None = None) -> list[Any]:
        infos = self._list(path)
        for info in infos:
            rel = st.check_relative_path(info.path)
            if not info.is_dir and rel not in (".", path):
                with self._guard:
                    self.listing[rel] = info.file_size
        return infos

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        rel = os.path.relpath(local_path, self.dst).replace(os.sep, "/")
        if self.cancel.is_set():
            raise fetch.Cancelled("download cancelled")
        try:
            result = None
            if self._mode == "presigned":
                result = self._counted(self._fetch_presigned, remote_file_path, local_path)
            if result is None:
                result = self._fetch_then_hash(rel, remote_file_path, local_path)
        except BaseException as exc:
            with self._guard:
                if self.failure is None and not isinstance(exc, fetch.Cancelled):
                    self.failure = (rel, exc)
            self.cancel.set()
            raise
        with self._guard:
            self.digests[rel] = result

    def failure_error(self, what: str) -> AdeError:
        """The first failed file's error as one line (never a URL: presigned URLs carry credentials)."""
        rel, exc = self.failure  # type: ignore[misc]
        if isinstance(exc, AdeError):
            return AdeError(f"downloading {rel} of models:/{what} failed: {first_line(exc)}")
        status = getattr(getattr(exc, "response", None), "status_code", None)
        reason = f"HTTP {status}" if status else type(exc).__name__
        return AdeError(f"downloading {rel} of models:/{what} failed ({reason}); check the artifact store "
                        "and the MLflow server, then run the sync again")

    def _fetch_presigned(self, remote_file_path: str, local_path: str) -> tuple[str, st.Stamp] | None:
        """Our own ranged download of the server's presigned URL, hashed as it lands.

        None (MLflow's writer then fetches the file and reports any server problem itself) when
        the server gives no presigned URL or size for this file.
        """
        try:
            presigned = mlflow_artifacts.presigned_download(self._repo, remote_file_path)
        except Exception as exc:  # noqa: BLE001 - MLflow's own download path follows and raises
            _log.debug("no presigned URL for %s (%s); MLflow downloads it", remote_file_path, first_line(exc))
            return None
        if presigned is None or presigned.file_size is None:
            return None

        def renew() -> fetch.PresignedUrl:
            fresh = mlflow_artifacts.presigned_download(self._repo, remote_file_path)
            if fresh is None:
                raise fetch.FetchError(f"MLflow gave no new presigned URL for {remote_file_path}")
            return fetch.PresignedUrl(fresh.url, fresh.headers)

        digest = fetch.fetch_presigned(fetch.PresignedUrl(presigned.url, presigned.headers),
                                       local_path, presigned.file_size, renew=renew,
                                       piece_bytes=MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE.get(),
                                       workers=getattr(self._repo, "max_workers", FETCH_WORKERS_PER_FILE),
                                       cancel=self.cancel)
        return digest, st.file_stamp(local_path)

    def _fetch_then_hash(self, rel: str, remote_file_path: str, local_path: str) -> tuple[str, st.Stamp]:
        """MLflow's writer; the file is hashed while it streams (in-order writers) or right after."""
        follow = self._mode == "stream" and (self.listing.get(rel) or 0) >= FOLLOW_MIN_BYTES
        done = threading.Event()
        with ThreadPoolExecutor(max_workers=1) as follower:  # starts a thread only when following
            followed = follower.submit(st.sha256_following, local_path, done) if follow else None
            try:
                self._counted(self._fetch, remote_file_path, local_path)  # type: ignore[arg-type]
            finally:
                done.set()
        result = followed.result() if followed else None
        if result is None:
            stamp = st.file_stamp(local_path)  # before hashing: a later change makes the stamp stale
            result = (st.sha256_file(Path(local_path)), stamp)
        return result

    def _counted(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` counted as a running transfer (``fetched`` is set when none is left)."""
        with self._guard:
            self._active += 1
        try:
            return fn(*args)
        finally:
            with self._guard:
                self._active -= 1
                if not self._active:
                    self.fetched.set()


def download_mode(repo: ArtifactRepository, presigned_fetch: bool = True) -> str:
    """How files of ``repo`` are fetched and hashed.

    "presigned": mlflow-artifacts:/ on a server that offers presigned downloads (S3 stores): sync
    fetches each file itself from the presigned URL MLflow asks the server for (fetch.py; streamed
    ranges hashed in order, about twice as fast here as MLflow's buffered ranges).
    "stream": MLflow's HTTP writer, which writes the server's stream in order, so the file is hashed
    while it grows. "other": MLflow's writer, the file hashed right after.
    """
    kind = mlflow_artifacts.writer_kind(repo)
    if kind != "multipart":
        return kind
    try:  # MLflow's own check (one server-info call, cached on the repository for the download)
        multipart = mlflow_artifacts.multipart_download_enabled(repo)
    except Exception:  # noqa: BLE001 - then MLflow's download reports the server problem itself
        return "other"
    if not multipart:
        return "stream"
    return "presigned" if presigned_fetch and mlflow_artifacts.can_presign(repo) else "other"


def _fetching_repo(repo: ArtifactRepository) -> ArtifactRepository:
    """The repository whose download_artifacts does the fetching (models:/ wraps another)."""
    while isinstance(getattr(repo, "repo", None), ArtifactRepository):
        repo = repo.repo
    return repo


def remote_listing(repo: Any) -> dict[str, int | None]:
    """{relative path: size} of every file in an artifact repository, paths checked to stay inside."""
    found: dict[str, int | None] = {}
    pending: list[str | None] = [None]
    while pending:
        base = pending.pop()
        for info in repo.list_artifacts(base):
            rel = st.check_relative_path(info.path)
            if info.is_dir:
                pending.append(rel)
            else:
                found[rel] = info.file_size
    return found


def verify_against_listing(files: dict[str, dict[str, Any]], expected: dict[str, int | None],
                           what: str) -> None:
    missing = sorted(set(expected) - set(files))
    extra = sorted(set(files) - set(expected) - MLFLOW_ADDED_FILES)
    wrong = sorted(p for p, size in expected.items()
                   if p in files and size is not None and files[p]["size"] != size)
    if missing or extra or wrong:
        raise AdeError(f"download of {what} does not match the artifact store (missing {missing[:3]}, "
                       f"unexpected {extra[:3]}, wrong size {wrong[:3]}); sync again")
