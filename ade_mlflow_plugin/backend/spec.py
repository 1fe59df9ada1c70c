"""PURE: config + project inputs + MLflow run -> a CreateTrainingJob request. No boto3 here.

Everything the job needs travels in the request (docs/job-contract.md), so whatever executes
DescribeTrainingJob's answer (SageMaker, AWS's toolkit, our local runner) runs the same job. The wire
format itself (hyperparameter keys, channel names, environment) is job/contract.py's encode().
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.job.bootstrap import container_entrypoint
from ade_mlflow_plugin.job.contract import RunInfo

LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/ade-local-mode"
_JOB_NAME_MAX = 63


@dataclass(frozen=True)
class Channel:
    """An input channel: a path param shipped as data."""

    name: str
    uri: str
    file_name: str | None = None  # set when the param named one file, not a directory


@dataclass(frozen=True)
class JobInputs:
    """What the backend resolved before building the request."""

    job_name: str
    entry_point: str
    image_uri: str
    code_uri: str
    output_uri: str
    checkpoint_uri: str
    run: RunInfo
    params: dict[str, str] = field(default_factory=dict)
    channel_params: dict[str, Channel] = field(default_factory=dict)
    cost: contract.Cost | None = None  # the price (and budget) the job keeps itself; caps MaxRuntime
    wheelhouse_uri: str | None = None  # the job's requirements as wheels: contract.WHEELHOUSE_CHANNEL


#: The curves SageMaker (console, CloudWatch) draws from the job's output, with no MLflow at all: the
#: training callbacks and the launcher print one `ade-metrics step=N name=value ...` line per log, and the
#: entry's final report carries eval_loss=... (DESIGN's metric names).
METRIC_NAMES = ("train_loss", "eval_loss", "learning_rate", "tokens_per_second", "cost_usd")
_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def metric_definitions() -> list[dict[str, str]]:
    return [{"Name": name, "Regex": rf"\b{name}={_NUMBER}"} for name in METRIC_NAMES]


def make_job_name(base: str, now: datetime | None = None, suffix: str | None = None) -> str:
    """`<base>-<UTC yyyymmdd-hhmmss>-<4 hex>`: unique, sortable and valid for SageMaker (<= 63 chars)."""
    now = now or datetime.now(timezone.utc)
    suffix = suffix or secrets.token_hex(2)
    stem = re.sub(r"[^a-zA-Z0-9-]+", "-", base).strip("-") or "ade"
    tail = f"-{now:%Y%m%d-%H%M%S}-{suffix}"
    return stem[: _JOB_NAME_MAX - len(tail)].rstrip("-") + tail


def check_tracking_uri(uri: str) -> None:
    """A tracking URI travels in the request: refuse one that carries a credential."""
    parts = urlsplit(uri)
    if parts.password or (parts.username and parts.scheme in {"http", "https"}):
        raise ConfigError(
            "the MLflow tracking URI carries a user name or password, which would be visible in the job "
            "description: drop it from the URI: use a SageMaker managed MLflow server (tracking_uri = its ARN; "
            "the job role authenticates) or a URI the job reaches without a password (the README explains the relay)"
        )


def job_contract(inputs: JobInputs, region: str) -> contract.JobContract:
    """What the job must be told, in the contract's terms."""
    channels = {param: contract.ChannelParam(c.name, c.file_name) for param, c in inputs.channel_params.items()}
    taken = [param for param, c in channels.items() if c.channel == contract.WHEELHOUSE_CHANNEL]
    if taken and inputs.wheelhouse_uri:
        raise ConfigError(f"parameter '{taken[0]}': its input channel name '{contract.WHEELHOUSE_CHANNEL}' is "
                          "the wheelhouse's; rename the parameter or set \"wheelhouse\": \"never\"")
    return contract.JobContract(code_uri=inputs.code_uri, region=region, entry_point=inputs.entry_point,
                                run=inputs.run, params=dict(inputs.params), channel_params=channels,
                                cost=inputs.cost, wheelhouse=inputs.wheelhouse_uri is not None)


def _checked(hyperparameters: dict[str, str]) -> dict[str, str]:
    limit = contract.HYPERPARAMETER_MAX_CHARS
    for key, value in hyperparameters.items():
        if len(value) > limit:
            raise ConfigError(f"parameters too long for SageMaker ({key} is {len(value)} > {limit} "
                              "characters): pass long values as a file through a path parameter")
    return hyperparameters


def _channels(inputs: JobInputs, names: list[str]) -> list[dict[str, Any]]:
    uris = {c.name: c.uri for c in inputs.channel_params.values()}
    if inputs.wheelhouse_uri is not None:
        uris[contract.WHEELHOUSE_CHANNEL] = inputs.wheelhouse_uri
    return [
        {
            "ChannelName": name,
            "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": uris[name], "S3DataDistributionType": "FullyReplicated",
            }},
            "InputMode": "File",
        }
        for name in names
    ]


