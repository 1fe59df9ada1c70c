"""ModelSyncManager: copy a registered model version into ADE provider storage, safely.

Download (MLflow's models:/ artifact repository, as mlflow.artifacts.download_artifacts does) into a
staging dir on the same filesystem, check the files against the artifact store's listing, hash them
(while they stream, where that is safe), write metadata, then rename into place. A file lock
serialises syncs of one root; a copy already present with matching checksums and from the same source
run is not downloaded again; providers.json is reconciled with the registry's aliases and stages and
replaced atomically.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import filelock
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.environment_variables import MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

from ade_mlflow_plugin.errors import AdeError, ConfigError
from ade_mlflow_plugin.registry import fetch
from ade_mlflow_plugin.registry import store as st
from ade_mlflow_plugin.registry.config import ModelRegistryConfig

_log = logging.getLogger(__name__)

#: ModelsArtifactRepository adds this file to every models:/ download; it is not in the listing.
MLFLOW_ADDED_FILES = frozenset({"registered_model_meta"})
#: Legacy stages that serve a model (None/Archived do not).
SERVING_STAGES = ("Production", "Staging")
LOCK_TIMEOUT_S = 3600
#: Files at least this large are hashed while they download; smaller ones right after.
FOLLOW_MIN_BYTES = 4 << 20
#: Parallel byte ranges per file on the presigned path (files themselves download in parallel too).
FETCH_WORKERS_PER_FILE = 4
_TAGS = {"base_model": "ade.base_model", "dataset_digest": "ade.dataset_digest",
         "git_commit": "ade.git_commit", "job_name": "sagemaker.job_name"}


@dataclass(frozen=True)
class SyncResult:
    name: str
    version: str
    path: Path
    downloaded_bytes: int
    providers_changed: bool


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS`` -> (name, None, alias); ``NAME/VERSION`` -> (name, version, None)."""
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        if name and alias:
            return name, None, alias
    elif "/" in ref:
        name, version = ref.rsplit("/", 1)
        if name and version.isdigit():
            return name, version, None
    raise ConfigError(f"model reference {ref!r} is not NAME@ALIAS or NAME/VERSION; "
                      "write e.g. ade-coder@production or ade-coder/3")


