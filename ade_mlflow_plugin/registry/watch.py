"""``ade-mlflow watch``: poll the registry for alias and stage changes and fire the hooks.

For legacy stages (which fire no MLflow webhook) and for servers without webhooks. The last state
seen is kept on disk (the cursor), so a restarted watcher only acts on what changed meanwhile; a
model whose hooks failed keeps its old cursor and is retried on the next poll.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from ade_mlflow_plugin.errors import describe
from ade_mlflow_plugin.registry import store as st
from ade_mlflow_plugin.registry.sync import SERVING_STAGES

_log = logging.getLogger(__name__)
CURSOR_FILE = ".watch-cursor.json"


@dataclass(frozen=True)
class Change:
    kind: str  # "alias", "alias_removed", "stage", "registered"
    name: str
    version: str | None
    label: str | None = None
    previous_version: str | None = None


def model_state(client: MlflowClient, name: str) -> dict[str, Any]:
    """{"aliases": {alias: version}, "stages": {version: stage}} of one registered model."""
    quoted = name.replace("'", "\\'")
    versions = client.search_model_versions(f"name='{quoted}'")
    return {"aliases": {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()},
            "stages": {str(mv.version): mv.current_stage for mv in versions}}


def diff_state(name: str, old: dict[str, Any] | None, new: dict[str, Any]) -> list[Change]:
    """What changed between two states; with no old state, the current holders count as promoted."""
    changes: list[Change] = []
    first_time = old is None
    old = old or {"aliases": {}, "stages": {}}
    for alias, version in sorted(new["aliases"].items()):
        before = old["aliases"].get(alias)
        if before != version:
            changes.append(Change("alias", name, version, alias, before))
    for alias, before in sorted(old["aliases"].items()):
        if alias not in new["aliases"]:
            changes.append(Change("alias_removed", name, before, alias))
    for version, stage in sorted(new["stages"].items(), key=lambda kv: int(kv[0])):
        if version not in old["stages"] and not first_time:
            changes.append(Change("registered", name, version))
        before = old["stages"].get(version, "None")
        if stage != before and (stage in SERVING_STAGES or before in SERVING_STAGES):
            holder = _stage_holder(old["stages"], stage, exclude=version)
            changes.append(Change("stage", name, version, stage, holder))
    return changes


def _stage_holder(stages: dict[str, str], stage: str, exclude: str) -> str | None:
    holders = [int(v) for v, s in stages.items() if s == stage and v != exclude]
    return str(max(holders)) if holders else None


class Watcher:
    """Polls the registry and fires ade_ hooks for each change."""

    def __init__(self, client: MlflowClient, plugin_manager: Any, cursor_path: Path,
                 models: list[str] | None = None) -> None:
        self.client = client
        self.pm = plugin_manager
        self.cursor_path = Path(cursor_path)
        self.models = list(models or [])

    def poll_once(self) -> list[Change]:
        cursor = st.read_json(self.cursor_path, default={}) or {}
        fired: list[Change] = []
        for name in self.models or self._all_models():
            state = model_state(self.client, name)
            changes = diff_state(name, cursor.get(name), state)
            try:
                for change in changes:
                    self._fire(change)
            except Exception as exc:  # keep the old cursor for this model; retried next poll
                _log.error("watch: hooks for %s failed (%s); will retry", name, describe(exc))
                continue
            fired.extend(changes)
            if cursor.get(name) != state:
                cursor[name] = state
                st.write_json_atomic(self.cursor_path, cursor)
        return fired

    def run(self, interval_s: float, iterations: int | None = None) -> None:
        count = 0
        while iterations is None or count < iterations:
            for change in self.poll_once():
                _log.info("watch: %s", change)
            count += 1
            if iterations is None or count < iterations:
                time.sleep(interval_s)

    def _all_models(self) -> list[str]:
        names, token = [], None
        while True:
            page = self.client.search_registered_models(max_results=100, page_token=token)
            names.extend(m.name for m in page)
            token = page.token
            if not token:
                return names

    def _fire(self, c: Change) -> None:
        hook = self.pm.hook
        if c.kind == "alias":
            hook.ade_version_promoted(name=c.name, version=c.version, alias=c.label, stage=None,
                                      previous_version=c.previous_version)
        elif c.kind == "alias_removed":
            hook.ade_alias_removed(name=c.name, alias=c.label, version=c.version)
        elif c.kind == "stage":
            hook.ade_version_promoted(name=c.name, version=c.version, alias=None, stage=c.label,
                                      previous_version=c.previous_version)
        elif c.kind == "registered":
            mv = self.client.get_model_version(c.name, c.version)
            hook.ade_version_registered(name=c.name, version=c.version, run_id=mv.run_id,
                                        tags=dict(mv.tags or {}))
