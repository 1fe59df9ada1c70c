"""The package's few exception types. Each message is one line naming the problem and the fix."""
from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, INTERNAL_ERROR


class AdeError(MlflowException):
    """Base error: an operation failed. CLI exit code 1."""

    exit_code = 1

    def __init__(self, message: str, error_code: int = INTERNAL_ERROR) -> None:
        super().__init__(message, error_code=error_code)


class ConfigError(AdeError):
    """Bad input: a config key, parameter or argument is invalid. CLI exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class AwsError(AdeError):
    """An AWS call failed for a reason the user must fix (permissions, missing resource)."""


class JobFailedError(AdeError):
    """The training job ended Failed or Stopped."""