class ModelSyncManager:
    """Syncs registered model versions into one ADE storage root."""

    def __init__(self, config: ModelRegistryConfig | None = None, *, plugin_manager: Any = None,
                 client: MlflowClient | None = None) -> None:
        self.config = config or ModelRegistryConfig()
        self.store = st.AdeStore(self.config.root)
        self.pm = plugin_manager
        self.client = client or MlflowClient(tracking_uri=self.config.tracking_uri,
                                             registry_uri=self.config.tracking_uri)

    # -- public ---------------------------------------------------------------------------------
    def sync_ref(self, ref: str) -> SyncResult:
        name, version, alias = parse_ref(ref)
        if alias is not None:
            version = self._call(lambda: self.client.get_model_version_by_alias(name, alias),
                                 f"model {name!r} has no alias {alias!r}").version
        return self.sync(name, str(version))

    def sync(self, name: str, version: str) -> SyncResult:
        """Make ``name`` version ``version`` present and verified in storage; update providers.json."""
        version = str(version)
        final = self.store.version_dir(name, version)
        with ThreadPoolExecutor(max_workers=3) as pool:
            # Registry round trips overlap: the models:/ repository resolves its download URI while
            # the version is fetched; the run and the labels are fetched once the file transfers are
            # over (while the last file hashes), so they do not slow MLflow's own requests.
            repo = pool.submit(self._repository, name, version)
            mv = self._call(lambda: self.client.get_model_version(name, version),
                            f"model version {name}/{version} does not exist")
            self._hook("ade_before_sync", name=name, version=version, destination=final)
            self.store.ensure()
            with self._lock():
                fetched = threading.Event()
                run = pool.submit(_after, fetched, self._run, mv.run_id)
                labels = pool.submit(_after, fetched, self._registry_labels, name)
                try:
                    self.store.clean_leftovers()
                    downloaded = self._sync_locked(mv, final, run, repo, fetched)
                finally:
                    fetched.set()
                changed = self._reconcile_locked(name, labels.result())
                self._prune_locked(name)
        self._hook("ade_after_sync", name=name, version=version, path=final, downloaded_bytes=downloaded)
        return SyncResult(name, version, final, downloaded, changed)

    def reconcile_providers(self, name: str) -> bool:
        """Bring providers.json in line with the registry's aliases/stages of ``name``."""
        self.store.ensure()
        with self._lock():
            return self._reconcile_locked(name, self._registry_labels(name))

    # -- sync steps -----------------------------------------------------------------------------
    def _sync_locked(self, mv: ModelVersion, final: Path, run: Future, repo: Future,
                     fetched: threading.Event) -> int:
        current = final.is_dir() and self._same_source(mv, final)
        if current:
            fetched.set()  # no transfer while the copy is checked: the lookups overlap its hashing
        if current and self.store.is_intact(final):
            meta = self.store.read_metadata(final) or {}
            meta.update(_registry_state(mv))
            st.write_json_atomic(final / st.METADATA, meta, durable=False)
            _log.info("%s v%s already present and verified; nothing downloaded", mv.name, mv.version)
            return 0
        staging = self.store.new_staging()
        try:
            files = self._download_verified(
                self._call(repo.result, f"model version {mv.name}/{mv.version} has no artifacts"),
                f"{mv.name}/{mv.version}", staging / st.ARTIFACTS, fetched,
                presigned_fetch=self.config.presigned_fetch)
            self._write_metadata(mv, staging, files, run.result())
            self.store.install(staging, final)  # replaces an old copy in one step
        except BaseException:
            # A kill -9 cannot reach this; the next sync's clean_leftovers() removes such staging dirs.
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return sum(info["size"] for info in files.values())

    def _same_source(self, mv: ModelVersion, final: Path) -> bool:
        """The copy at ``final`` came from this registry version's source run and URI.

        A version number can come to mean other files (a new registry numbers from 1 again, a
        model deleted and re-created), so intact files alone do not make a copy current.
        """
        meta = self.store.read_metadata(final) or {}
        if (meta.get("source_run"), meta.get("source")) == (mv.run_id, mv.source):
            return True
        _log.info("%s v%s in storage came from run %s (%s); the registry's v%s is run %s (%s): "
                  "downloading it again", mv.name, mv.version, meta.get("source_run"),
                  meta.get("source"), mv.version, mv.run_id, mv.source)
        return False

    def _repository(self, name: str, version: str) -> ArtifactRepository:
        # The models:/ artifact repository is what mlflow.artifacts.download_artifacts("models:/NAME/N")
        # runs; one instance serves the listing and the download.
        return get_artifact_repository(f"models:/{name}/{version}", tracking_uri=self.config.tracking_uri,
                                       registry_uri=self.config.tracking_uri)

    @staticmethod
    def _download_verified(repo: ArtifactRepository, what: str, dst: Path,
                           fetched: threading.Event | None = None, *,
                           presigned_fetch: bool = True) -> dict[str, dict[str, Any]]:
        # The recorder keeps the listing MLflow fetches for its own download (no second listing)
        # and hashes each file in the download worker that writes it.
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
        expected = recorder.listing or _remote_listing(repo)
        if not expected:
            raise AdeError(f"no artifacts at models:/{what}; the model version's files are missing "
                           "from the artifact store, re-register it")
        files = st.checksum_tree(dst, recorder.digests)
        _verify_against_listing(files, expected, what)
        return files

    def _write_metadata(self, mv: ModelVersion, version_dir: Path, files: dict[str, Any], run: Any) -> None:
        run_tags = run.data.tags if run else {}
        meta: dict[str, Any] = {
            "name": mv.name,
            "version": str(mv.version),
            "source_run": mv.run_id,
            "source": mv.source,
            "created": _iso(mv.creation_timestamp),
            "synced_at": st.utc_now(),
            "format": _model_format(version_dir / st.ARTIFACTS),
            "tags": dict(mv.tags or {}),
            "files": files,
            "total_bytes": sum(info["size"] for info in files.values()),
        }
        for key, tag in _TAGS.items():
            meta[key] = (mv.tags or {}).get(tag) or run_tags.get(tag)
        if not meta["base_model"] and run:
            meta["base_model"] = run.data.params.get("base_model")
        meta.update(_registry_state(mv))
        # No fsync inside staging: a kill -9 keeps the page cache, and a copy torn by power loss
        # fails is_intact() on the next sync and is downloaded again.
        st.write_json_atomic(version_dir / st.METADATA, meta, durable=False)
        st.write_json_atomic(version_dir / st.METRICS, dict(run.data.metrics) if run else {}, durable=False)

    # -- providers.json -------------------------------------------------------------------------
    def _reconcile_locked(self, name: str, labels: dict[str, dict[str, str]]) -> bool:
        providers = self.store.read_providers()
        before = providers["models"].get(name)
        entry = _reconcile_model(self.store, name, before or {}, labels)
        if entry == (before or {"aliases": {}, "stages": {}}):
            return False
        if entry["aliases"] or entry["stages"]:
            providers["models"][name] = entry
        else:
            providers["models"].pop(name, None)
        self.store.write_providers(providers)
        self._hook("ade_provider_registry_updated", path=self.store.providers_path, providers=providers)
        return True

    def _prune_locked(self, name: str) -> None:
        entry = self.store.read_providers()["models"].get(name, {})
        protected = {int(e["version"]) for kind in entry.values() for e in kind.values()}
        removed = self.store.prune(name, self.config.keep_versions, protected)
        if removed:
            _log.info("removed old versions %s of %s from %s", removed, name, self.store.root)

    def _registry_labels(self, name: str) -> dict[str, dict[str, str]]:
        """{"aliases": {alias: version}, "stages": {stage: newest version in it}} from the registry."""
        model = self._call(lambda: self.client.get_registered_model(name),
                           f"registered model {name!r} does not exist")
        stages: dict[str, str] = {}
        quoted = name.replace("'", "\\'")
        for mv in self.client.search_model_versions(f"name='{quoted}'"):
            if mv.current_stage in SERVING_STAGES:
                best = stages.get(mv.current_stage)
                if best is None or int(mv.version) > int(best):
                    stages[mv.current_stage] = str(mv.version)
        return {"aliases": {a: str(v) for a, v in (model.aliases or {}).items()}, "stages": stages}

    # -- helpers --------------------------------------------------------------------------------
    def _run(self, run_id: str | None) -> Any:
        if not run_id:
            return None
        try:
            return self.client.get_run(run_id)
        except MlflowException:
            return None  # the run was deleted; the version still syncs, without metrics

    def _lock(self) -> filelock.FileLock:
        return filelock.FileLock(str(self.store.lock_path), timeout=LOCK_TIMEOUT_S)

    def _hook(self, hook_name: str, **kwargs: Any) -> None:
        if self.pm is not None:
            getattr(self.pm.hook, hook_name)(**kwargs)

    @staticmethod
    def _call(fn: Any, what: str) -> Any:
        try:
            return fn()
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise ConfigError(f"{what}; check the model name and version in the MLflow UI") from exc
            raise AdeError(f"MLflow registry call failed: {_first_line(exc.message)}; "
                           "check MLFLOW_TRACKING_URI and that the server is up") from exc


