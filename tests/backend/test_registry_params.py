"""A registered model as a param value (base_model=models:/NAME@ALIAS) is downloaded for the job, and a
name that does not resolve is one line before anything is submitted."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ade_mlflow_plugin.backend.project_backend import _materialise_registry_uri
from ade_mlflow_plugin.errors import ConfigError


@pytest.fixture
def registered(tracking_uri, tmp_path):  # noqa: ANN001, ANN201
    import mlflow
    from mlflow import MlflowClient

    name = f"ade-param-{uuid.uuid4().hex[:8]}"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text('{"model_type": "llama"}')
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tmp_path / "src"), "model")
    client = MlflowClient()
    client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version
    client.set_registered_model_alias(name, "production", version)
    return name


def test_a_registered_model_is_downloaded_under_the_jobs_scratch(registered, tmp_path):
    scratch = tmp_path / "scratch"
    local = _materialise_registry_uri("base_model", f"models:/{registered}@production", scratch)

    assert str(local).startswith(str(scratch / "base_model"))
    assert [p.read_text() for p in Path(local).rglob("config.json")] == ['{"model_type": "llama"}']


def test_other_values_pass_through_untouched(tmp_path):
    assert _materialise_registry_uri("codebase", "/some/path", tmp_path) == "/some/path"
    assert not any(tmp_path.iterdir())


def test_an_unknown_registered_model_is_one_line_exit_2(tracking_uri, tmp_path):
    with pytest.raises(ConfigError) as info:
        _materialise_registry_uri("base_model", "models:/no-such-model-xyz@production", tmp_path)

    message = info.value.message
    assert "\n" not in message
    assert message.startswith("parameter 'base_model': cannot resolve models:/no-such-model-xyz@production")
    assert "check the registered model name and its alias or version" in message
