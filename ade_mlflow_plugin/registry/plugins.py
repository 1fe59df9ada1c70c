"""The plugin manager: hookspecs + the built-in local-storage sync + plugins from entry points.

Third-party plugins declare, in their package metadata::

    [options.entry_points]
    ade_mlflow_plugin =
        my_plugin = my_package.ade_plugin

and implement hooks from registry/hookspecs.py with ``@ade_mlflow_plugin.hookimpl``.
"""
from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

import pluggy

from ade_mlflow_plugin import hookimpl
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.registry import hookspecs
from ade_mlflow_plugin.registry.config import ModelRegistryConfig

_log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
BUILTIN_SYNC_NAME = "ade-local-storage"


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


def get_plugin_manager(config: ModelRegistryConfig | None = None, *,
                       builtin_sync: bool = True) -> pluggy.PluginManager:
    """A plugin manager with every ``ade_`` hook, the built-in sync plugin and installed plugins.

    Raises ConfigError when a plugin fails to load or implements a hook that does not exist
    (a misspelled ``ade_`` name would otherwise never be called).
    """
    config = config or ModelRegistryConfig()
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    if builtin_sync:
        builtin = LocalStorageSyncPlugin(config)
        builtin.pm = pm
        pm.register(builtin, name=BUILTIN_SYNC_NAME)
    if config.load_entry_points:
        _load_entry_points(pm)
    check_plugins(pm)
    return pm


def register_plugin(pm: pluggy.PluginManager, plugin: object, name: str | None = None) -> None:
    """Register ``plugin`` and validate its hook names at once."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {name or plugin!r} is invalid: {exc}; fix its hook signature") from exc
    check_plugins(pm)


def check_plugins(pm: pluggy.PluginManager) -> None:
    """pluggy's check_pending(), turned into a one-line ConfigError naming the plugin and the fix."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        known = ", ".join(hook_names())
        raise ConfigError(f"plugin {name!r}: {exc}; rename it to one of: {known}") from exc


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # any import error of a third-party plugin
            raise ConfigError(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: "
                              f"{type(exc).__name__}: {exc}; fix or uninstall that plugin") from exc
        try:
            pm.register(plugin, name=ep.name)
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"plugin entry point {ep.name!r} is invalid: {exc}; "
                              "fix its hook signature") from exc
        _log.debug("loaded ade plugin %s from %s", ep.name, ep.value)


def hook_names() -> list[str]:
    """Names of every ``ade_`` hook specification."""
    return sorted(n for n in dir(hookspecs) if n.startswith("ade_"))


__all__ = ["ENTRY_POINT_GROUP", "LocalStorageSyncPlugin", "get_plugin_manager", "register_plugin",
           "check_plugins", "hook_names"]
