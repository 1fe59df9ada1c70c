"""ADE storage on disk: path safety, integrity check, pruning, atomic JSON, config validation."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ade_mlflow_plugin.errors import AdeError, ConfigError
from ade_mlflow_plugin.config.registry import ModelRegistryConfig
from ade_mlflow_plugin.registry.store import (AdeStore, check_relative_path, checksum_tree,
                                              write_json_atomic)
from ade_mlflow_plugin.registry.download import verify_against_listing


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "a/..", "C:/x", "..\\x", ""])
def test_paths_leaving_the_root_are_refused(path):
    with pytest.raises(AdeError, match="would leave the ADE storage root"):
        check_relative_path(path)


def test_normal_paths_pass():
    assert check_relative_path("adapter/adapter_model.safetensors") == "adapter/adapter_model.safetensors"


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "", " padded"])
def test_model_names_that_are_not_a_directory_name_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="model name"):
        AdeStore(tmp_path).version_dir(name, "1")


def _fake_version(store: AdeStore, name: str, version: int) -> Path:
    vdir = store.version_dir(name, version)
    (vdir / "model_artifacts" / "sub").mkdir(parents=True)
    (vdir / "model_artifacts" / "sub" / "w.bin").write_bytes(os.urandom(100))
    files = checksum_tree(vdir / "model_artifacts")
    (vdir / "metadata.json").write_text(json.dumps({"files": files}))
    return vdir


def test_integrity_check_catches_changed_missing_and_extra_files(tmp_path):
    store = AdeStore(tmp_path)
    vdir = _fake_version(store, "m", 1)
    assert store.is_intact(vdir)
    weights = vdir / "model_artifacts" / "sub" / "w.bin"
    data = weights.read_bytes()
    weights.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, different content
    assert not store.is_intact(vdir)
    weights.write_bytes(data)
    (vdir / "model_artifacts" / "extra").write_text("x")
    assert not store.is_intact(vdir)
    (vdir / "model_artifacts" / "extra").unlink()
    weights.unlink()
    assert not store.is_intact(vdir)


def test_prune_keeps_newest_and_protected(tmp_path):
    store = AdeStore(tmp_path)
    for v in (1, 2, 3, 4, 10):
        _fake_version(store, "m", v)
    _fake_version(store, "m-other", 1)
    assert store.prune("m", keep=2, protected={1}) == [2, 3]
    assert store.versions("m") == [1, 4, 10] and store.versions("m-other") == [1]


def test_download_that_differs_from_the_listing_is_refused():
    files = {"a": {"size": 3, "sha256": "x"}, "registered_model_meta": {"size": 1, "sha256": "y"}}
    verify_against_listing(files, {"a": 3}, "m/1")
    with pytest.raises(AdeError, match="wrong size"):
        verify_against_listing(files, {"a": 4}, "m/1")
    with pytest.raises(AdeError, match="missing \\['b'\\]"):
        verify_against_listing(files, {"a": 3, "b": 1}, "m/1")
    with pytest.raises(AdeError, match="unexpected \\['c'\\]"):
        verify_against_listing({**files, "c": {"size": 1, "sha256": "z"}}, {"a": 3}, "m/1")


def test_atomic_json_leaves_no_temp_files(tmp_path):
    target = tmp_path / "providers.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["providers.json"]


def test_registry_config_defaults_and_validation(tmp_path, monkeypatch):
    monkeypatch.delenv("ADE_MODELS_ROOT", raising=False)
    assert ModelRegistryConfig().root == (Path.home() / ".ade" / "models").resolve()
    monkeypatch.setenv("ADE_MODELS_ROOT", str(tmp_path))
    assert ModelRegistryConfig().root == tmp_path.resolve()
    with pytest.raises(ConfigError, match="keep_versions must be an integer >= 1"):
        ModelRegistryConfig(keep_versions=0)
    with pytest.raises(ConfigError, match="unknown registry config key\\(s\\) rot; valid keys"):
        ModelRegistryConfig.from_dict({"rot": "/x"})
    assert ModelRegistryConfig.from_dict({"root": str(tmp_path), "keep_versions": 5}).keep_versions == 5


def test_listing_with_an_escaping_path_is_refused_before_install():
    from mlflow.entities import FileInfo

    from ade_mlflow_plugin.registry.download import remote_listing

    class MaliciousListing:  # what a compromised artifact server could answer
        def list_artifacts(self, path=None):  # noqa: ANN001, ANN201
            return {None: [FileInfo("MLmodel", False, 10), FileInfo("sub", True, None)],
                    "sub": [FileInfo("sub/../../../etc/cron.d/x", False, 5)]}[path]

    with pytest.raises(AdeError, match="would leave the ADE storage root"):
        remote_listing(MaliciousListing())
