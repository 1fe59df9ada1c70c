"""ade-mlflow-plugin: fine-tune a code LLM on your codebase on SageMaker, tracked in MLflow."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from ade_mlflow_plugin.config import CloudTrainingConfig, ModelRegistryConfig


def __getattr__(name: str) -> Any:
    # `hookimpl` (hooks.py's marker) is imported lazily: the job's shim imports this package from the
    # code bundle before the launcher has installed anything, and an image need not have pluggy.
    if name == "hookimpl":
        from ade_mlflow_plugin.hooks import hookimpl

        globals()["hookimpl"] = hookimpl
        return hookimpl
    raise AttributeError(name)


async def launch_training_job(
    codebase_path: str,
    output_dir: str | None = None,
    base_model: str = "deepseek-ai/deepseek-coder-1.3b-instruct",
    cloud_config: "CloudTrainingConfig | dict[str, Any] | None" = None,
    registry_config: "ModelRegistryConfig | dict[str, Any] | None" = None,
    num_examples: int = 1000,
    synthetic_ratio: float = 0.3,
    **params: Any,
) -> str:
    """Submit the project's ``main`` entry point through the ade-sagemaker backend.

    Returns the SageMaker training job name once the job is submitted (the job keeps running).
    """
    from ade_mlflow_plugin.launch import launch_training_job_async

    return await launch_training_job_async(
        codebase_path=codebase_path,
        output_dir=output_dir,
        base_model=base_model,
        cloud_config=cloud_config,
        registry_config=registry_config,
        num_examples=num_examples,
        synthetic_ratio=synthetic_ratio,
        **params,
    )
