"""ModelRegistryConfig: where ADE provider storage lives and how the registry side behaves.

Re-exported by ade_mlflow_plugin.config. Values are validated at construction, so a bad value fails
before any download with a message naming the key and the fix.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.errors import ConfigError

#: Default ADE provider storage root (the ADE platform reads <root>/providers.json).
DEFAULT_ROOT = "~/.ade/models"
#: Environment variable that overrides the default root.
ROOT_ENV = "ADE_MODELS_ROOT"
#: Environment variable for ``presigned_fetch`` (true/false), so every CLI verb honours it.
PRESIGNED_FETCH_ENV = "ADE_PRESIGNED_FETCH"


def default_root() -> Path:
    """The root from $ADE_MODELS_ROOT, else ~/.ade/models."""
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT).expanduser()


def default_presigned_fetch() -> bool:
    """$ADE_PRESIGNED_FETCH as a boolean; true when unset."""
    raw = os.environ.get(PRESIGNED_FETCH_ENV, "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{PRESIGNED_FETCH_ENV}={os.environ[PRESIGNED_FETCH_ENV]!r} is not a boolean; "
                      "set it to true or false")


@dataclass(frozen=True)
class ModelRegistryConfig:
    """Registry and ADE-storage settings.

    root: ADE provider storage root (``<root>/registry/<name>-v<N>/`` and ``<root>/providers.json``).
    keep_versions: how many synced versions of one model to keep on disk (versions that serve an alias
        or stage are never removed).
    tracking_uri: MLflow tracking/registry server; None means MLflow's usual resolution
        (MLFLOW_TRACKING_URI).
    webhook_window_s: how far a webhook's X-MLflow-Timestamp may be from now before it is refused.
    poll_interval_s: how often ``ade-mlflow watch`` polls the registry.
    load_entry_points: load third-party plugins from the ``ade_mlflow_plugin`` entry-point group.
    presigned_fetch: when the server offers presigned downloads (S3 artifact stores), fetch each file
        from its presigned URL with ADE's streaming ranged download, hashed as it lands; False leaves
        the download to MLflow (slower: it buffers 100 MB ranges, and files are hashed afterwards).
        Default from $ADE_PRESIGNED_FETCH, else true.
    """

    root: Path = field(default_factory=default_root)
    keep_versions: int = 3
    tracking_uri: str | None = None
    webhook_window_s: int = 300
    poll_interval_s: float = 10.0
    load_entry_points: bool = True
    presigned_fetch: bool = field(default_factory=default_presigned_fetch)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())
        _require(isinstance(self.keep_versions, int) and self.keep_versions >= 1,
                 f"keep_versions must be an integer >= 1, got {self.keep_versions!r}; set it to e.g. 3")
        _require(isinstance(self.webhook_window_s, int) and 1 <= self.webhook_window_s <= 3600,
                 f"webhook_window_s must be an integer in 1..3600, got {self.webhook_window_s!r}; "
                 "use e.g. 300")
        _require(isinstance(self.poll_interval_s, (int, float)) and self.poll_interval_s > 0,
                 f"poll_interval_s must be a positive number, got {self.poll_interval_s!r}; use e.g. 10")
        _require(isinstance(self.presigned_fetch, bool),
                 f"presigned_fetch must be true or false, got {self.presigned_fetch!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "ModelRegistryConfig":
        """Build from a plain dict (backend config, JSON); unknown keys are an error."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown registry config key(s) {', '.join(unknown)}; "
                              f"valid keys are {', '.join(sorted(known))}")
        return cls(**values)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
