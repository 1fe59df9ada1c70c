"""The seed's launch API and `ade-mlflow launch`: thin wrappers over mlflow.projects.run with this backend.

The project (MLproject, conda.yaml, entrypoints/) ships inside the installed package, so launching
works after a plain `pip install`, without a checkout.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import click

from ade_mlflow_plugin.config.cloud import CloudTrainingConfig
from ade_mlflow_plugin.config.training import DEFAULT_BASE_MODEL, TrainingConfig
from ade_mlflow_plugin.options import click_option

# errors.py imports mlflow (~1.3 s): it is imported where an error is raised, so that
# `ade-mlflow launch --help` and its usage errors stay fast.

PROJECT_DIR = Path(__file__).resolve().parent / "project"
BACKEND = "ade-sagemaker"


def _as_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if is_dataclass(config):
        return {k: v for k, v in asdict(config).items() if v is not None}
    if isinstance(config, dict):
        return dict(config)
    from ade_mlflow_plugin.errors import ConfigError

    raise ConfigError(f"cloud_config must be a CloudTrainingConfig or a dict, got {type(config).__name__}")


def _apply_output_dir(backend_config: dict[str, Any], output_dir: str | None) -> None:
    """output_dir: the job root in local mode, or s3://bucket/prefix for SageMaker's code/data/output."""
    if not output_dir:
        return
    if output_dir.startswith("s3://"):
        bucket, _, prefix = output_dir[5:].partition("/")
        backend_config.setdefault("bucket", bucket)
        backend_config.setdefault("prefix", prefix.strip("/") or "ade-mlflow")
    elif backend_config.get("mode") == "local":
        backend_config.setdefault("job_root", str(Path(output_dir).resolve()))
    else:
        from ade_mlflow_plugin.errors import ConfigError

        raise ConfigError("output_dir must be an s3://bucket/prefix URI in sagemaker mode (or use mode local)")


def build_launch(codebase_path: str, output_dir: str | None, base_model: str, cloud_config: Any,
                 registry_config: Any, num_examples: int, synthetic_ratio: float,
                 params: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """-> (MLproject parameters, backend config) for the `main` entry point."""
    backend_config = _as_dict(cloud_config)
    _apply_output_dir(backend_config, output_dir)
    registry = _as_dict(registry_config)
    parameters = {"codebase": str(Path(codebase_path).expanduser().resolve()), "base_model": base_model,
                  "num_examples": str(num_examples), "synthetic_ratio": str(synthetic_ratio)}
    if registry.get("registered_model_name"):
        parameters["registered_model_name"] = registry["registered_model_name"]
    parameters.update({k: str(v) for k, v in params.items()})
    return parameters, backend_config


def _run(parameters: dict[str, str], backend_config: dict[str, Any], experiment_name: str | None,
         synchronous: bool) -> Any:
    import mlflow.projects
    from mlflow.projects import ExecutionException

    from ade_mlflow_plugin.errors import JobFailedError, first_line

    try:
        return mlflow.projects.run(str(PROJECT_DIR), entry_point="main", parameters=parameters, backend=BACKEND,
                                   backend_config=backend_config, experiment_name=experiment_name,
                                   synchronous=synchronous)
    except ExecutionException as exc:  # MLflow's wait() reports a failed job this way
        raise JobFailedError(first_line(exc)) from None


async def launch_training_job_async(codebase_path: str, output_dir: str | None = None,
                                    base_model: str = DEFAULT_BASE_MODEL,
                                    cloud_config: Any = None, registry_config: Any = None,
                                    num_examples: int = 1000, synthetic_ratio: float = 0.3,
                                    experiment_name: str | None = None, **params: Any) -> str:
    """Submit and return the job name at once (follow it with `ade-mlflow logs RUN_ID --follow`)."""
    parameters, backend_config = build_launch(codebase_path, output_dir, base_model, cloud_config,
                                              registry_config, num_examples, synthetic_ratio, params)
    backend_config["wait"] = False
    submitted = await asyncio.to_thread(_run, parameters, backend_config, experiment_name, False)
    return submitted.job_name


def _backend_config_option(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    from ade_mlflow_plugin.config import read_backend_config

    return read_backend_config(value)


@click.command("launch")
@click.option("--codebase_path", "--codebase-path", required=True, type=click.Path(exists=True, file_okay=False),
              help="The codebase to fine-tune on.")
@click_option(TrainingConfig, "base_model", "--base_model", "--base-model")
@click_option(TrainingConfig, "num_examples", "--num_examples", "--num-examples")
@click_option(TrainingConfig, "synthetic_ratio", "--synthetic_ratio", "--synthetic-ratio")
@click_option(CloudTrainingConfig, "instance_type", "--instance_type", "--instance-type", default=None)
@click_option(CloudTrainingConfig, "instance_count", "--instance_count", "--instance-count", default=None)
@click_option(CloudTrainingConfig, "max_runtime_s", "--max_runtime", "--max-runtime", default=None, metavar="SECONDS")
@click.option("--use_spot/--no_spot", "--use-spot/--no-spot", default=None, help="Managed spot training.")
@click_option(TrainingConfig, "registered_model_name", "--registered_model_name", "--registered-model-name",
              default=None)
@click.option("--output_dir", "--output-dir", default=None, help="s3://bucket/prefix, or the job root in local mode.")
@click.option("--backend-config", "backend_config", default=None, help="Inline JSON or a .json file.")
@click.option("--local", is_flag=True, help="Run on this machine (mode local), no AWS account needed.")
@click.option("--experiment-name", default=None)
@click.option("--no-wait", is_flag=True, help="Return once the job is submitted.")
@click.option("-P", "--param", "extra", multiple=True, help="Any other MLproject parameter, NAME=VALUE.")
def launch_command(codebase_path: str, base_model: str, num_examples: int, synthetic_ratio: float,
                   instance_type: str | None, instance_count: int | None, max_runtime_s: int | None,
                   use_spot: bool | None, registered_model_name: str | None, output_dir: str | None,
                   backend_config: str | None, local: bool, experiment_name: str | None, no_wait: bool,
                   extra: tuple[str, ...]) -> None:
    """Fine-tune BASE_MODEL on a codebase: the project's `main` entry through the ade-sagemaker backend."""
    config = _backend_config_option(backend_config)
    overrides = {"instance_type": instance_type, "instance_count": instance_count, "max_runtime_s": max_runtime_s,
                 "use_spot": use_spot, "mode": "local" if local else None}
    config.update({k: v for k, v in overrides.items() if v is not None})
    params = dict(_split_param(p) for p in extra)
    registry = {"registered_model_name": registered_model_name} if registered_model_name else None
    parameters, config = build_launch(codebase_path, output_dir, base_model, config, registry, num_examples,
                                      synthetic_ratio, params)
    config["wait"] = not no_wait
    submitted = _run(parameters, config, experiment_name, synchronous=not no_wait)
    click.echo(json.dumps({"run_id": submitted.run_id, "job_name": submitted.job_name,
                           "status": submitted.get_status()}))
    if not no_wait and submitted.get_status() != "FINISHED":
        raise SystemExit(1)


def _split_param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        from ade_mlflow_plugin.errors import ConfigError

        raise ConfigError(f"-P '{text}': expected NAME=VALUE")
    return name, value
