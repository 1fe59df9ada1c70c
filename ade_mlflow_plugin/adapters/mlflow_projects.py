"""MLflow Projects: what MLflow tells a project backend without a documented API for it.

A plugin backend's ``run()`` is called with a ``backend_config`` dict into which MLflow writes its own
keys, and from the ``mlflow run`` CLI (which for a plugin never calls ``wait()`` and exits 0 at once)
or from the Python API (which does). Neither is documented for plugins, so:

- :func:`synchronous` reads the ``SYNCHRONOUS`` key by MLflow's own constant
  ``mlflow.projects.utils.PROJECT_SYNCHRONOUS`` (public module, no underscore, but undocumented);
  fallback: the literal "SYNCHRONOUS" MLflow 3.17 uses;
- :data:`MLFLOW_BACKEND_KEYS`: every key MLflow adds (ENV_MANAGER, SYNCHRONOUS, DOCKER_ARGS,
  STORAGE_DIR, build_image, docker_auth), from the same constants, for configs that must drop them;
- :func:`under_mlflow_run_cli`: whether the current click command is MLflow's ``mlflow run``
  command object (``mlflow.cli.run``), so the backend may print one line and set the exit code;
  fallback when that object is gone: the click command name "run" (what MLflow 3.17 uses).

Fetching a project needs no adapter: local directories are used as they are and git/zip URIs go
through the public ``mlflow.projects.utils.fetch_and_validate_project`` (project_backend.py).
tests/adapters/test_mlflow_projects.py fails, naming mlflow, when any of these changes.
"""
from __future__ import annotations

import sys
from typing import Any

#: MLflow 3.17's values of mlflow.projects.utils.PROJECT_* (used when MLflow no longer has a constant).
_FALLBACK_KEYS = {
    "PROJECT_ENV_MANAGER": "ENV_MANAGER", "PROJECT_SYNCHRONOUS": "SYNCHRONOUS",
    "PROJECT_DOCKER_ARGS": "DOCKER_ARGS", "PROJECT_STORAGE_DIR": "STORAGE_DIR",
    "PROJECT_BUILD_IMAGE": "build_image", "PROJECT_DOCKER_AUTH": "docker_auth",
}


def backend_key(constant: str) -> str:
    """The backend_config key MLflow stores under ``mlflow.projects.utils.<constant>``."""
    from mlflow.projects import utils

    return str(getattr(utils, constant, _FALLBACK_KEYS[constant]))


def mlflow_backend_keys() -> frozenset[str]:
    """Every backend_config key MLflow adds before calling a plugin backend."""
    return frozenset(backend_key(constant) for constant in _FALLBACK_KEYS)


def synchronous(backend_config: Any) -> bool:
    """Whether the caller will wait for the run: MLflow's ``SYNCHRONOUS`` key, True when absent (the
    Python API's default; the ``mlflow run`` CLI passes False for plugin backends)."""
    if not isinstance(backend_config, dict):
        return True
    return bool(backend_config.get(backend_key("PROJECT_SYNCHRONOUS"), True))


def under_mlflow_run_cli() -> bool:
    """True when called from MLflow's ``mlflow run`` click command (not from the Python API)."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    # Not imported means not running: MLflow's CLI module is loaded by `mlflow run` itself, and
    # importing it here would cost the Python API caller time for nothing.
    cli_module = sys.modules.get("mlflow.cli")
    if cli_module is None:
        return False
    command = getattr(cli_module, "run", None)
    if isinstance(command, click.Command):
        return any(c.command is command for c in _contexts(ctx))
    return ctx.info_name == "run"


def _contexts(ctx: Any) -> list[Any]:
    """The click context and its parents (a plugin may open a sub-context of its own)."""
    found = []
    while ctx is not None:
        found.append(ctx)
        ctx = ctx.parent
    return found
