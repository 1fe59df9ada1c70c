"""CloudTrainingConfig: where and how the training job runs, read from `mlflow run ... --backend-config`.

A dict, inline JSON or a JSON file. Every key is declared once below (parser, default, help) with the
options kit; a bad value is one line naming the key, the value and what is expected, an unknown key
gets a did-you-mean. Keys are snake_case with units in their names.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from ade_mlflow_plugin.options import (Invalid, Style, boolean, choice, from_mapping, optional, option,
                                       options_class, parse_value, pattern, real, show_json, text, whole)

#: Keys MLflow adds to every backend config; they mean nothing to this backend.
MLFLOW_KEYS = frozenset({"ENV_MANAGER", "SYNCHRONOUS", "DOCKER_ARGS", "STORAGE_DIR", "build_image", "docker_auth"})
MAX_RUNTIME_LIMIT_S = 28 * 24 * 3600  # SageMaker's cap on MaxRuntimeInSeconds
#: The run tag that records ``output_dir`` (absolute) at submission: the backend writes it, and whatever sees
#: the job end later (status, reconcile, `ade-mlflow sync RUN_ID`) reads it, the registry included.
OUTPUT_DIR_TAG = "ade.output_dir"
# A credential word as a whole part of the name (parts split by _): GITHUB_TOKEN, DB_PASSWORD, AWS_SECRET_ACCESS_KEY,
# but not TOKENIZERS_PARALLELISM or MAX_TOKENS. Values are scanned too (secret_scan), whatever the name.
_SECRETISH = re.compile(r"(^|_)(SECRETS?|TOKEN|PASSWORDS?|PASSWD|CREDENTIALS?|PRIVATE_KEY|ACCESS_KEY|API_?KEY)(_|$)",
                        re.I)
#: Job environment names the contract owns (job/contract.py ENV_*: SageMaker's, the launcher's, the budget
#: guard's, the run's): refused in sagemaker mode (local-mode tests tune the budget guard through them).
_RESERVED_ENV = re.compile(r"(SM_|SAGEMAKER_|TRAINING_JOB_|ADE_BUDGET_).*|MLFLOW_(RUN_ID|EXPERIMENT_ID|TRACKING_URI)")
# Patterns carry (?a): Python's \d and \w match any Unicode digit or letter ("role/ª", "١٢"), which AWS refuses.
_BUCKET = r"(?!xn--)(?!.*-s3alias$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_KMS = r"(?a)(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[A-Za-z0-9/_-]+|[0-9a-f-]{36}|alias/[A-Za-z0-9/_-]+)"


def string_map(value: Any) -> dict[str, str]:
    """An object of string keys (values become strings); unset is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise Invalid("an object of string keys to string values")
    return {k: str(v) for k, v in value.items()}


def env_vars(value: Any) -> dict[str, str]:
    """Job environment variables; names that look like credentials are refused (DescribeTrainingJob
    shows the environment to anyone who may describe the job)."""
    env = string_map(value)
    for name in env:
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]{0,511}", name):
            raise Invalid("environment variable names of letters, digits and _", got=name)
        if _SECRETISH.search(name):
            raise Invalid("", detail=f"'{name}' looks like a credential; job environments are visible in "
                                     "DescribeTrainingJob, so give the job an IAM role or read it from Secrets "
                                     "Manager")
    _check_launcher_knobs(env)
    if env:
        # Values too, by the core's secret scanner, the one that checks what ships (detect-secrets loads
        # at the first scan); its ConfigError is the one line, naming the variable, never echoing the value.
        from ade_mlflow_plugin.secret_scan import check_environment_values

        check_environment_values(env)
    return env


#: The launcher's multi-host knobs a user may set (job/contract.py): name -> (lowest, highest, what, example). The
#: launcher reads them with int() on every host once the instances started: a bad value is refused here instead.
_LAUNCHER_KNOBS = {
    "ADE_RENDEZVOUS_TIMEOUT_S": (1, 10**9, "whole seconds > 0 (how long each host waits for the others)", "1200"),
    "ADE_MASTER_PORT": (1, 65535, "a TCP port 1-65535 (where the hosts meet)", "29500"),
    "ADE_NPROC_PER_NODE": (1, 1024, "a count of training processes per host, 1-1024", "8"),
}


def _check_launcher_knobs(env: dict[str, str]) -> None:
    for name, (lowest, highest, what, example) in _LAUNCHER_KNOBS.items():
        value = env.get(name)
        if value is not None and not (re.fullmatch(r"[0-9]{1,10}", value) and lowest <= int(value) <= highest):
            raise Invalid("", detail=f"{name}={value!r} must be {what}, such as \"{example}\": fix or remove it")


