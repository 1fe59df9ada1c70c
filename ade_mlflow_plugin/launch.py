"""The ADE Cloud Training API (launch_training_job) and `ade-mlflow launch`, which is also
`python -m ade_mlflow_plugin.launch`: thin wrappers over mlflow.projects.run with this backend.

The project (MLproject, conda.yaml, entrypoints/) ships inside the installed package, so launching
works after a plain `pip install`, without a checkout. What the API's arguments mean here:
``output_dir`` s3://bucket/prefix is the job's S3 home (code, data, checkpoints, model output); a local
folder is where the finished model lands (``<output_dir>/registry/<name>-v<N>/``, registry/landing.py),
in either mode. The model is registered under ``registry_config``'s name, by default ade-<codebase
folder name> (config/registry.default_model_name); a ``registry_config`` root (``registry_path``) other than
the default is where the model lands, like a local output_dir. Its other keys configure the registry's own
commands (watch, webhook-server, sync) and are refused here with one line, not silently ignored.
"""
from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

import click

from ade_mlflow_plugin.config.cloud import CloudTrainingConfig
from ade_mlflow_plugin.config.registry import ModelRegistryConfig, default_model_name
from ade_mlflow_plugin.config.training import DEFAULT_BASE_MODEL, TrainingConfig
from ade_mlflow_plugin.options import click_option

# errors.py imports mlflow (~1.3 s): it is imported where an error is raised, so that
# `ade-mlflow launch --help` and its usage errors stay fast.

PROJECT_DIR = Path(__file__).resolve().parent / "project"
BACKEND = "ade-sagemaker"


def _as_dict(config: Any) -> dict[str, Any]:
    """The backend config as a dict. A config object gives the values set on it, not its defaults, so that
    output_dir can tell a bucket or prefix the caller chose from one nobody chose."""
    if config is None:
        return {}
    if is_dataclass(config):
        return {f.name: getattr(config, f.name) for f in fields(config)
                if getattr(config, f.name) is not None and getattr(config, f.name) != _default(f)}
    if isinstance(config, dict):
        return dict(config)
    from ade_mlflow_plugin.errors import ConfigError

    raise ConfigError(f"cloud_config must be a CloudTrainingConfig or a dict, got {type(config).__name__}")


def _default(field: Any) -> Any:
    if field.default is not MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not MISSING else MISSING


def _apply_output_dir(backend_config: dict[str, Any], output_dir: str | None) -> None:
    """output_dir: s3://bucket/prefix is the job's S3 home; a local folder is where the finished model
    lands (the backend config's output_dir), and in local mode also the job root (jobs/, cache/, ...)."""
    if not output_dir:
        return
    if str(output_dir).startswith("s3://"):
        bucket, _, prefix = str(output_dir)[5:].partition("/")
        for key, value in (("bucket", bucket), ("prefix", prefix.strip("/"))):
            given = backend_config.get(key)
            if value and given is not None and str(given).strip("/") != value:
                from ade_mlflow_plugin.errors import ConfigError

                raise ConfigError(f"output_dir '{output_dir}' and cloud_config {key} '{given}' differ: keep one")
            if value:
                backend_config[key] = value
        return
    folder = str(Path(output_dir).expanduser().resolve())
    given = backend_config.get("output_dir")
    if given and str(Path(given).expanduser().resolve()) != folder:
        from ade_mlflow_plugin.errors import ConfigError

        raise ConfigError(f"output_dir '{output_dir}' and cloud_config output_dir '{given}' differ: keep one")
    backend_config["output_dir"] = folder
    if backend_config.get("mode") == "local":
        backend_config.setdefault("job_root", folder)


#: What each registry_config key launch does not use is for instead (the refusal's fix).
_REGISTRY_ELSEWHERE = {
    "keep_versions": "a run's model landing in its folder keeps every version; keep_versions (max_versions) "
                     "prunes ADE storage on `ade-mlflow sync`/`watch`/`webhook-server`: pass it to those",
    "tracking_uri": "the run and its registered model go to MLflow's tracking server: set MLFLOW_TRACKING_URI "
                    "(or mlflow.set_tracking_uri) instead",
    "presigned_fetch": "set ADE_PRESIGNED_FETCH for the landing's download instead",
}


