"""ModelRegistryConfig: where ADE provider storage lives and how the registry side behaves.

Each key is declared once (options kit). Values are parsed at construction, so a bad value fails
before any download with a message naming the key and the fix.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ade_mlflow_plugin.options import (Invalid, Style, boolean, from_mapping, optional, option, options_class,
                                       real, text, whole)

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
    from ade_mlflow_plugin.errors import ConfigError  # errors.py imports mlflow: only when failing

    raise ConfigError(f"{PRESIGNED_FETCH_ENV}={os.environ[PRESIGNED_FETCH_ENV]!r} is not a boolean; "
                      "set it to true or false")


def default_model_name(codebase: str | os.PathLike[str]) -> str:
    """``ade-<codebase folder name>``, lower case, runs of other characters as one ``-``.

    One registered model per codebase: each training on a codebase is the next version of that
    codebase's model, so its aliases (production, ...) never mix models of unrelated codebases.
    """
    slug = re.sub(r"[^a-z0-9._]+", "-", Path(codebase).expanduser().resolve().name.lower()).strip("-._")
    return f"ade-{slug or 'codebase'}"


def storage_root(value: Any) -> Path:
    """A folder path, made absolute (~ expanded) so that every later step sees the same root.

    A path ending in ``registry`` names the registry folder itself (the ADE Cloud Training API's
    ``registry_path="models/registry"``): its parent is the root, so versions land in that very folder
    (``models/registry/<name>-v<N>/``), not in ``models/registry/registry/``.
    """
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise Invalid("a folder path")
    path = Path(value).expanduser().resolve()
    return path.parent if path.name == "registry" else path


def registered_model_name(value: Any) -> str:
    """A registered-model name MLflow accepts ("" registers nothing): MLflow refuses '/' and ':' only when
    the model is registered, at the end of a training job; checked here, before any run exists."""
    name = text()(value)
    if "/" in name or ":" in name:
        raise Invalid("", detail=f"got {name!r}: MLflow model names cannot contain '/' or ':'; "
                                 "use letters, digits, '-', '_' or '.'")
    return name


@options_class
@dataclass(frozen=True)
class ModelRegistryConfig:
    """Registry and ADE-storage settings (see each field's help)."""

    OPTIONS_STYLE: ClassVar[Style] = Style(
        "registry config", bad="{key} must be {expected}, got {value}; set it to e.g. {default}",
        unknown="unknown registry config key(s) {key}; valid keys are {known}{hint}")

    root: Path = option(DEFAULT_ROOT, storage_root, "ADE provider storage root (<root>/registry/<name>-v<N>/ "
                        f"and <root>/providers.json); default ${ROOT_ENV}, else {DEFAULT_ROOT}; a path "
                        "ending in registry is that registry folder (its parent is the root)",
                        default_factory=default_root, aliases=("registry_path",))
    registered_model_name: str | None = option(
        None, optional(registered_model_name), "register the trained model under this name; unset: the codebase folder name "
        "with the prefix ade- (launch API and CLI); empty: do not register", aliases=("model_name",),
        metavar="NAME")
    keep_versions: int = option(3, whole(1), "synced versions of one model kept on disk (versions that serve "
                                "an alias or stage are never removed)", aliases=("max_versions",))
    tracking_uri: str | None = option(None, optional(text(required=True)),
                                      "MLflow tracking/registry server (default: MLflow's usual resolution, "
                                      "MLFLOW_TRACKING_URI)")
    webhook_window_s: int = option(300, whole(1, 3600), "how far a webhook's X-MLflow-Timestamp may be from "
                                   "now before it is refused, seconds")
    poll_interval_s: float = option(10.0, real(0.0, lo_open=True), "how often `ade-mlflow watch` polls the "
                                    "registry, seconds")
    load_entry_points: bool = option(True, boolean(), "load third-party plugins from the ade_mlflow_plugin "
                                     "entry-point group")
    presigned_fetch: bool = option(True, boolean(), "when the server offers presigned downloads (S3 artifact "
                                   "stores), fetch each file with ADE's streaming ranged download, hashed as it "
                                   "lands; false leaves the download to MLflow (slower: it buffers 100 MB "
                                   f"ranges, and files are hashed afterwards); default ${PRESIGNED_FETCH_ENV}, "
                                   "else true", default_factory=default_presigned_fetch)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "ModelRegistryConfig":
        """Build from a plain dict (backend config, JSON); unknown keys are an error."""
        return from_mapping(cls, values)
