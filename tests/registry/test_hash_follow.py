"""Hashing a file while MLflow's download writes it: right for an appending writer, refused otherwise."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.entities import FileInfo
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from ade_mlflow_plugin.errors import AdeError
from ade_mlflow_plugin.registry import store as st
from ade_mlflow_plugin.config.registry import ModelRegistryConfig
from ade_mlflow_plugin.registry.download import download_verified
from ade_mlflow_plugin.registry.sync import ModelSyncManager
from tests.registry.conftest import sha256_tree

MB = 1 << 20


def _follow(path: Path, writer: Callable[[], None]) -> tuple[str, st.Stamp] | None:
    """Run ``writer`` in a thread while sha256_following follows ``path``, as sync's recorder does."""
    done = threading.Event()
    result: list[tuple[str, st.Stamp] | None] = []
    follower = threading.Thread(target=lambda: result.append(st.sha256_following(str(path), done)))
    follower.start()
    try:
        writer()
    finally:
        done.set()
        follower.join(30)
    return result[0]


def test_appending_writer_is_hashed_while_it_writes(tmp_path):
    path, data = tmp_path / "weights.bin", os.urandom(24 * MB)

    def append() -> None:  # what HttpArtifactRepository._download_file does: "wb", in order
        time.sleep(0.05)
        with open(path, "wb") as fh:
            for i in range(0, len(data), MB):
                fh.write(data[i:i + MB])
                time.sleep(0.002)

    result = _follow(path, append)

    assert result == (hashlib.sha256(data).hexdigest(), st.file_stamp(path))


def test_writer_at_offsets_is_not_followed(tmp_path):
    path, data = tmp_path / "weights.bin", os.urandom(8 * MB)

    def ranges_backwards() -> None:  # a presigned multipart download: full size first, then ranges
        with open(path, "wb") as fh:
            fh.truncate(len(data))
            fh.flush()
            time.sleep(0.3)
            for i in reversed(range(0, len(data), 2 * MB)):
                fh.seek(i)
                fh.write(data[i:i + 2 * MB])
                fh.flush()
                time.sleep(0.05)

    assert _follow(path, ranges_backwards) is None
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_temp_file_renamed_over_the_path_is_not_followed(tmp_path):
    path, data = tmp_path / "weights.bin", os.urandom(4 * MB)

    def rename_over() -> None:  # s3transfer writes a temp name and renames it into place
        path.write_bytes(b"placeholder")
        time.sleep(0.2)
        tmp = tmp_path / "weights.bin.a1b2c3"
        tmp.write_bytes(data)
        os.replace(tmp, path)

    assert _follow(path, rename_over) is None


def test_file_rewritten_from_the_start_is_not_followed(tmp_path):
    path = tmp_path / "weights.bin"

    def rewrite() -> None:  # a retry that reopens the file "wb"
        path.write_bytes(os.urandom(2 * MB))
        time.sleep(0.2)
        path.write_bytes(os.urandom(MB))

    assert _follow(path, rewrite) is None


def test_a_digest_is_reused_only_while_the_file_is_unchanged(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    stale = {"a.bin": ("0" * 64, st.file_stamp(tmp_path / "a.bin"))}
    assert st.checksum_tree(tmp_path, stale)["a.bin"]["sha256"] == "0" * 64
    time.sleep(0.01)
    (tmp_path / "a.bin").write_bytes(b"abd")
    assert st.checksum_tree(tmp_path, stale)["a.bin"]["sha256"] == hashlib.sha256(b"abd").hexdigest()


@pytest.mark.parametrize("multipart", ["false", None])
def test_big_files_hash_right_from_the_real_server(make_version, model_name, root, monkeypatch, multipart):
    """Proxied download (a stream written in order): followed. Presigned multipart (the fixture
    server's default on S3, ranges at offsets): hashed after each file lands. Both record the truth."""
    if multipart:
        monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", multipart)
    followed: list[str] = []
    real = st.sha256_following

    def spy(path: str, done: threading.Event):  # noqa: ANN202
        result = real(path, done)
        followed.append(Path(path).name if result else f"refused {path}")
        return result

    monkeypatch.setattr(st, "sha256_following", spy)
    version = make_version(model_name, files={"weights.bin": os.urandom(12 * MB), "sub/big.bin": os.urandom(5 * MB),
                                              "config.json": b"{}"})
    result = ModelSyncManager(ModelRegistryConfig(root=root, load_entry_points=False)).sync(model_name, version)

    assert sorted(followed) == (["big.bin", "weights.bin"] if multipart == "false" else [])
    meta = json.loads((result.path / "metadata.json").read_text())
    assert {k: v["sha256"] for k, v in meta["files"].items()} == sha256_tree(result.path / "model_artifacts")
    assert result.downloaded_bytes == 17 * MB + 2


def test_listing_that_escapes_is_refused_before_any_file_is_fetched(tmp_path):
    store = tmp_path / "artifacts"
    store.mkdir()
    (store / "MLmodel").write_text("flavors: {}\n")

    class EscapingRepo(LocalArtifactRepository):  # what a compromised artifact server could list
        def list_artifacts(self, path=None):  # noqa: ANN001, ANN201
            return [FileInfo("MLmodel", False, 13), FileInfo("../../etc/cron.d/x", False, 5)]

    dst = tmp_path / "staging" / "model_artifacts"
    with pytest.raises(AdeError, match="would leave the ADE storage root"):
        download_verified(EscapingRepo(str(store)), "m/1", dst)
    assert list(dst.iterdir()) == []