def registry_settings(registry_config: Any) -> ModelRegistryConfig:
    """registry_config as a ModelRegistryConfig, refusing (one line) keys launch would ignore.

    launch uses ``registered_model_name`` and ``root`` (``registry_path``: where the model lands, as a local
    output_dir does); every other key configures the registry's own commands, so setting one here is a
    mistake worth a line rather than a silent no-op.
    """
    if registry_config is None:
        return ModelRegistryConfig()
    if isinstance(registry_config, dict):
        config = ModelRegistryConfig.from_dict(registry_config)
    elif isinstance(registry_config, ModelRegistryConfig):
        config = registry_config
    else:
        from ade_mlflow_plugin.errors import ConfigError

        raise ConfigError(f"registry_config must be a ModelRegistryConfig or a dict, got "
                          f"{type(registry_config).__name__}")
    default = ModelRegistryConfig()
    for field in fields(ModelRegistryConfig):
        used = field.name in ("root", "registered_model_name")
        if used or getattr(config, field.name) == getattr(default, field.name):
            continue
        from ade_mlflow_plugin.errors import ConfigError

        fix = _REGISTRY_ELSEWHERE.get(field.name, "it configures `ade-mlflow watch`/`webhook-server`/`sync`: "
                                                  "pass it to those")
        # The key only, never its value: a tracking_uri may carry a token (this line reaches terminals and CI logs).
        raise ConfigError(f"registry_config {field.name} is not used by launch (only registered_model_name and "
                          f"root/registry_path are): {fix}")
    return config


def registered_name(registry_config: Any, codebase_path: str) -> str:
    """The name the model is registered under: the registry config's, else ade-<codebase folder name>;
    "" (given as such) registers nothing."""
    name = registry_settings(registry_config).registered_model_name
    return default_model_name(codebase_path) if name is None else name


def _apply_registry_root(backend_config: dict[str, Any], config: ModelRegistryConfig) -> None:
    """A registry root other than the default is where the model lands (the backend config's local
    output_dir); a different local output_dir as well is refused: keep one."""
    root = Path(config.root).expanduser().resolve()
    if root == Path(ModelRegistryConfig().root).expanduser().resolve():
        return
    given = backend_config.get("output_dir")
    if given and Path(given).expanduser().resolve() != root:
        from ade_mlflow_plugin.errors import ConfigError

        raise ConfigError(f"registry_config root '{root}' and output_dir '{given}' are two places for the model "
                          "to land: keep one")
    backend_config["output_dir"] = str(root)


