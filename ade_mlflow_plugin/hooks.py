"""The ``ade_`` hooks: their specifications, the plugin manager and the ``hookimpl`` marker (core).

Both sides use this one module: the client fires ``ade_cost_alert`` while it follows a job and
``ade_job_completed`` when it sees a job complete (backend/monitor.py, backend/reconcile.py); the registry
fires the promotion and sync hooks. A hook is also how one wing acts on another's event without importing
it: the backend fires ``ade_job_completed``, the registry's built-in ``ade-output-dir`` plugin lands the
model. Plugins implement hooks with
``ade_mlflow_plugin.hookimpl`` and are found through the entry-point group ``ade_mlflow_plugin``
(pluggy's public ``load_setuptools_entrypoints``). Every hook is typed, documented here and in
docs/hooks.md; a test fails when one is not. Hooks are called with keyword arguments only (pluggy's rule).

Built-in plugins belong to the wings (the sync to ADE provider storage is the registry's), and the core
imports no wing: :data:`BUILTIN_PLUGINS` names each built-in's factory by ``module:attribute``, imported
only when a plugin manager is made with it. errors.py is imported only to raise, so a plugin module's
``from ade_mlflow_plugin import hookimpl`` costs pluggy alone.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import pluggy

PROJECT_NAME = "ade_mlflow_plugin"
ENTRY_POINT_GROUP = PROJECT_NAME
BUILTIN_SYNC_NAME = "ade-local-storage"
BUILTIN_LANDING_NAME = "ade-output-dir"
#: name -> "module:factory"; factory(config, plugin_manager) returns the plugin object.
BUILTIN_PLUGINS = {BUILTIN_SYNC_NAME: "ade_mlflow_plugin.registry.plugins:builtin_sync_plugin",
                   BUILTIN_LANDING_NAME: "ade_mlflow_plugin.registry.plugins:builtin_landing_plugin"}

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
_log = logging.getLogger(__name__)


# ---------------------------------------------------------------- hook specifications
@hookspec
def ade_version_registered(name: str, version: str, run_id: str | None, tags: dict[str, str]) -> None:
    """A new version of registered model ``name`` exists in the MLflow Model Registry.

    Fired by the webhook receiver (``model_version.created``) and by ``ade-mlflow watch`` when it
    sees a version for the first time. ``run_id`` is None when the registry does not say.
    """


@hookspec
def ade_version_promoted(
    name: str,
    version: str,
    alias: str | None,
    stage: str | None,
    previous_version: str | None,
) -> None:
    """Version ``version`` of ``name`` now holds ``alias`` (MLflow alias) or ``stage`` (legacy stage).

    Exactly one of ``alias`` and ``stage`` is set. ``previous_version`` is the version that held it
    before, when known. The built-in local-storage plugin syncs the version to ADE storage here.
    """


@hookspec
def ade_alias_removed(name: str, alias: str, version: str | None) -> None:
    """Alias ``alias`` of ``name`` was deleted (it pointed to ``version`` when known).

    The built-in local-storage plugin drops it from providers.json.
    """


@hookspec
def ade_before_sync(name: str, version: str, destination: Path) -> None:
    """A sync of ``name`` version ``version`` into ``destination`` (the final version dir) starts.

    Raise an exception to abort the sync; nothing is written then.
    """


@hookspec
def ade_after_sync(name: str, version: str, path: Path, downloaded_bytes: int) -> None:
    """Version ``version`` of ``name`` is complete and verified at ``path`` in ADE storage.

    ``downloaded_bytes`` is 0 when the copy already present matched its checksums.
    """


@hookspec
def ade_provider_registry_updated(path: Path, providers: dict[str, Any]) -> None:
    """``providers.json`` at ``path`` was atomically replaced; ``providers`` is its new content."""


@hookspec
def ade_cost_alert(
    run_id: str,
    job_name: str,
    cost_usd: float,
    budget_usd: float,
    fraction: float,
    action: str,
) -> None:
    """A training job's running cost crossed a budget threshold.

    ``fraction`` = cost_usd / budget_usd at the time of the alert; ``action`` is what the plugin does
    about it: ``"warn"`` (threshold crossed, job continues) or ``"stop"`` (budget exhausted, job is
    being stopped).
    """


@hookspec
def ade_job_completed(run_id: str, job_name: str, tracking_uri: str, output_dir: Path | None) -> str | None:
    """Training job ``job_name`` completed (SageMaker status ``Completed``, or a local job's) for MLflow run
    ``run_id`` on the tracking server ``tracking_uri``.

    Fired by the follower at the job's end, and by ``ade-mlflow status``/``reconcile`` when they bring a run
    nobody followed level with its job, so one job may be seen more than once: keep the work idempotent.
    Not fired for failed or stopped jobs. ``output_dir`` is the run's local output_dir (backend-config key
    ``output_dir``, run tag ``ade.output_dir``), None without one. Return a one-line summary of what the
    plugin did, which the caller prints, or None. The built-in ``ade-output-dir`` plugin lands the model
    versions the run registered in ``output_dir``.
    """


def hook_names() -> list[str]:
    """Names of every ``ade_`` hook specification."""
    return sorted(n for n, f in globals().items() if n.startswith("ade_") and callable(f))


# ---------------------------------------------------------------- the plugin manager
def _config_error(message: str, cause: BaseException) -> NoReturn:
    from ade_mlflow_plugin.errors import ConfigError

    raise ConfigError(message) from cause


def _describe(exc: BaseException) -> str:
    from ade_mlflow_plugin.errors import describe

    return describe(exc)


def get_plugin_manager(config: Any = None, *, builtin_sync: bool = True, builtin_landing: bool = False,
                       load_entry_points: bool | None = None) -> pluggy.PluginManager:
    """A plugin manager with every ``ade_`` hook, the built-in plugins asked for and the installed plugins.

    ``builtin_sync``: the sync to ADE storage on promotions (the registry's commands); ``builtin_landing``:
    the model into a completed job's output_dir (the backend, which fires ``ade_job_completed``).
    ``config`` (the registry's ModelRegistryConfig, or None for its defaults) goes to the built-ins;
    ``load_entry_points`` defaults to ``config.load_entry_points`` (true without a config). Raises
    ConfigError when a plugin fails to load or implements a hook that does not exist (a misspelled
    ``ade_`` name would otherwise never be called).
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(sys.modules[__name__])
    if builtin_sync:
        register_builtin(pm, BUILTIN_SYNC_NAME, config)
    if builtin_landing:
        register_builtin(pm, BUILTIN_LANDING_NAME, config)
    if getattr(config, "load_entry_points", True) if load_entry_points is None else load_entry_points:
        load_entry_point_plugins(pm)
    check_plugins(pm)
    return pm


def register_builtin(pm: pluggy.PluginManager, name: str, config: Any = None) -> object:
    """Import the built-in ``name`` from BUILTIN_PLUGINS (only now: the core imports no wing) and register it."""
    module, _, attribute = BUILTIN_PLUGINS[name].partition(":")
    plugin = getattr(importlib.import_module(module), attribute)(config, pm)
    pm.register(plugin, name=name)
    return plugin


def register_plugin(pm: pluggy.PluginManager, plugin: object, name: str | None = None) -> None:
    """Register ``plugin`` and validate its hook names at once."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        _config_error(f"plugin {name or plugin!r} is invalid: {exc}; fix its hook signature", exc)
    check_plugins(pm)


def check_plugins(pm: pluggy.PluginManager) -> None:
    """pluggy's check_pending(), turned into a one-line ConfigError naming the plugin and the fix."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        _config_error(f"plugin {name!r}: {exc}; rename it to one of: {', '.join(hook_names())}", exc)


def load_entry_point_plugins(pm: pluggy.PluginManager) -> None:
    """Register the plugins of the ``ade_mlflow_plugin`` entry-point group, one name at a time so a
    failure names the plugin (pluggy skips names already registered or blocked)."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            if pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name):
                _log.debug("loaded ade plugin %s from %s", ep.name, ep.value)
        except pluggy.PluginValidationError as exc:
            _config_error(f"plugin entry point {ep.name!r} is invalid: {exc}; fix its hook signature", exc)
        except Exception as exc:  # any import error of a third-party plugin
            _config_error(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {_describe(exc)}; "
                          "fix or uninstall that plugin", exc)


__all__ = ["PROJECT_NAME", "ENTRY_POINT_GROUP", "BUILTIN_SYNC_NAME", "BUILTIN_LANDING_NAME", "BUILTIN_PLUGINS",
           "hookspec", "hookimpl", "hook_names", "get_plugin_manager", "register_builtin", "register_plugin", "check_plugins",
           "load_entry_point_plugins", *hook_names()]
