"""CloudTrainingConfig: defaults, MLflow's own keys dropped, JSON file and inline forms."""
from __future__ import annotations

import json

import pytest

from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.errors import ConfigError

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def test_mlflow_keys_are_dropped_and_defaults_hold():
    raw = {"role_arn": ROLE, "bucket": "b-1", "SYNCHRONOUS": False, "ENV_MANAGER": "local",
           "DOCKER_ARGS": {}, "STORAGE_DIR": None, "build_image": False, "docker_auth": None}
    config = CloudTrainingConfig.from_backend_config(raw)
    assert config.mode == "sagemaker" and config.instance_count == 1 and config.wait is True
    assert config.prefix == "ade-mlflow" and config.on_budget == "stop"


def test_spot_gets_a_max_wait_and_local_needs_no_aws():
    spot = CloudTrainingConfig.from_backend_config({"role_arn": ROLE, "bucket": "b-1", "use_spot": True,
                                                    "max_runtime_s": 3600})
    assert spot.max_wait_s == 7200
    local = CloudTrainingConfig.from_backend_config({"mode": "local"})
    assert local.role_arn is None and local.poll_interval_s == 1


def test_file_and_inline_json(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"mode": "local", "instance_count": 2}))
    assert CloudTrainingConfig.from_backend_config(str(path)).instance_count == 2
    assert CloudTrainingConfig.from_backend_config('{"mode": "local"}').mode == "local"
    with pytest.raises(ConfigError, match="not valid JSON"):
        CloudTrainingConfig.from_backend_config('{"mode": ')
    with pytest.raises(ConfigError, match="not found"):
        CloudTrainingConfig.from_backend_config(str(tmp_path / "missing.json"))