def path_patterns(value: Any) -> list[str]:
    """gitignore-style paths relative to the project; unset is empty."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise Invalid('a list of project paths such as ["tests/fixtures/"]')
    return [v.strip() for v in value]


def _tag_text(text: str) -> bool:
    """AWS's tag pattern [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*: letters, separators (spaces), numbers and _.:/=+-@."""
    return all(unicodedata.category(char)[0] in "LZN" or char in "_.:/=+-@" for char in text)


def aws_tags(value: Any) -> dict[str, str]:
    """AWS resource tags, within AWS's limits (checked here rather than by a failed CreateTrainingJob)."""
    parsed = string_map(value)
    for name, tag_value in parsed.items():
        if not 1 <= len(name) <= 128 or len(tag_value) > 256 or name.lower().startswith("aws:"):
            raise Invalid("tag keys of 1-128 chars (not aws:...) and values <= 256 chars", got={name: tag_value})
        if not (_tag_text(name) and _tag_text(tag_value)):
            raise Invalid("tag keys and values of letters, digits, spaces and _.:/=+-@", got={name: tag_value})
    return parsed


def id_list(prefix: str) -> Any:
    """A list of AWS ids such as subnet-0abc1234; unset is empty."""

    def parse(value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(
                isinstance(v, str) and re.fullmatch(rf"{prefix}-[0-9a-z]+", v) for v in value):
            raise Invalid(f'a list of ids like ["{prefix}-0abc1234"]')
        return list(value)

    return parse


def local_folder(value: Any) -> str | None:
    """A local folder, made absolute (~ expanded) so the follower, status and reconcile find the same
    one; an s3:// URI is refused: the job's S3 home is bucket and prefix."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise Invalid("a local folder path")
    if str(value).strip().startswith("s3://"):
        raise Invalid("", detail=f"got {str(value).strip()!r}: it is a local folder (the finished model lands "
                                 "in <output_dir>/registry/<name>-v<N>/); for S3 output set bucket and prefix")
    return writable_folder(value)


def writable_folder(value: Any) -> str | None:
    """A local folder this process can create and write, made absolute (~ expanded): checked when the
    config is read, so an unwritable one is one line before any run exists, not a traceback mid-job."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise Invalid("a local folder path")
    path = Path(str(value).strip()).expanduser().resolve()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise Invalid("", detail=f"got '{path}': {existing} is not a folder; give a folder path")
    try:  # a real write (os.access says yes to root, even on a read-only file system), left behind by nothing
        os.rmdir(tempfile.mkdtemp(prefix=".ade-write-check-", dir=existing))
    except OSError as exc:
        raise Invalid("", detail=f"got '{path}': {existing} cannot be written here ({exc.strerror}); give a "
                                 "writable folder") from None
    return str(path)


def _kms() -> Any:
    return optional(pattern(_KMS, "a KMS key id, alias or ARN"))


@options_class
@dataclass
class CloudTrainingConfig:
    """Where and how the training job runs. Keys are snake_case with units in their names."""

    OPTIONS_STYLE: ClassVar[Style] = Style("backend config", show=show_json)

    mode: str = option("sagemaker", choice("sagemaker", "local"),
                       "sagemaker: a SageMaker training job; local: the same job on this machine, no AWS")
    region: str | None = option(None, optional(pattern(r"(?a)[a-z]{2}(-gov)?-[a-z]+-\d",
                                                       'an AWS region such as "us-east-1"')),
                                "AWS region (default: the profile's or AWS_DEFAULT_REGION)")
    aws_profile: str | None = option(None, optional(text(required=True)), "AWS profile for the client's calls")
    role_arn: str | None = option(None, optional(pattern(r"(?a)arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+",
                                                         'an IAM role ARN such as '
                                                         '"arn:aws:iam::123456789012:role/SageMakerRole"')),
                                  "IAM role the job runs as (required in sagemaker mode)")
    bucket: str | None = option(None, optional(pattern(_BUCKET, "an S3 bucket name (3-63 lowercase letters, "
                                                                "digits, dots, hyphens)")),
                                "S3 bucket for code, data, checkpoints and model output (required in sagemaker mode)")
    prefix: str = option("ade-mlflow", pattern(r"[A-Za-z0-9!_.*'()/-]{0,200}", 'an S3 key prefix such as "ade-mlflow"'),
                         "S3 key prefix under the bucket")
    instance_type: str = option("ml.g5.2xlarge", pattern(r"ml\.[a-z0-9-]+\.[a-z0-9]+|local",
                                                         'a SageMaker instance type such as "ml.g5.2xlarge"'),
                                "SageMaker instance type")
    instance_count: int = option(1, whole(1, 100), "instances (hosts); more than one trains data-parallel")
    volume_size_gb: int = option(100, whole(1, 16384), "EBS volume per instance, GB", aliases=("volume_size",))
    max_runtime_s: int = option(24 * 3600, whole(1, MAX_RUNTIME_LIMIT_S),
                                "longest the job may train before SageMaker stops it, seconds",
                                aliases=("max_runtime",))
    use_spot: bool = option(False, boolean(strict=True), "managed spot training (cheaper, may be interrupted)")
    max_wait_s: int | None = option(None, optional(whole(1, MAX_RUNTIME_LIMIT_S)),
                                    "spot only: longest wait for capacity plus training, seconds "
                                    "(default: twice max_runtime_s)")
    checkpoint_s3_uri: str | None = option(None, optional(pattern(
        r"(s3://[a-z0-9][a-z0-9.-]+[a-z0-9](/.*)?|file://.+|/.+)",
        "an s3://bucket/prefix URI (or a local path in local mode)")),
        "where checkpoints sync to (default: under the bucket and prefix)")
    image_uri: str | None = option(None, optional(pattern(
        r"(?a)[\w.-]+(:\d+)?(/[\w.-]+)+(:[\w.-]+|@sha256:[0-9a-f]{64})?",
        'a container image URI such as "<account>.dkr.ecr.<region>.amazonaws.com/repo:tag"')),
        "training image (default: AWS's PyTorch training image for framework_version/py_version)",
        aliases=("training_image",))
    framework_version: str = option("2.5", pattern(r"(?a)\d+\.\d+(\.\d+)?", 'a PyTorch version such as "2.5"'),
                                    "PyTorch version of the default training image")
    py_version: str = option("py311", pattern(r"(?a)py3\d+", 'a Python tag such as "py311"'),
                             "Python tag of the default training image")
    environment: dict[str, str] = option({}, env_vars, "extra job environment variables (no credentials)",
                                         default_factory=dict)
    allow_secret_files: list[str] = option([], path_patterns,
                                           "project files shipped even though the secret scan flags them "
                                           "(gitignore-style paths relative to the project, e.g. "
                                           "[\"tests/fixtures/\"]); every other finding refuses the upload",
                                           default_factory=list)
    tags: dict[str, str] = option({}, aws_tags, "AWS tags on the training job", default_factory=dict)
    subnets: list[str] = option([], id_list("subnet"), "VPC subnets (with security_group_ids)", default_factory=list)
    security_group_ids: list[str] = option([], id_list("sg"), "VPC security groups (with subnets)",
                                           default_factory=list)
    volume_kms_key_id: str | None = option(None, _kms(), "KMS key for the instance volumes")
    output_kms_key_id: str | None = option(None, _kms(), "KMS key for the model output in S3")
    enable_network_isolation: bool = option(False, boolean(strict=True), "no network access from the container")
    wheelhouse: str = option("auto", choice("auto", "always", "never"),
                             "ship the job's requirements as a wheelhouse input channel and install offline: "
                             "auto = with enable_network_isolation, always = also for jobs that could "
                             "pip-install (no download on each spot restart), never")
    enable_inter_container_traffic_encryption: bool = option(False, boolean(strict=True),
                                                             "encrypt traffic between instances")
    keep_alive_period_s: int = option(0, whole(0, 3600), "warm pool keep-alive after the job, seconds (not spot)")
    max_retry_attempts: int = option(1, whole(1, 30), "SageMaker's retries of a job stopped by an internal error")
    max_cost_usd: float | None = option(None, optional(real(0, lo_open=True)), "budget in US dollars")
    on_budget: str = option("stop", choice("stop", "alert"), "at max_cost_usd: stop the job, or only alert")
    tracking_uri: str | None = option(None, optional(text(required=True)),
                                      "MLflow tracking URI the job logs to (default: the client's)")
    wait: bool = option(True, boolean(strict=True), "follow the job until it ends (false: return once submitted)")
    poll_interval_s: int = option(15, whole(1, 600), "seconds between status polls (1 in local mode)",
                                  aliases=("metrics_interval",))
    base_job_name: str = option("ade", pattern(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,39}",
                                               "letters, digits and hyphens, at most 40 characters"),
                                "start of the training job's name")
    sync_checkpoints: str | None = option(None, local_folder,
                                          "local folder the follower copies each kept checkpoint into while "
                                          "it follows the job (atomic, checksummed; issue 18)")
    job_root: str | None = option(None, writable_folder,
                                  "local mode: folder the job's files go in (default: ./.ade)")
    output_dir: str | None = option(None, local_folder,
                                    "local folder the finished model lands in when the job ends, in ADE "
                                    "storage's layout (<output_dir>/registry/<name>-v<N>/), in either mode; "
                                    "landed by whatever sees the job end (the follower, ade-mlflow status or "
                                    "reconcile)", metavar="DIR")

    @classmethod
    def from_backend_config(cls, raw: dict[str, Any] | str | None) -> "CloudTrainingConfig":
        """Parse and validate `--backend-config` (dict, inline JSON or a .json path)."""
        data = read_backend_config(raw)
        if "poll_interval_s" not in data and "mode" in data and parse_value(cls, "mode", data["mode"]) == "local":
            data["poll_interval_s"] = 1  # a local job is next door: follow it closely
        return from_mapping(cls, data, ignore=MLFLOW_KEYS)

    def check_combinations(self) -> None:
        """Checks between keys; fills max_wait_s for spot."""
        if self.mode == "sagemaker":
            self._check_sagemaker()
        if self.max_wait_s is not None and not self.use_spot:
            raise _error("backend config 'max_wait_s' only applies to spot training: set "
                         "\"use_spot\": true or remove it")
        if self.use_spot:
            if self.max_wait_s is None:
                self.max_wait_s = min(2 * self.max_runtime_s, MAX_RUNTIME_LIMIT_S)
            if self.max_wait_s < self.max_runtime_s:
                raise _bad("max_wait_s", self.max_wait_s, f">= max_runtime_s ({self.max_runtime_s})")
        if bool(self.subnets) != bool(self.security_group_ids):
            raise _error("backend config 'subnets' and 'security_group_ids' go together: set both "
                         "for a VPC job or neither")
        if self.use_spot and self.keep_alive_period_s:
            raise _error("backend config 'keep_alive_period_s' (warm pools) is not available with "
                         "spot training: remove one of them")

    def _check_sagemaker(self) -> None:
        if not self.role_arn:
            raise _error("backend config 'role_arn' is required in sagemaker mode: the IAM role "
                         "the job runs as (or use \"mode\": \"local\")")
        if not self.bucket:
            raise _error("backend config 'bucket' is required in sagemaker mode: the S3 bucket for "
                         "code, data, checkpoints and model output")
        if self.instance_type == "local":
            raise _bad("instance_type", "local", "a SageMaker instance type in sagemaker mode")
        reserved = sorted(name for name in self.environment if _RESERVED_ENV.match(name))
        if reserved:
            raise _error(f"backend config 'environment': {', '.join(reserved)} belong to the job's contract (SageMaker "
                         "and the launcher set them; a value here would override the run, paths or the budget "
                         "guard): remove them")
        if "ADE_MASTER_ADDR" in self.environment:
            raise _error("backend config 'environment': ADE_MASTER_ADDR is for local mode (its hosts meet on this "
                         "machine); on SageMaker the hosts meet at the first host, algo-1, and any other address "
                         "(127.0.0.1: each host's own) leaves them waiting until the rendezvous timeout: remove it")
        if self.checkpoint_s3_uri and not self.checkpoint_s3_uri.startswith("s3://"):
            # SageMaker syncs checkpoints to S3 only; found here, before the project is uploaded
            raise _bad("checkpoint_s3_uri", self.checkpoint_s3_uri, "an s3://bucket/prefix URI in sagemaker "
                       "mode (a local path works only with \"mode\": \"local\")")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _error(message: str) -> Exception:
    from ade_mlflow_plugin.errors import ConfigError  # errors.py imports mlflow: only when failing

    return ConfigError(message)


def _bad(key: str, value: Any, expected: str) -> Exception:
    return CloudTrainingConfig.OPTIONS_STYLE.bad_value(key, value, Invalid(expected))


def read_backend_config(raw: dict[str, Any] | str | None) -> dict[str, Any]:
    """The backend config as a dict: given as one, as inline JSON, or as the path of a .json file."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return dict(raw)
    content = raw.strip()
    if not content.startswith("{"):
        path = Path(content)
        if not path.is_file():
            raise _error(f"backend config file '{raw}' not found: pass inline JSON or a path to a .json file")
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise _error(f"backend config file '{raw}' cannot be read ({reason}): pass a JSON file") from None
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise _error(f"backend config is not valid JSON ({exc.msg} at line {exc.lineno} "
                     f"column {exc.colno}): fix the JSON") from None
    if not isinstance(data, dict):
        raise _error("backend config must be a JSON object such as {\"mode\": \"local\"}")
    return data
