"""Moved: the ``ade_`` hook specifications live in ade_mlflow_plugin/hooks.py (core), which both the
client and the registry use. This re-export keeps old imports working until it is removed."""
from __future__ import annotations

from ade_mlflow_plugin.hooks import (PROJECT_NAME, ade_after_sync, ade_alias_removed, ade_before_sync,  # noqa: F401
                                     ade_cost_alert, ade_provider_registry_updated, ade_version_promoted,
                                     ade_version_registered, hookspec)
