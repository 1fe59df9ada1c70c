"""ModelSyncManager: copy a registered model version into ADE provider storage, safely.

Download (download.py: MLflow's models:/ artifact repository, as mlflow.artifacts.download_artifacts
does, each file hashed as it lands) into a staging dir on the same filesystem, check the files against
the artifact store's listing, write metadata, then rename into place. A file lock
serialises syncs of one root; a copy already present with matching checksums and from the same source
run is not downloaded again; providers.json is reconciled with the registry's aliases and stages and
replaced atomically.
"""
from __future__ import annotations

import logging
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
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from ade_mlflow_plugin.errors import ConfigError, is_missing, mlflow_error
from ade_mlflow_plugin.registry import download
from ade_mlflow_plugin.registry import store as st
from ade_mlflow_plugin.config.registry import ModelRegistryConfig

_log = logging.getLogger(__name__)

#: Legacy stages that serve a model (None/Archived do not).
SERVING_STAGES = ("Production", "Staging")
LOCK_TIMEOUT_S = 3600
_TAGS = {"base_model": "ade.base_model", "dataset_digest": "ade.dataset_digest",
         "git_commit": "ade.git_commit", "job_name": "sagemaker.job_name",
         # the version it was trained from (a models:/ base; null for a plain base)
         "parent_model": "ade.parent_model", "parent_version": "ade.parent_version"}


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
            files = download.download_verified(
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
            if is_missing(exc):  # ``what`` already says what is missing; MLflow's text adds nothing
                raise ConfigError(f"{what}; check the model name and version in the MLflow UI") from exc
            raise mlflow_error("MLflow registry call", exc) from exc


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


def _after(event: threading.Event, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` once ``event`` is set (the caller sets it in a finally, so this always runs)."""
    event.wait()
    return fn(*args)


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


