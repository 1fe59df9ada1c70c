"""adapters.mlflow_artifacts: MLflow's per-file writer and presigned-download calls are still there."""
from __future__ import annotations

import hashlib
import inspect

import pytest
import requests
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

from ade_mlflow_plugin.adapters import mlflow_artifacts

CHANGED = "mlflow changed {name}: update ade_mlflow_plugin/adapters/mlflow_artifacts.py and docs/internals.md"


@pytest.mark.parametrize("cls, name, params", [
    (ArtifactRepository, "_download_file", ["remote_file_path", "local_path"]),
    (HttpArtifactRepository, "_download_file", ["remote_file_path", "local_path"]),
    (MlflowArtifactsRepository, "_download_file", ["remote_file_path", "local_path"]),
    (MlflowArtifactsRepository, "_is_multipart_download_enabled", []),
    (HttpArtifactRepository, "_get_presigned_download_url", ["remote_file_path"]),
])
def test_private_names_keep_their_signature(cls, name, params):
    method = getattr(cls, name, None)
    assert callable(method), CHANGED.format(name=f"{cls.__name__}.{name} (gone)")
    got = [p for p in inspect.signature(method).parameters if p != "self"]
    assert got == params, CHANGED.format(name=f"{cls.__name__}.{name}{tuple(got)}")


def test_download_artifacts_writes_every_file_through_the_instance_writer(tmp_path):
    store, dst = tmp_path / "store", tmp_path / "dst"
    (store / "sub").mkdir(parents=True)
    (store / "a.bin").write_bytes(b"a")
    (store / "sub" / "b.bin").write_bytes(b"bb")
    dst.mkdir()
    repo, seen = LocalArtifactRepository(str(store)), []

    def wrap(original):  # noqa: ANN001, ANN202
        def writer(remote_file_path: str, local_path: str) -> None:
            seen.append(remote_file_path)
            original(remote_file_path, local_path)
        return writer

    assert mlflow_artifacts.wrap_file_writer(repo, wrap)
    repo.download_artifacts("", str(dst))
    assert sorted(seen) == ["a.bin", "sub/b.bin"], CHANGED.format(
        name="ArtifactRepository.download_artifacts (no longer calls self._download_file per file)")
    assert (dst / "sub" / "b.bin").read_bytes() == b"bb"
    assert "_download_file" not in vars(LocalArtifactRepository(str(store)))  # the class is untouched


def test_writer_kind_and_multipart_switch(monkeypatch):
    http = HttpArtifactRepository("http://127.0.0.1:9/api/2.0/mlflow-artifacts/artifacts/x")
    proxied = MlflowArtifactsRepository("mlflow-artifacts:/x", tracking_uri="http://127.0.0.1:9")
    assert mlflow_artifacts.writer_kind(http) == "stream"
    assert mlflow_artifacts.writer_kind(proxied) == "multipart"
    assert mlflow_artifacts.writer_kind(LocalArtifactRepository("/tmp")) == "other"
    for value, expected in (("true", True), ("false", False)):  # MLflow's env switch: no server asked
        monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", value)
        assert mlflow_artifacts.multipart_download_enabled(proxied) is expected, CHANGED.format(
            name="MlflowArtifactsRepository._is_multipart_download_enabled (ignores its env switch)")
    assert mlflow_artifacts.can_presign(proxied)


def test_a_repository_without_the_names_gets_the_public_fallback():
    class Bare:
        def download_artifacts(self, artifact_path: str, dst_path: str) -> str:
            return dst_path

    assert not mlflow_artifacts.wrap_file_writer(Bare(), lambda original: original)
    assert mlflow_artifacts.writer_kind(Bare()) == "other"
    assert mlflow_artifacts.multipart_download_enabled(Bare()) is False
    assert not mlflow_artifacts.can_presign(Bare())
    assert mlflow_artifacts.presigned_download(Bare(), "a.bin") is None


def test_presigned_url_of_a_real_server_fetches_the_file(tracking_uri, tmp_path):
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    payload = b"presigned bytes\n" * 64
    (tmp_path / "w.bin").write_bytes(payload)
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "w.bin"))
    repo = get_artifact_repository(run.info.artifact_uri)
    assert mlflow_artifacts.writer_kind(repo) == "multipart"
    assert mlflow_artifacts.multipart_download_enabled(repo)  # the fixture server stores on S3 (moto)
    answer = mlflow_artifacts.presigned_download(repo, "w.bin")
    assert answer is not None and answer.file_size == len(payload), CHANGED.format(
        name="HttpArtifactRepository._get_presigned_download_url (answer without url/headers/file_size)")
    got = requests.get(answer.url, headers=answer.headers, timeout=30)
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(payload).digest()
