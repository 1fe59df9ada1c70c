"""Promotion: set an alias (MLflow's current way) or a legacy stage, keep the history, fire hooks."""
from __future__ import annotations

import getpass
import json
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ade_mlflow_plugin.errors import ConfigError, registry_error

STAGES = ("None", "Staging", "Production", "Archived")
#: Model-version tag prefixes of the promotion history (one tag per event, so no length limit is hit).
PROMOTION_TAG = "ade.promotion."
DEMOTION_TAG = "ade.demotion."


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    alias: str | None
    stage: str | None
    previous_version: str | None


def normalize_stage(stage: str) -> str:
    for known in STAGES:
        if stage.strip().lower() == known.lower():
            return known
    raise ConfigError(f"stage {stage!r} is not one of {', '.join(STAGES)}; pass e.g. --stage Production")


def promote(client: MlflowClient, name: str, version: str, *, alias: str | None = None,
            stage: str | None = None, archive_existing: bool = False, plugin_manager: Any = None
            ) -> Promotion:
    """Move ``alias`` or ``stage`` to ``name`` version ``version``, tag the history, fire hooks."""
    if (alias is None) == (stage is None):
        raise ConfigError("give exactly one of --alias NAME or --stage STAGE")
    if archive_existing and stage is None:
        raise ConfigError("--archive-existing only applies to --stage; drop it or use --stage")
    version = str(version)
    _registry_call(lambda: client.get_model_version(name, version), f"model version {name}/{version}")
    if alias is not None:
        previous = _alias_holder(client, name, alias)
        _registry_call(lambda: client.set_registered_model_alias(name, alias, version), f"alias {alias!r}")
    else:
        stage = normalize_stage(stage)
        previous = _stage_holder(client, name, stage, exclude=version)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated; users still use them
            _registry_call(lambda: client.transition_model_version_stage(
                name, version, stage, archive_existing_versions=archive_existing), f"stage {stage!r}")
    promotion = Promotion(name, version, alias, stage, previous if previous != version else None)
    _record_history(client, promotion)
    if plugin_manager is not None:
        plugin_manager.hook.ade_version_promoted(name=name, version=version, alias=alias, stage=stage,
                                                 previous_version=promotion.previous_version)
    return promotion


def history(client: MlflowClient, name: str, version: str) -> list[dict[str, Any]]:
    """The promotion events recorded on a version, oldest first."""
    tags = client.get_model_version(name, str(version)).tags or {}
    events = [json.loads(v) for k, v in tags.items() if k.startswith(PROMOTION_TAG)]
    return sorted(events, key=lambda e: e["at"])


def _alias_holder(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None  # the alias does not exist yet


def _stage_holder(client: MlflowClient, name: str, stage: str, exclude: str) -> str | None:
    if stage in ("None", "Archived"):
        return None
    quoted = name.replace("'", "\\'")
    holders = [int(mv.version) for mv in client.search_model_versions(f"name='{quoted}'")
               if mv.current_stage == stage and str(mv.version) != exclude]
    return str(max(holders)) if holders else None


def _record_history(client: MlflowClient, p: Promotion) -> None:
    now = datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    event = {"at": now.isoformat(), "alias": p.alias, "stage": p.stage,
             "previous_version": p.previous_version, "user": _user()}
    client.set_model_version_tag(p.name, p.version, PROMOTION_TAG + stamp, json.dumps(event))
    if p.previous_version:
        demotion = {"at": now.isoformat(), "alias": p.alias, "stage": p.stage, "replaced_by": p.version}
        client.set_model_version_tag(p.name, p.previous_version, DEMOTION_TAG + stamp, json.dumps(demotion))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "unknown"


def _registry_call(fn: Any, what: str) -> Any:
    try:
        return fn()
    except MlflowException as exc:
        raise registry_error(what, exc, "check the model name, version and alias") from exc
