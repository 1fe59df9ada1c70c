"""Client side: what runs where `mlflow run` runs. MLflow loads `build_backend` by entry point."""
from __future__ import annotations


def build_backend():  # -> AdeSageMakerBackend
    """Entry point `mlflow.project_backend: ade-sagemaker` (called with no arguments by MLflow).

    The boto3 session is made lazily, on the first AWS call, so a bad config fails before any.
    """
    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend

    return AdeSageMakerBackend()
