"""The ``ade_`` hooks: what plugins of ade-mlflow-plugin can react to.

Plugins implement these with ``ade_mlflow_plugin.hookimpl`` and are found through the entry-point group
``ade_mlflow_plugin`` (see registry/plugins.py). Every hook is documented in docs/hooks.md; a test fails
when one is missing there. Hooks are called with keyword arguments only (pluggy's rule).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy

PROJECT_NAME = "ade_mlflow_plugin"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)


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
