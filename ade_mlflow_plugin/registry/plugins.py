"""The registry's built-in plugins: the sync to ADE provider storage, and the model landing in a job's output_dir.

The plugin manager, the hook specifications and ``hookimpl`` live in the core (hooks.py); it finds this
built-in by its path in ``hooks.BUILTIN_PLUGINS`` (``builtin_sync_plugin``), so the core never imports the
registry. The landing plugin is how the backend's "job completed" reaches the registry: the backend fires
``ade_job_completed`` and imports nothing from here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy

from ade_mlflow_plugin.hooks import hookimpl
from ade_mlflow_plugin.config.registry import ModelRegistryConfig


class LocalStorageSyncPlugin:
    """Built-in plugin: keeps ADE provider storage in step with promotions."""

    def __init__(self, config: ModelRegistryConfig) -> None:
        self.config = config
        self.pm: pluggy.PluginManager | None = None  # set on registration, for the sync's own hooks

    def _manager(self) -> Any:
        from ade_mlflow_plugin.registry.sync import ModelSyncManager

        return ModelSyncManager(self.config, plugin_manager=self.pm)

    @hookimpl
    def ade_version_promoted(self, name: str, version: str, alias: str | None, stage: str | None,
                             previous_version: str | None) -> None:
        from ade_mlflow_plugin.registry.sync import SERVING_STAGES

        if alias is None and stage not in SERVING_STAGES:
            self._manager().reconcile_providers(name)  # Archived/None: stop serving, nothing to fetch
        else:
            self._manager().sync(name, version)

    @hookimpl
    def ade_alias_removed(self, name: str, alias: str, version: str | None) -> None:
        self._manager().reconcile_providers(name)


class OutputDirLandingPlugin:
    """Built-in plugin: a completed job's registered model versions into its run's local output_dir
    (registry/landing.py: once each, verified by checksum)."""

    @hookimpl
    def ade_job_completed(self, run_id: str, job_name: str, tracking_uri: str, output_dir: Path | None) -> str | None:
        if output_dir is None:
            return None
        from mlflow import MlflowClient

        from ade_mlflow_plugin.registry.landing import land_run

        client = MlflowClient(tracking_uri=tracking_uri)
        landed = land_run(client, client.get_run(run_id), output_dir=Path(output_dir))
        # Versions landed by an earlier look at this job say nothing new: silence then.
        return None if landed is None or (landed.already and not landed.landed) else landed.line()


def builtin_sync_plugin(config: ModelRegistryConfig | None, pm: pluggy.PluginManager) -> LocalStorageSyncPlugin:
    """The factory hooks.get_plugin_manager() calls for ``ade-local-storage``."""
    plugin = LocalStorageSyncPlugin(config or ModelRegistryConfig())
    plugin.pm = pm
    return plugin


def builtin_landing_plugin(config: ModelRegistryConfig | None, pm: pluggy.PluginManager) -> OutputDirLandingPlugin:
    """The factory hooks.get_plugin_manager() calls for ``ade-output-dir`` (landing needs no registry config:
    the output_dir is the run's own)."""
    return OutputDirLandingPlugin()


__all__ = ["LocalStorageSyncPlugin", "OutputDirLandingPlugin", "builtin_sync_plugin", "builtin_landing_plugin"]
