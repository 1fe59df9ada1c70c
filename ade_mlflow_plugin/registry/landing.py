"""A run's finished model into its local ``output_dir`` (the ADE Cloud Training API's output_dir).

The run carries its target as the tag ``ade.output_dir`` (config/cloud.py's OUTPUT_DIR_TAG, set when the
job is submitted). Whatever sees the job complete fires the ``ade_job_completed`` hook, which the built-in
``ade-output-dir`` plugin (registry/plugins.py) answers with :func:`land_run`: the follower
(backend/monitor.py), ``ade-mlflow status`` and ``reconcile`` (backend/reconcile.py); ``ade-mlflow sync
RUN_ID`` calls it directly. The output_dir is an ADE storage root: each version goes to
``<output_dir>/registry/<name>-v<N>/{metadata.json, performance_metrics.json, model_artifacts/}`` through
registry/sync.py's ModelSyncManager (download to a staging dir, checksums, atomic rename), so landing
twice downloads nothing, and a reader never sees half a version.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from ade_mlflow_plugin.config.cloud import OUTPUT_DIR_TAG
from ade_mlflow_plugin.config.registry import ModelRegistryConfig
from ade_mlflow_plugin.errors import mlflow_error

#: The versions landed there so far ("name/v1,name/v2"): a later status/reconcile does not check them again.
LANDED_TAG = "ade.output_landed"
#: The output_dir is the user's folder: a later run's model does not remove an earlier one's.
KEEP_ALL = 2**31 - 1


@dataclass(frozen=True)
class Landed:
    """What one landing did: the versions copied (``name/vN`` -> folder) and those already there."""

    output_dir: Path
    landed: dict[str, Path]
    already: list[str]
    downloaded_bytes: int

    def line(self) -> str:
        if not self.landed and not self.already:
            return f"output_dir {self.output_dir}: the run registered no model version to land"
        new = ", ".join(f"{ref} -> {path}" for ref, path in self.landed.items())
        return (f"model {new} ({self.downloaded_bytes} bytes)" if new
                else f"model {', '.join(self.already)} already in {self.output_dir / 'registry'}")


def output_dir_of(run: Any) -> Path | None:
    """The run's local output_dir, or None when it has none."""
    value = run.data.tags.get(OUTPUT_DIR_TAG)
    return Path(value) if value else None


def registered_versions(client: Any, run_id: str) -> list[Any]:
    """The model versions registered from this run (any model name), oldest first."""
    try:
        found = client.search_model_versions(f"run_id = '{run_id}'")
    except MlflowException as exc:
        raise mlflow_error(f"searching the model versions of run {run_id}", exc) from exc
    return sorted(found, key=lambda mv: (mv.name, int(mv.version)))


def land_run(client: Any, run: Any, *, output_dir: Path | None = None, force: bool = False) -> Landed | None:
    """Land the versions registered by ``run`` in its output_dir (``output_dir``, else the run's tag);
    None when the run has none.

    Versions named in the run's ``ade.output_landed`` tag are skipped unless ``force`` (a copy deleted by
    hand comes back with force, verified by checksum, downloading only what is missing or changed).
    """
    root = output_dir or output_dir_of(run)
    if root is None:
        return None
    run_id = run.info.run_id
    done = set(filter(None, run.data.tags.get(LANDED_TAG, "").split(",")))
    manager = _manager(client, root)
    landed: dict[str, Path] = {}
    already, downloaded = [], 0
    for mv in registered_versions(client, run_id):
        ref = f"{mv.name}/v{mv.version}"
        if ref in done and not force:
            already.append(ref)
            continue
        result = manager.sync(mv.name, str(mv.version))
        landed[ref], downloaded = result.path, downloaded + result.downloaded_bytes
        done.add(ref)
        client.set_tag(run_id, LANDED_TAG, ",".join(sorted(done)))  # after each: a failure keeps the rest
    return Landed(root, landed, already, downloaded)


def _manager(client: Any, root: Path) -> Any:
    from ade_mlflow_plugin.registry.sync import ModelSyncManager

    # No plugins: landing a run's model in its own folder is a copy, not a promotion (the built-in
    # sync and third-party hooks act on promotions into ADE storage).
    config = ModelRegistryConfig(root=root, tracking_uri=client.tracking_uri, keep_versions=KEEP_ALL,
                                 load_entry_points=False)
    return ModelSyncManager(config, client=client)
