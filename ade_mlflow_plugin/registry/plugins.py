"""The built-in local-storage sync plugin.

The plugin manager, the hook specifications and ``hookimpl`` live in the core (hooks.py); it finds this
built-in by its path in ``hooks.BUILTIN_PLUGINS`` (``builtin_sync_plugin``), so the core never imports the
registry.
"""
from __future__ import annotations

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


def builtin_sync_plugin(config: ModelRegistryConfig | None, pm: pluggy.PluginManager) -> LocalStorageSyncPlugin:
    """The factory hooks.get_plugin_manager() calls for ``ade-local-storage``."""
    plugin = LocalStorageSyncPlugin(config or ModelRegistryConfig())
    plugin.pm = pm
    return plugin


__all__ = ["LocalStorageSyncPlugin", "builtin_sync_plugin"]
