"""``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) as a training input: fetch it to a local dir.

The backend calls resolve_model_uri_to_local() and ships the directory as an input channel, so a
promoted model can be trained further.
"""
from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from ade_mlflow_plugin.errors import AdeError, ConfigError


def is_model_uri(value: str) -> bool:
    return isinstance(value, str) and value.startswith("models:/")


def resolve_model_uri_to_local(uri: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """Download the artifacts of registered model version ``uri`` into ``dst``; return ``dst``."""
    if not is_model_uri(uri) or len(uri) <= len("models:/"):
        raise ConfigError(f"base model URI {uri!r} is not a models:/ URI; write models:/NAME@ALIAS or "
                          "models:/NAME/VERSION")
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise ConfigError(f"destination {dst} is not empty; pass an empty or new directory")
    dst.mkdir(parents=True, exist_ok=True)
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri)
    except MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0][:300] if exc.message else type(exc).__name__
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ConfigError(f"cannot resolve {uri}: {first}; check the model name and alias/version") from exc
        raise AdeError(f"downloading {uri} failed: {first}; check MLFLOW_TRACKING_URI") from exc
    return dst
