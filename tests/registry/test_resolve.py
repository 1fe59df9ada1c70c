"""models:/NAME@ALIAS as a training input: resolve_model_uri_to_local downloads the version's files."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.registry.resolve import resolve_model_uri_to_local
from tests.registry.conftest import sha256_tree


def test_alias_uri_resolves_to_the_promoted_version(make_version, model_name, tmp_path):
    make_version(model_name, files={"weights.bin": b"old"})
    v2 = make_version(model_name, files={"weights.bin": b"new", "adapter/config.json": b"{}"})
    MlflowClient().set_registered_model_alias(model_name, "production", v2)

    got = resolve_model_uri_to_local(f"models:/{model_name}@production", tmp_path / "base")

    assert got == tmp_path / "base"
    assert (got / "weights.bin").read_bytes() == b"new"
    assert {"weights.bin", "adapter/config.json"} <= set(sha256_tree(got))


@pytest.mark.parametrize("uri, message", [
    ("runs:/abc/model", "is not a models:/ URI"),
    ("models:/", "is not a models:/ URI"),
    ("models:/ade-no-such-model@production", "cannot resolve"),
])
def test_bad_uris_are_config_errors(tracking_uri, tmp_path, uri, message):
    with pytest.raises(ConfigError, match=message):
        resolve_model_uri_to_local(uri, tmp_path / "base")


def test_non_empty_destination_is_refused(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        resolve_model_uri_to_local("models:/m@a", tmp_path / "base")