def _reconcile_model(store: st.AdeStore, name: str, current: dict[str, Any],
                     labels: dict[str, dict[str, str]]) -> dict[str, Any]:
    """New providers entry for one model.

    A label whose new version is not in storage yet keeps serving its previous version (the new one
    lands on its own sync); labels gone from the registry are dropped.
    """
    present = set(store.versions(name))
    result: dict[str, Any] = {"aliases": {}, "stages": {}}
    for kind in ("aliases", "stages"):
        for label, version in sorted(labels[kind].items()):
            if int(version) in present:
                result[kind][label] = _provider_entry(store, name, version, current.get(kind, {}).get(label))
            elif label in current.get(kind, {}):
                result[kind][label] = current[kind][label]
    return result


def _provider_entry(store: st.AdeStore, name: str, version: str, old: dict[str, Any] | None) -> dict:
    vdir = store.version_dir(name, version)
    meta = store.read_metadata(vdir) or {}
    entry = {"version": str(version), "path": str(vdir), "model_path": str(vdir / st.ARTIFACTS),
             "metadata_path": str(vdir / st.METADATA), "format": meta.get("format", "unknown"),
             "base_model": meta.get("base_model")}
    if old and {k: v for k, v in old.items() if k != "since"} == entry:
        entry["since"] = old.get("since")
    else:
        entry["since"] = st.utc_now()
    return entry


def _registry_state(mv: ModelVersion) -> dict[str, Any]:
    return {"aliases": sorted(mv.aliases or []), "stage": mv.current_stage}


