"""CloudTrainingConfig's shipping keys (issue 19): environment values are scanned for credentials when the
backend config is read, before any run or upload; allow_secret_files is a list of project paths."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.errors import ConfigError

# AWS's documented example key: the scanner's AWS plugin flags it, whatever the variable is called
EXAMPLE_KEY = "AKIAIOSFODNN7EXAMPLE"


def test_a_credential_value_in_environment_is_refused_in_one_line_without_echoing_it():
    with pytest.raises(ConfigError) as info:
        CloudTrainingConfig.from_backend_config({"mode": "local", "environment": {"INNOCENT": EXAMPLE_KEY}})
    message = info.value.message
    assert "'environment'" in message and "INNOCENT" in message and "IAM role" in message
    assert EXAMPLE_KEY not in message and "\n" not in message and info.value.exit_code == 2
    plain = CloudTrainingConfig.from_backend_config({"mode": "local", "environment": {"LOG_LEVEL": "info"}})
    assert plain.environment == {"LOG_LEVEL": "info"}


def test_allow_secret_files_is_a_list_of_project_paths():
    config = CloudTrainingConfig.from_backend_config({"mode": "local", "allow_secret_files": [" tests/fixtures/ "]})
    assert config.allow_secret_files == ["tests/fixtures/"]
    assert CloudTrainingConfig().allow_secret_files == []
    with pytest.raises(ConfigError, match=r"'allow_secret_files': got \"tests/\", expected a list of project paths"):
        CloudTrainingConfig.from_backend_config({"mode": "local", "allow_secret_files": "tests/"})