def _tags(config: CloudTrainingConfig, inputs: JobInputs) -> list[dict[str, str]]:
    tags = {"mlflow.run_id": inputs.run.run_id, "mlflow.experiment_id": inputs.run.experiment_id,
            "ade.entry_point": inputs.entry_point}
    tags.update(config.tags)
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _resources(config: CloudTrainingConfig) -> dict[str, Any]:
    resources: dict[str, Any] = {
        "InstanceType": config.instance_type,
        "InstanceCount": config.instance_count,
        "VolumeSizeInGB": config.volume_size_gb,
    }
    if config.volume_kms_key_id:
        resources["VolumeKmsKeyId"] = config.volume_kms_key_id
    if config.keep_alive_period_s:
        resources["KeepAlivePeriodInSeconds"] = config.keep_alive_period_s
    return resources


def _algorithm(config: CloudTrainingConfig, inputs: JobInputs) -> dict[str, Any]:
    algorithm: dict[str, Any] = {"TrainingImage": inputs.image_uri, "TrainingInputMode": "File",
                                 "MetricDefinitions": metric_definitions()}
    if config.mode == "sagemaker":
        # SageMaker signals only PID 1 on stop and spot reclaim, and AWS's toolkit does not pass SIGTERM on
        # (aws/sagemaker-training-toolkit#125): the bootstrap makes our launcher PID 1 so the entry gets
        # its 120 s to checkpoint. It unpacks sagemaker_submit_directory exactly as the toolkit would.
        algorithm.update(container_entrypoint())
    return algorithm


def max_runtime_s(config: CloudTrainingConfig, cost: contract.Cost | None) -> int:
    """max_runtime_s, capped so that SageMaker itself stops the job before it can spend max_cost_usd.

    Local jobs cost nothing and keep max_runtime_s: their budget is rehearsed by the launcher alone.
    """
    affordable = cost.affordable_s(config.instance_count) if cost is not None else None
    if affordable is None or config.mode != "sagemaker":
        return config.max_runtime_s
    return max(1, min(config.max_runtime_s, affordable))


def stopping_condition(config: CloudTrainingConfig, cost: contract.Cost | None) -> dict[str, int]:
    runtime = max_runtime_s(config, cost)
    stopping = {"MaxRuntimeInSeconds": runtime}
    if config.use_spot:
        # The time allowed to wait for spot capacity stays as configured; only the training part shrinks,
        # and SageMaker's rule MaxWait >= MaxRuntime holds.
        wait_for_capacity = (config.max_wait_s or config.max_runtime_s) - config.max_runtime_s
        stopping["MaxWaitTimeInSeconds"] = runtime + max(0, wait_for_capacity)
    return stopping


def build_training_job_request(config: CloudTrainingConfig, inputs: JobInputs, region: str) -> dict[str, Any]:
    """The complete CreateTrainingJob request (validated against the service model in the tests)."""
    stopping = stopping_condition(config, inputs.cost)
    output: dict[str, Any] = {"S3OutputPath": inputs.output_uri}
    if config.output_kms_key_id:
        output["KmsKeyId"] = config.output_kms_key_id
    wire = contract.encode(job_contract(inputs, region))
    request: dict[str, Any] = {
        "TrainingJobName": inputs.job_name,
        "AlgorithmSpecification": _algorithm(config, inputs),
        "RoleArn": config.role_arn or LOCAL_ROLE_ARN,
        "HyperParameters": _checked(wire.hyperparameters),
        "OutputDataConfig": output,
        "ResourceConfig": _resources(config),
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": config.use_spot,
        "CheckpointConfig": {"S3Uri": inputs.checkpoint_uri,
                             "LocalPath": str(contract.CONTAINER_PATHS.checkpoint_dir)},
        "EnableNetworkIsolation": config.enable_network_isolation,
        "EnableInterContainerTrafficEncryption": config.enable_inter_container_traffic_encryption,
        "Environment": {**config.environment, **wire.environment},
        "Tags": _tags(config, inputs),
    }
    channels = _channels(inputs, wire.channel_names)
    if channels:
        request["InputDataConfig"] = channels
    if config.subnets:
        request["VpcConfig"] = {"SecurityGroupIds": config.security_group_ids, "Subnets": config.subnets}
    if config.max_retry_attempts > 1:
        request["RetryStrategy"] = {"MaximumRetryAttempts": config.max_retry_attempts}
    return request


def console_url(region: str, job_name: str) -> str:
    return (f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}"
            f"#/jobs/{job_name}")