class _DownloadRecorder:
    """Watches MLflow's own download through the repository that fetches the files.

    MLflow's download_artifacts lists the repository and then calls ``_download_file`` per file in
    its thread pool; both are wrapped on this repository instance only. Listed paths are checked
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
        self._mode = _download_mode(inner, presigned_fetch)
        self._repo = inner
        self._list, self._fetch = inner.list_artifacts, inner._download_file
        inner.list_artifacts, inner._download_file = self._list_artifacts, self._download_file

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
            return AdeError(f"downloading {rel} of models:/{what} failed: {_first_line(str(exc))}")
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
            presigned = self._repo._get_presigned_download_url(remote_file_path)
        except Exception as exc:  # noqa: BLE001 - MLflow's own download path follows and raises
            _log.debug("no presigned URL for %s (%s); MLflow downloads it", remote_file_path, exc)
            return None
        if presigned.file_size is None:
            return None

        def renew() -> fetch.PresignedUrl:
            fresh = self._repo._get_presigned_download_url(remote_file_path)
            return fetch.PresignedUrl(fresh.url, dict(fresh.headers or {}))

        digest = fetch.fetch_presigned(fetch.PresignedUrl(presigned.url, dict(presigned.headers or {})),
                                       local_path, presigned.file_size, renew=renew,
                                       piece_bytes=MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE.get(),
                                       workers=FETCH_WORKERS_PER_FILE, cancel=self.cancel)
        return digest, st.file_stamp(local_path)

    def _fetch_then_hash(self, rel: str, remote_file_path: str, local_path: str) -> tuple[str, st.Stamp]:
        """MLflow's writer; the file is hashed while it streams (in-order writers) or right after."""
        follow = self._mode == "stream" and (self.listing.get(rel) or 0) >= FOLLOW_MIN_BYTES
        done = threading.Event()
        with ThreadPoolExecutor(max_workers=1) as follower:  # starts a thread only when following
            followed = follower.submit(st.sha256_following, local_path, done) if follow else None
            try:
                self._counted(self._fetch, remote_file_path, local_path)
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


def _download_mode(repo: ArtifactRepository, presigned_fetch: bool = True) -> str:
    """How files of ``repo`` are fetched and hashed.

    "presigned": mlflow-artifacts:/ on a server that offers presigned downloads (S3 stores): sync
    fetches each file itself from the presigned URL MLflow asks the server for (fetch.py; streamed
    ranges hashed in order, about twice as fast here as MLflow's buffered ranges).
    "stream": HttpArtifactRepository._download_file, which writes the server's stream in order, so
    the file is hashed while it grows. "other": MLflow's writer, the file hashed right after.
    """
    method = type(repo)._download_file
    if method is HttpArtifactRepository._download_file:
        return "stream"
    if method is MlflowArtifactsRepository._download_file:
        try:  # MLflow's own check (one server-info call, cached on the repository for the download)
            multipart = repo._is_multipart_download_enabled()
        except Exception:  # noqa: BLE001 - then MLflow's download reports the server problem itself
            return "other"
        if not multipart:
            return "stream"
        usable = presigned_fetch and hasattr(repo, "_get_presigned_download_url")
        return "presigned" if usable else "other"
    return "other"


def _after(event: threading.Event, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` once ``event`` is set (the caller sets it in a finally, so this always runs)."""
    event.wait()
    return fn(*args)


def _fetching_repo(repo: ArtifactRepository) -> ArtifactRepository:
    """The repository whose download_artifacts does the fetching (models:/ wraps another)."""
    while isinstance(getattr(repo, "repo", None), ArtifactRepository):
        repo = repo.repo
    return repo


def _remote_listing(repo: Any) -> dict[str, int | None]:
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


def _verify_against_listing(files: dict[str, dict[str, Any]], expected: dict[str, int | None],
                            what: str) -> None:
    missing = sorted(set(expected) - set(files))
    extra = sorted(set(files) - set(expected) - MLFLOW_ADDED_FILES)
    wrong = sorted(p for p, size in expected.items()
                   if p in files and size is not None and files[p]["size"] != size)
    if missing or extra or wrong:
        raise AdeError(f"download of {what} does not match the artifact store (missing {missing[:3]}, "
                       f"unexpected {extra[:3]}, wrong size {wrong[:3]}); sync again")


def _model_format(artifacts: Path) -> str:
    """The model's main MLflow flavor (e.g. transformers), 'files' when it is not an MLflow model."""
    mlmodel = artifacts / "MLmodel"
    if not mlmodel.is_file():
        return "files"
    flavors = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("flavors") or {}
    named = [f for f in flavors if f != "python_function"]
    return named[0] if named else ("python_function" if flavors else "files")


def _iso(millis: int | None) -> str | None:
    if millis is None:
        return None
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def _first_line(text: str) -> str:
    return re.split(r"[\r\n]", str(text).strip(), maxsplit=1)[0][:300]
