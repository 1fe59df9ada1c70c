"""A registered-model name MLflow would refuse at the job's end, and a base_model written as a local path
that does not exist, are one line before any run exists (H7's requests 2-3)."""
from __future__ import annotations

import pytest
from mlflow.projects.utils import load_project

from ade_mlflow_plugin.backend.params import resolve_params
from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("params,words", [
    ({"registered_model_name": "team/coder"}, "MLflow model names cannot contain '/' or ':'"),
    ({"registered_model_name": "a:b"}, "MLflow model names cannot contain '/' or ':'"),
    ({"base_model": "/no/such/model"}, "'/no/such/model': no such folder; pass a hub name"),
    ({"base_model": "./missing"}, "no such folder"),
])
def test_refused_before_the_run(params, words):
    with pytest.raises(ConfigError) as caught:
        resolve_params(load_project(str(REPO_ROOT)), "main", {"codebase": str(REPO_ROOT / "examples"), **params},
                       REPO_ROOT)
    assert words in caught.value.message and "\n" not in caught.value.message


def test_hub_names_existing_folders_and_registered_models_pass(tmp_path):
    for name in ("deepseek-ai/deepseek-coder-1.3b-instruct", str(tmp_path), "models:/coder@production"):
        assert TrainingConfig.from_params({"base_model": name}).base_model == name
    assert TrainingConfig.from_params({"registered_model_name": "ade-coder_v2.1"}).registered_model_name
