"""Configuration objects, validated before any AWS call.

`CloudTrainingConfig` is read from `mlflow run ... --backend-config` (a dict, inline JSON or a JSON
file). Every key is checked with a message that names the key, the bad value and what is expected;
an unknown key gets a did-you-mean. `TrainingConfig` and `ModelRegistryConfig` live with their
concerns (training/, registry/) and are re-exported here lazily so this module imports no torch.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from ade_mlflow_plugin.errors import ConfigError

# Keys MLflow adds to every backend config; they mean nothing to this backend.
MLFLOW_KEYS = {"ENV_MANAGER", "SYNCHRONOUS", "DOCKER_ARGS", "STORAGE_DIR", "build_image", "docker_auth"}
MAX_RUNTIME_LIMIT_S = 28 * 24 * 3600  # SageMaker's cap on MaxRuntimeInSeconds
_SECRETISH = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY|API_KEY)", re.I)


def _fail(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"backend config '{key}': got {json.dumps(value, default=str)}, expected {expected}")


def _int(lo: int, hi: int | None = None) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _fail(key, value, f"an integer >= {lo}")
        try:
            number = float(value)
        except ValueError:
            raise _fail(key, value, f"an integer >= {lo}") from None
        if number != int(number) or number < lo or (hi is not None and number > hi):
            span = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise _fail(key, value, f"an integer {span}")
        return int(number)

    return check


def _positive_float(key: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(key, value, "a positive number of US dollars") from None
    if isinstance(value, bool) or number <= 0:
        raise _fail(key, value, "a positive number of US dollars")
    return number


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise _fail(key, value, "true or false")


def _choice(*options: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value not in options:
            raise _fail(key, value, " or ".join(repr(o) for o in options))
        return value

    return check


def _pattern(regex: str, expected: str, optional: bool = True) -> Callable[[str, Any], Any]:
    compiled = re.compile(regex)

    def check(key: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise _fail(key, value, expected)
        return value

    return check


def _string_map(key: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _fail(key, value, "an object of string keys to string values")
    return {k: str(v) for k, v in value.items()}


def _environment(key: str, value: Any) -> dict[str, str]:
    env = _string_map(key, value)
    for name in env:
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]{0,511}", name):
            raise _fail(key, name, "environment variable names of letters, digits and _")
        if _SECRETISH.search(name):
            raise ConfigError(
                f"backend config 'environment': '{name}' looks like a credential; job environments are "
                "visible in DescribeTrainingJob, so give the job an IAM role or read it from Secrets Manager"
            )
    return env


def _tags(key: str, value: Any) -> dict[str, str]:
    tags = _string_map(key, value)
    for name, tag_value in tags.items():
        if not 1 <= len(name) <= 128 or len(tag_value) > 256 or name.lower().startswith("aws:"):
            raise _fail(key, {name: tag_value}, "tag keys of 1-128 chars (not aws:...) and values <= 256 chars")
    return tags


def _id_list(prefix: str) -> Callable[[str, Any], list[str]]:
    def check(key: str, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(
            isinstance(v, str) and re.fullmatch(rf"{prefix}-[0-9a-z]+", v) for v in value
        ):
            raise _fail(key, value, f'a list of ids like ["{prefix}-0abc1234"]')
        return value

    return check


def _string(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, value, "a non-empty string")
    return value


_BUCKET = r"(?!xn--)(?!.*-s3alias$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_KMS = r"(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[A-Za-z0-9/_-]+|[0-9a-f-]{36}|alias/[A-Za-z0-9/_-]+)"

VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "mode": _choice("sagemaker", "local"),
    "region": _pattern(r"[a-z]{2}(-gov)?-[a-z]+-\d", "an AWS region such as \"us-east-1\""),
    "aws_profile": _string,
    "role_arn": _pattern(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+",
                         'an IAM role ARN such as "arn:aws:iam::123456789012:role/SageMakerRole"'),
    "bucket": _pattern(_BUCKET, "an S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)"),
    "prefix": _pattern(r"[A-Za-z0-9!_.*'()/-]{0,200}", "an S3 key prefix such as \"ade-mlflow\"", False),
    "instance_type": _pattern(r"ml\.[a-z0-9-]+\.[a-z0-9]+|local", 'a SageMaker instance type such as "ml.g5.2xlarge"',
                              False),
    "instance_count": _int(1, 100),
    "volume_size_gb": _int(1, 16384),
    "max_runtime_s": _int(1, MAX_RUNTIME_LIMIT_S),
    "use_spot": _bool,
    "max_wait_s": lambda k, v: None if v is None else _int(1, MAX_RUNTIME_LIMIT_S)(k, v),
    "checkpoint_s3_uri": _pattern(r"(s3://[a-z0-9][a-z0-9.-]+[a-z0-9](/.*)?|file://.+|/.+)",
                                  "an s3://bucket/prefix URI (or a local path in local mode)"),
    "image_uri": _pattern(r"[\w.-]+(:\d+)?(/[\w.-]+)+(:[\w.-]+|@sha256:[0-9a-f]{64})?",
                          "a container image URI such as \"<account>.dkr.ecr.<region>.amazonaws.com/repo:tag\""),
    "framework_version": _pattern(r"\d+\.\d+(\.\d+)?", 'a PyTorch version such as "2.5"', False),
    "py_version": _pattern(r"py3\d+", 'a Python tag such as "py311"', False),
    "environment": _environment,
    "tags": _tags,
    "subnets": _id_list("subnet"),
    "security_group_ids": _id_list("sg"),
    "volume_kms_key_id": _pattern(_KMS, "a KMS key id, alias or ARN"),
    "output_kms_key_id": _pattern(_KMS, "a KMS key id, alias or ARN"),
    "enable_network_isolation": _bool,
    "enable_inter_container_traffic_encryption": _bool,
    "keep_alive_period_s": _int(0, 3600),
    "max_retry_attempts": _int(1, 30),
    "max_cost_usd": _positive_float,
    "on_budget": _choice("stop", "alert"),
    "tracking_uri": _string,
    "wait": _bool,
    "poll_interval_s": _int(1, 600),
    "base_job_name": _pattern(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,39}",
                              "letters, digits and hyphens, at most 40 characters", False),
    "job_root": _string,
}


@dataclass
class CloudTrainingConfig:
    """Where and how the training job runs. Keys are snake_case with units in their names."""

    mode: str = "sagemaker"
    region: str | None = None
    aws_profile: str | None = None
    role_arn: str | None = None
    bucket: str | None = None
    prefix: str = "ade-mlflow"
    instance_type: str = "ml.g5.2xlarge"
    instance_count: int = 1
    volume_size_gb: int = 100
    max_runtime_s: int = 24 * 3600
    use_spot: bool = False
    max_wait_s: int | None = None
    checkpoint_s3_uri: str | None = None
    image_uri: str | None = None
    framework_version: str = "2.5"
    py_version: str = "py311"
    environment: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    subnets: list[str] = field(default_factory=list)
    security_group_ids: list[str] = field(default_factory=list)
    volume_kms_key_id: str | None = None
    output_kms_key_id: str | None = None
    enable_network_isolation: bool = False
    enable_inter_container_traffic_encryption: bool = False
    keep_alive_period_s: int = 0
    max_retry_attempts: int = 1
    max_cost_usd: float | None = None
    on_budget: str = "stop"
    tracking_uri: str | None = None
    wait: bool = True
    poll_interval_s: int = 15
    base_job_name: str = "ade"
    job_root: str | None = None

    @classmethod
    def from_backend_config(cls, raw: dict[str, Any] | str | None) -> "CloudTrainingConfig":
        """Parse and validate `--backend-config` (dict, inline JSON or a .json path)."""
        data = _load_raw(raw)
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in MLFLOW_KEYS:
                continue
            if key not in known:
                hint = difflib.get_close_matches(key, sorted(known), n=1)
                fix = f"did you mean '{hint[0]}'?" if hint else f"known keys: {', '.join(sorted(known))}"
                raise ConfigError(f"backend config: unknown key '{key}' ({fix})")
            values[key] = VALIDATORS[key](key, value)
        if "poll_interval_s" not in values and values.get("mode") == "local":
            values["poll_interval_s"] = 1
        config = cls(**{k: v for k, v in values.items() if v is not None or k in {"max_wait_s"}})
        config._check_combinations()
        return config

    def _check_combinations(self) -> None:
        if self.mode == "sagemaker":
            if not self.role_arn:
                raise ConfigError("backend config 'role_arn' is required in sagemaker mode: the IAM role "
                                  "the job runs as (or use \"mode\": \"local\")")
            if not self.bucket:
                raise ConfigError("backend config 'bucket' is required in sagemaker mode: the S3 bucket for "
                                  "code, data, checkpoints and model output")
            if self.instance_type == "local":
                raise _fail("instance_type", "local", "a SageMaker instance type in sagemaker mode")
        if self.max_wait_s is not None and not self.use_spot:
            raise ConfigError("backend config 'max_wait_s' only applies to spot training: set "
                              "\"use_spot\": true or remove it")
        if self.use_spot:
            if self.max_wait_s is None:
                self.max_wait_s = min(2 * self.max_runtime_s, MAX_RUNTIME_LIMIT_S)
            if self.max_wait_s < self.max_runtime_s:
                raise _fail("max_wait_s", self.max_wait_s, f">= max_runtime_s ({self.max_runtime_s})")
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ConfigError("backend config 'subnets' and 'security_group_ids' go together: set both "
                              "for a VPC job or neither")
        if self.use_spot and self.keep_alive_period_s:
            raise ConfigError("backend config 'keep_alive_period_s' (warm pools) is not available with "
                              "spot training: remove one of them")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_raw(raw: dict[str, Any] | str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return dict(raw)
    text = raw.strip()
    if not text.startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"backend config file '{raw}' not found: pass inline JSON or a path to a .json file")
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"backend config is not valid JSON ({exc.msg} at line {exc.lineno} "
                          f"column {exc.colno}): fix the JSON") from None
    if not isinstance(data, dict):
        raise ConfigError("backend config must be a JSON object such as {\"mode\": \"local\"}")
    return data


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import ade_mlflow_plugin.config` free of training/registry imports.
    if name == "TrainingConfig":
        from ade_mlflow_plugin.training.config import TrainingConfig

        return TrainingConfig
    if name == "ModelRegistryConfig":
        from ade_mlflow_plugin.registry.config import ModelRegistryConfig

        return ModelRegistryConfig
    raise AttributeError(name)