def build_launch(codebase_path: str, output_dir: str | None, base_model: str, cloud_config: Any,
                 registry_config: Any, num_examples: int, synthetic_ratio: float,
                 params: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """-> (MLproject parameters, backend config) for the `main` entry point."""
    backend_config = _as_dict(cloud_config)
    _apply_output_dir(backend_config, output_dir)
    registry = registry_settings(registry_config)
    _apply_registry_root(backend_config, registry)
    name = default_model_name(codebase_path) if registry.registered_model_name is None \
        else registry.registered_model_name
    parameters = {"codebase": str(Path(codebase_path).expanduser().resolve()), "base_model": base_model,
                  "num_examples": str(num_examples), "synthetic_ratio": str(synthetic_ratio),
                  "registered_model_name": name}
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
@click.option("--output_dir", "--output-dir", default=None,
              help="s3://bucket/prefix: the job's S3 home; a local folder: the finished model lands in "
                   "<output_dir>/registry/<name>-v<N>/ (in local mode the job's files go there too).")
@click_option(TrainingConfig, "base_model", "--base_model", "--base-model")
@click_option(TrainingConfig, "num_examples", "--num_examples", "--num-examples")
@click_option(TrainingConfig, "synthetic_ratio", "--synthetic_ratio", "--synthetic-ratio")
@click_option(CloudTrainingConfig, "instance_type", "--instance_type", "--instance-type", default=None)
@click_option(CloudTrainingConfig, "instance_count", "--instance_count", "--instance-count", default=None)
@click_option(CloudTrainingConfig, "max_runtime_s", "--max_runtime", "--max-runtime", "--max_runtime_s",
              default=None, metavar="SECONDS")
@click_option(CloudTrainingConfig, "role_arn", "--role_arn", "--role-arn", default=None, metavar="ARN")
@click_option(CloudTrainingConfig, "bucket", "--bucket", default=None)
@click_option(CloudTrainingConfig, "region", "--region", default=None)
@click.option("--use_spot/--no_spot", "--use-spot/--no-spot", default=None, help="Managed spot training.")
@click_option(ModelRegistryConfig, "registered_model_name", "--registered_model_name", "--registered-model-name",
              "--model_name", default=None)
@click.option("--backend-config", "backend_config", default=None, help="Inline JSON or a .json file.")
@click.option("--local", is_flag=True, help="Run on this machine (mode local), no AWS account needed.")
@click.option("--experiment-name", default=None)
@click.option("--no-wait", is_flag=True, help="Return once the job is submitted.")
@click.option("-P", "--param", "extra", multiple=True, help="Any other MLproject parameter, NAME=VALUE.")
def launch_command(codebase_path: str, output_dir: str | None, base_model: str, num_examples: int,
                   synthetic_ratio: float, instance_type: str | None, instance_count: int | None,
                   max_runtime_s: int | None, role_arn: str | None, bucket: str | None, region: str | None,
                   use_spot: bool | None, registered_model_name: str | None, backend_config: str | None,
                   local: bool, experiment_name: str | None, no_wait: bool, extra: tuple[str, ...]) -> None:
    """Fine-tune BASE_MODEL on a codebase: the project's `main` entry through the ade-sagemaker backend."""
    config = _backend_config_option(backend_config)
    overrides = {"instance_type": instance_type, "instance_count": instance_count, "max_runtime_s": max_runtime_s,
                 "role_arn": role_arn, "bucket": bucket, "region": region, "use_spot": use_spot,
                 "mode": "local" if local else None}
    config.update({k: v for k, v in overrides.items() if v is not None})
    params = dict(_split_param(p) for p in extra)
    registry = {"registered_model_name": registered_model_name} if registered_model_name is not None else None
    parameters, config = build_launch(codebase_path, output_dir, base_model, config, registry, num_examples,
                                      synthetic_ratio, params)
    config["wait"] = not no_wait
    submitted = _run(parameters, config, experiment_name, synchronous=not no_wait)
    click.echo(json.dumps({"run_id": submitted.run_id, "job_name": submitted.job_name,
                           "status": submitted.get_status(),
                           "registered_model_name": parameters["registered_model_name"] or None}))
    if not no_wait and submitted.get_status() != "FINISHED":
        raise SystemExit(1)


def _split_param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        from ade_mlflow_plugin.errors import ConfigError

        raise ConfigError(f"-P '{text}': expected NAME=VALUE")
    return name, value


def main(argv: list[str] | None = None) -> Any:
    """`python -m ade_mlflow_plugin.launch ...`: `ade-mlflow launch ...` (same command, errors, exit
    codes); with no arguments, the usage and exit code 2 (it cannot run without --codebase_path)."""
    from ade_mlflow_plugin.cli import main as cli_main

    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        with click.Context(launch_command, info_name="python -m ade_mlflow_plugin.launch") as ctx:
            click.echo(ctx.get_help(), err=True)
        sys.exit(2)
    return cli_main(args, command=launch_command, prog_name="python -m ade_mlflow_plugin.launch")


if __name__ == "__main__":
    main()
