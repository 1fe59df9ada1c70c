"""MLflow artifact repositories: the per-file writer and the presigned-download calls of the client.

Sync hashes every file of a model version as it lands (registry/download.py). MLflow's public
``ArtifactRepository.download_artifacts`` owns the listing, the thread pool and the layout, but offers
no per-file hook and no way to fetch one file of an ``mlflow-artifacts:/`` store from its presigned
URL, so these private names are needed:

- ``ArtifactRepository._download_file(remote_file_path, local_path)``: the writer download_artifacts
  calls once per file in its thread pool (replaced on one repository instance, never on the class);
- ``MlflowArtifactsRepository._is_multipart_download_enabled()``: whether the server offers presigned
  downloads (one cached server-info call);
- ``HttpArtifactRepository._get_presigned_download_url(path)``: the presigned URL, headers and size.

Public fallback for all three: ``download_artifacts`` with MLflow's own writer, each file hashed after
the download (slower, same result). Every function here returns the fallback's answer when MLflow no
longer has the name; tests/adapters/test_mlflow_artifacts.py fails first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

#: MLflow's per-file writer: (remote_file_path, local_path) -> None.
Writer = Callable[[str, str], None]
_WRITER = "_download_file"
_MULTIPART_ENABLED = "_is_multipart_download_enabled"
_PRESIGNED_URL = "_get_presigned_download_url"


@dataclass(frozen=True)
class PresignedDownload:
    """What the server answered for one file: where its bytes are, and their size (None: unknown)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    file_size: int | None = None


def wrap_file_writer(repo: Any, wrap: Callable[[Writer], Writer]) -> bool:
    """Make ``repo``'s download_artifacts write each file through ``wrap(MLflow's writer)``.

    Only this repository instance changes. False (nothing changed) when MLflow no longer has the
    per-file writer: the caller then hashes the files after MLflow's download (the public fallback).
    """
    original = getattr(repo, _WRITER, None)
    if not callable(original):
        return False
    setattr(repo, _WRITER, wrap(original))
    return True


def writer_kind(repo: Any) -> str:
    """Which MLflow writer ``repo`` has: "stream", "multipart" or "other".

    "stream": HttpArtifactRepository's, which writes the server's proxied stream in order (a file can
    be hashed while it grows). "multipart": MlflowArtifactsRepository's, which uses presigned ranges
    when the server offers them and the proxied stream otherwise. "other": anything else.
    """
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    method = getattr(type(repo), _WRITER, None)
    if method is None:
        return "other"
    if method is getattr(HttpArtifactRepository, _WRITER, None):
        return "stream"
    if method is getattr(MlflowArtifactsRepository, _WRITER, None):
        return "multipart"
    return "other"


def multipart_download_enabled(repo: Any) -> bool:
    """Whether the server offers presigned downloads to ``repo`` (MLflow's own check and cache).

    Raises what MLflow raises when the server cannot be asked. False when MLflow lost the check.
    """
    check = getattr(repo, _MULTIPART_ENABLED, None)
    return bool(check()) if callable(check) else False


def can_presign(repo: Any) -> bool:
    """Whether ``repo`` can ask its server for presigned download URLs."""
    return callable(getattr(repo, _PRESIGNED_URL, None))


def presigned_download(repo: Any, remote_file_path: str) -> PresignedDownload | None:
    """The server's presigned URL for one file; None when MLflow lost the call (use its writer).

    Raises what MLflow raises when the server refuses (e.g. HTTP 501 without an S3 store).
    """
    ask = getattr(repo, _PRESIGNED_URL, None)
    if not callable(ask):
        return None
    answer = ask(remote_file_path)
    return PresignedDownload(answer.url, dict(answer.headers or {}), answer.file_size)
