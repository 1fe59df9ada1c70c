"""The job contract: every name the client and the job must agree on, and the one encode/decode.

Two halves, one module:
- the client (backend/spec.py) calls :func:`encode` on a :class:`JobContract` and puts the result in the
  CreateTrainingJob request: HyperParameters, the InputDataConfig channel names, Environment;
- the job (launcher.py) calls :func:`decode` on what SageMaker (or AWS's toolkit, or our local runner,
  through :func:`write_contract`) wrote under ``/opt/ml`` and gets the same :class:`JobContract` back.
No hyperparameter key, channel name or contract environment variable is spelled anywhere else.

The contract is rooted at a configurable base: SageMaker mounts everything under /opt/ml; AWS's toolkit
honours SAGEMAKER_BASE_DIR to move that root, and so do we (the local runner plays /opt/ml in a job root).

bootstrap.py is the one job module that cannot import this one: it travels alone, base64-encoded inside
the request's ContainerArguments, before any code is on the machine. Rather than ship this whole module
beside it (the arguments are capped at 100 x 256 characters, and this module grows with every job input),
``bootstrap.container_entrypoint()`` replaces its ``import contract`` line with the few constants it uses
(:data:`BOOTSTRAP_NAMES`), taken from here when the request is built; a test checks the traveling source.
This module itself stays standard-library only: the launcher imports it before the job's requirements
are installed.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlparse

# ---------------------------------------------------------------- where things are (under the base)
DEFAULT_BASE = "/opt/ml"
HYPERPARAMETERS_FILE = "input/config/hyperparameters.json"
RESOURCE_CONFIG_FILE = "input/config/resourceconfig.json"
INPUT_DATA_CONFIG_FILE = "input/config/inputdataconfig.json"
CHANNELS_DIR = "input/data"
#: The input channel that carries the job's requirements as wheels (backend/wheelhouse.py builds it); the job
#: installs from it with `pip install --no-index`. Path parameters cannot take this name (spec.py refuses it).
WHEELHOUSE_CHANNEL = "ade_wheelhouse"
#: Where the job installs from the wheelhouse (`pip install --prefix`): under the base, so a local job never
#: writes into the developer's environment; deps.py puts its site-packages on sys.path and PYTHONPATH.
SITE_DIR = "ade-site"
CODE_DIR = "code"
FAILURE_FILE = "output/failure"
#: The toolkit's ``sagemaker_program``: puts BUNDLE_DIR on sys.path and runs LAUNCHER_MODULE's main().
SHIM_NAME = "ade_entry.py"
#: This package's own source inside the code archive, so the image needs no plugin install.
BUNDLE_DIR = "_ade_bundle"
LAUNCHER_MODULE = "ade_mlflow_plugin.job.launcher"

# ---------------------------------------------------------------- hyperparameter keys
# The sagemaker_* keys are AWS's toolkit's own names: an image started by the toolkit's `train` finds
# the code and the program through them.
HP_PROGRAM = "sagemaker_program"
HP_SUBMIT_DIRECTORY = "sagemaker_submit_directory"
HP_REGION = "sagemaker_region"
HP_ENTRY_POINT = "ade_entry_point"
HP_PARAMS = "ade_params"
HP_CHANNEL_PARAMS = "ade_channel_params"
HP_FILE_PARAMS = "ade_file_params"
HP_RUN_ID = "mlflow_run_id"
HP_EXPERIMENT_ID = "mlflow_experiment_id"
HP_TRACKING_URI = "mlflow_tracking_uri"
# The price and budget (only when the client knew a price): the launcher logs cost_usd and keeps the budget.
HP_USD_PER_HOUR = "ade_usd_per_hour"
HP_PRICE_SOURCE = "ade_price_source"
HP_MAX_COST_USD = "ade_max_cost_usd"
HP_ON_BUDGET = "ade_on_budget"
#: "true" when the request carries the wheelhouse channel (absent otherwise, as before issue 16).
HP_WHEELHOUSE = "ade_wheelhouse"
#: SageMaker's limit on one hyperparameter value.
HYPERPARAMETER_MAX_CHARS = 2500
DEFAULT_ENTRY_POINT = "main"

# ---------------------------------------------------------------- environment
ENV_BASE_DIR = "SAGEMAKER_BASE_DIR"
ENV_JOB_NAME = "TRAINING_JOB_NAME"  # set by SageMaker in every training container
ENV_JOB_ARN = "TRAINING_JOB_ARN"
# MLflow's own variables: the entry attaches to the run the backend created.
ENV_RUN_ID = "MLFLOW_RUN_ID"
ENV_EXPERIMENT_ID = "MLFLOW_EXPERIMENT_ID"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
# What the launcher hands the entry (the SM_* names are the toolkit's documented ones).
ENV_MODEL_DIR = "SM_MODEL_DIR"
ENV_OUTPUT_DIR = "SM_OUTPUT_DIR"
ENV_OUTPUT_DATA_DIR = "SM_OUTPUT_DATA_DIR"
ENV_INPUT_DIR = "SM_INPUT_DIR"
ENV_INPUT_CONFIG_DIR = "SM_INPUT_CONFIG_DIR"
ENV_CHANNELS = "SM_CHANNELS"
ENV_CHANNEL_PREFIX = "SM_CHANNEL_"
ENV_HOSTS = "SM_HOSTS"
ENV_CURRENT_HOST = "SM_CURRENT_HOST"
ENV_NUM_GPUS = "SM_NUM_GPUS"
ENV_NUM_CPUS = "SM_NUM_CPUS"
ENV_CHECKPOINT_DIR = "ADE_CHECKPOINT_DIR"
# Knobs of the launcher itself (tests and odd clusters set them).
ENV_NPROC_PER_NODE = "ADE_NPROC_PER_NODE"
ENV_MASTER_PORT = "ADE_MASTER_PORT"
#: The rendezvous address torchrun's hosts meet at: the first host's name on SageMaker (algo-1 resolves there);
#: the local runner sets 127.0.0.1, since its hosts are processes of one machine and algo-N resolve nowhere.
ENV_MASTER_ADDR = "ADE_MASTER_ADDR"
#: Seconds a host waits for all hosts to join torchrun's rendezvous before it fails (torch's default: 600).
ENV_RENDEZVOUS_TIMEOUT_S = "ADE_RENDEZVOUS_TIMEOUT_S"
ENV_SKIP_INSTALL = "ADE_SKIP_INSTALL"
#: Seconds between the launcher's cost ticks (budget checks; cost_usd is logged when its step moves).
ENV_BUDGET_INTERVAL_S = "ADE_BUDGET_INTERVAL_S"
#: A file holding the elapsed seconds the budget guard should believe: tests drive the guard through it
#: instead of waiting for the wall clock (no test may depend on timing).
ENV_BUDGET_CLOCK_FILE = "ADE_BUDGET_CLOCK_FILE"
#: How long (seconds) the entry keeps retrying metrics the tracking server refuses before they go to the relay.
ENV_METRICS_RETRY_S = "ADE_METRICS_RETRY_S"
#: The one stable, matchable line per metric log (SageMaker's MetricDefinitions read the job's output).
METRIC_LINE_PREFIX = "ade-metrics"

# A stopped job's run ends KILLED (never FAILED) with one of these reasons: the launcher's own budget stop, a
# StopTrainingJob, a managed-spot reclaim, or MaxRuntimeInSeconds. Every reader of the run keeps that end.
STOP_REASON_TAG = "ade.stop_reason"
STOP_DETAIL_TAG = "ade.stop_detail"
STOP_REASONS = ("budget", "stopped", "spot_interrupted", "max_runtime")
#: Not a stop reason: the local runner SIGTERMs the other hosts of a multi-host job when one host failed, and
#: writes this word first in their stop file; the lead host's launcher then ends the run FAILED (not KILLED)
#: with the failed host's reason, as SageMaker fails a job whose host failed.
PEER_FAILED = "peer_failed"

#: The constants bootstrap.py gets injected when it travels alone (see the module docstring).
BOOTSTRAP_NAMES = ("DEFAULT_BASE", "ENV_BASE_DIR", "HYPERPARAMETERS_FILE", "CODE_DIR", "FAILURE_FILE",
                   "SHIM_NAME", "HP_SUBMIT_DIRECTORY", "HP_REGION")


@dataclass(frozen=True)
class ContainerPaths:
    """Paths of the contract under ``base``."""

    base: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", Path(self.base))  # accept a str as well

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ContainerPaths":
        return cls(Path((os.environ if env is None else env).get(ENV_BASE_DIR, DEFAULT_BASE)))

    @property
    def config_dir(self) -> Path:
        return self.hyperparameters_file.parent

    @property
    def hyperparameters_file(self) -> Path:
        return self.base / HYPERPARAMETERS_FILE

    @property
    def resource_config_file(self) -> Path:
        return self.base / RESOURCE_CONFIG_FILE

    @property
    def input_data_config_file(self) -> Path:
        return self.base / INPUT_DATA_CONFIG_FILE

    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    def channel_dir(self, channel: str) -> Path:
        return self.base / CHANNELS_DIR / channel

    @property
    def wheelhouse_dir(self) -> Path:
        return self.channel_dir(WHEELHOUSE_CHANNEL)

    @property
    def site_dir(self) -> Path:
        return self.base / SITE_DIR

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.failure_file.parent

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        return self.base / FAILURE_FILE

    @property
    def code_dir(self) -> Path:
        return self.base / CODE_DIR

    @property
    def entry_pgid_file(self) -> Path:
        # Not part of SageMaker's contract: lets the local runner SIGKILL the entry's process group
        # (the entry runs in its own session) when the launcher itself is killed after the grace period.
        return self.base / "ade-entry.pgid"

    @property
    def launcher_ready_file(self) -> Path:
        # Not part of SageMaker's contract: the launcher writes it once its SIGTERM handler is installed; the
        # local runner holds a stop's SIGTERM until then (one sent during the interpreter's start would kill the
        # launcher before it could end the run).
        return self.base / "ade-launcher.ready"

    @property
    def stop_reason_file(self) -> Path:
        # Not part of SageMaker's contract: the local runner writes why it stops the job (stopped,
        # max_runtime, spot_interrupted) before its SIGTERM, which alone cannot say.
        return self.base / "ade-stop-reason"

    @property
    def checkpoint_dir(self) -> Path:
        # The request's CheckpointConfig.LocalPath: SageMaker syncs it with CheckpointConfig.S3Uri.
        return self.base / "checkpoints"

    def make_dirs(self) -> None:
        for path in (self.config_dir, self.model_dir, self.output_data_dir, self.checkpoint_dir,
                     self.base / CHANNELS_DIR):
            path.mkdir(parents=True, exist_ok=True)


#: Where a SageMaker container finds the contract.
CONTAINER_PATHS = ContainerPaths(Path(DEFAULT_BASE))


# ---------------------------------------------------------------- what the client tells the job
@dataclass(frozen=True)
class RunInfo:
    """The MLflow run the backend created; the job attaches to it."""

    run_id: str
    experiment_id: str
    tracking_uri: str


@dataclass(frozen=True)
class ChannelParam:
    """A path parameter shipped as an input channel."""

    channel: str
    file_name: str | None = None  # set when the parameter named one file, not a directory


@dataclass(frozen=True)
class Cost:
    """What the job pays per hour and may spend: the client's price (per instance) and budget."""

    usd_per_hour: float
    price_source: str = ""
    max_cost_usd: float | None = None
    on_budget: str = "stop"  # or "alert": tags only

    def usd(self, elapsed_s: float, instance_count: int) -> float:
        """Cost of elapsed_s on instance_count instances (SageMaker bills each instance by the second)."""
        return elapsed_s * instance_count * self.usd_per_hour / 3600.0

    def affordable_s(self, instance_count: int) -> int | None:
        """Seconds of training the budget buys: budget / (count x price) x 3600, rounded down."""
        if self.max_cost_usd is None or self.usd_per_hour <= 0:
            return None
        return int(self.max_cost_usd / (instance_count * self.usd_per_hour) * 3600.0)


@dataclass(frozen=True)
class JobContract:
    """Everything the job needs from the client, in decoded form (encode() -> request -> decode())."""

    code_uri: str
    region: str | None
    entry_point: str
    run: RunInfo
    params: dict[str, str] = field(default_factory=dict)
    channel_params: dict[str, ChannelParam] = field(default_factory=dict)
    cost: Cost | None = None
    wheelhouse: bool = False  # the request carries WHEELHOUSE_CHANNEL

    @property
    def channel_names(self) -> list[str]:
        """The InputDataConfig channels, sorted, once each (two params may share one)."""
        names = {c.channel for c in self.channel_params.values()}
        return sorted(names | {WHEELHOUSE_CHANNEL} if self.wheelhouse else names)


@dataclass(frozen=True)
class Encoded:
    """The parts of a CreateTrainingJob request that carry the contract."""

    hyperparameters: dict[str, str]
    environment: dict[str, str]
    channel_names: list[str]


class ContractError(ValueError):
    """The job's inputs do not match the contract: one line, for output/failure."""


def local_path(uri: str) -> Path:
    """The path of a file:// URI or a plain path. The client makes its URIs with pathlib's as_uri(), which
    percent-encodes a space or a non-ASCII character ("a b" -> "a%20b"): they are decoded here, once."""
    return Path(unquote(urlparse(uri).path)) if uri.startswith("file://") else Path(uri)


def channel_name(param: str) -> str:
    """The channel of a path parameter: SageMaker allows [A-Za-z0-9._-], at most 64 characters."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", param)[:64]


def _json_object(values: Mapping[str, Any]) -> str:
    return json.dumps(dict(values), sort_keys=True)


def encode(job: JobContract) -> Encoded:
    """Client side: the request's HyperParameters (toolkit convention: each value a JSON string),
    Environment and channel names. Values are not length-checked here (see HYPERPARAMETER_MAX_CHARS)."""
    files = {p: c.file_name for p, c in job.channel_params.items() if c.file_name}
    values = {
        HP_PROGRAM: SHIM_NAME,
        HP_SUBMIT_DIRECTORY: job.code_uri,
        HP_REGION: job.region or "",
        HP_ENTRY_POINT: job.entry_point,
        HP_PARAMS: _json_object(job.params),
        HP_CHANNEL_PARAMS: _json_object({p: c.channel for p, c in job.channel_params.items()}),
        HP_FILE_PARAMS: _json_object(files),
        HP_RUN_ID: job.run.run_id,
        HP_EXPERIMENT_ID: job.run.experiment_id,
        HP_TRACKING_URI: job.run.tracking_uri,
    }
    values.update(_encode_cost(job.cost))
    if job.wheelhouse:
        values[HP_WHEELHOUSE] = "true"
    environment = {ENV_RUN_ID: job.run.run_id, ENV_EXPERIMENT_ID: job.run.experiment_id,
                   ENV_TRACKING_URI: job.run.tracking_uri}
    return Encoded({k: json.dumps(v) for k, v in values.items()}, environment, job.channel_names)


def _encode_cost(cost: Cost | None) -> dict[str, str]:
    if cost is None:
        return {}  # no price known: the keys are absent, as in a request from before issue 16
    values = {HP_USD_PER_HOUR: repr(cost.usd_per_hour), HP_PRICE_SOURCE: cost.price_source}
    if cost.max_cost_usd is not None:
        values.update({HP_MAX_COST_USD: repr(cost.max_cost_usd), HP_ON_BUDGET: cost.on_budget})
    return values


def _decode_cost(hyper: Mapping[str, Any]) -> Cost | None:
    if hyper.get(HP_USD_PER_HOUR) in (None, ""):
        return None
    budget = hyper.get(HP_MAX_COST_USD)
    try:
        return Cost(float(hyper[HP_USD_PER_HOUR]), str(hyper.get(HP_PRICE_SOURCE) or ""),
                    None if budget in (None, "") else float(budget), str(hyper.get(HP_ON_BUDGET) or "stop"))
    except (TypeError, ValueError):
        raise ContractError(f"hyperparameters {HP_USD_PER_HOUR}/{HP_MAX_COST_USD} are not numbers; "
                            "resubmit the job") from None


def decode_value(value: Any) -> Any:
    """The toolkit convention: every hyperparameter value is a JSON-encoded string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _as_dict(value: Any, key: str) -> dict[str, str]:
    if isinstance(value, str):  # nested JSON: decoded once by the toolkit, once here
        try:
            value = json.loads(value) if value else {}
        except json.JSONDecodeError:
            raise ContractError(f"hyperparameter {key} is not a JSON object; resubmit the job") from None
    if not isinstance(value, dict):
        raise ContractError(f"hyperparameter {key} is not a JSON object; resubmit the job")
    return {str(k): str(v) for k, v in value.items()}


def decode_hyperparameters(hyper: Mapping[str, Any]) -> JobContract:
    """Job side: the contract from hyperparameters already read with read_hyperparameters()."""
    files = _as_dict(hyper.get(HP_FILE_PARAMS) or {}, HP_FILE_PARAMS)
    channels = {param: ChannelParam(channel, files.get(param))
                for param, channel in _as_dict(hyper.get(HP_CHANNEL_PARAMS) or {}, HP_CHANNEL_PARAMS).items()}
    return JobContract(
        code_uri=str(hyper.get(HP_SUBMIT_DIRECTORY) or ""),
        region=str(hyper.get(HP_REGION) or "") or None,
        entry_point=str(hyper.get(HP_ENTRY_POINT) or DEFAULT_ENTRY_POINT),
        run=RunInfo(*(str(hyper.get(key) or "") for key in (HP_RUN_ID, HP_EXPERIMENT_ID, HP_TRACKING_URI))),
        params=_as_dict(hyper.get(HP_PARAMS) or {}, HP_PARAMS),
        channel_params=channels,
        cost=_decode_cost(hyper),
        wheelhouse=str(hyper.get(HP_WHEELHOUSE) or "").lower() == "true",
    )


def decode(paths: ContainerPaths) -> JobContract:
    """Job side: the contract SageMaker (or the local runner) wrote under ``paths``."""
    return decode_hyperparameters(read_hyperparameters(paths))


def param_values(job: JobContract, paths: ContainerPaths) -> dict[str, str]:
    """The entry point's parameter values inside the job: path params point into their channel dirs."""
    values = dict(job.params)
    for param, channel in job.channel_params.items():
        directory = paths.channel_dir(channel.channel)
        if not directory.exists():
            raise ContractError(f"input channel '{channel.channel}' (parameter '{param}') is missing from "
                                f"{directory.parent}; check the job's InputDataConfig")
        values[param] = str(directory / channel.file_name) if channel.file_name else str(directory)
    return values


# ---------------------------------------------------------------- the files under the base
def read_hyperparameters(paths: ContainerPaths) -> dict[str, Any]:
    if not paths.hyperparameters_file.is_file():
        return {}
    return {k: decode_value(v) for k, v in json.loads(paths.hyperparameters_file.read_text()).items()}


def read_resource_config(paths: ContainerPaths) -> dict[str, Any]:
    if not paths.resource_config_file.is_file():
        return {"current_host": "algo-1", "hosts": ["algo-1"]}
    return json.loads(paths.resource_config_file.read_text())


def read_input_data_config(paths: ContainerPaths) -> dict[str, Any]:
    if not paths.input_data_config_file.is_file():
        return {}
    return json.loads(paths.input_data_config_file.read_text())


def is_lead_host(resource: dict[str, Any]) -> bool:
    """True on the first host (node rank 0): the only one that talks to MLflow."""
    hosts = resource.get("hosts") or ["algo-1"]
    return resource.get("current_host", hosts[0]) == hosts[0]


def sm_environment(paths: ContainerPaths, resource: dict[str, Any], num_gpus: int) -> dict[str, str]:
    """The SM_* variables a training script expects (the subset AWS's toolkit documents)."""
    hosts = resource.get("hosts", ["algo-1"])
    channels = sorted(read_input_data_config(paths))
    env = {
        ENV_MODEL_DIR: str(paths.model_dir),
        ENV_OUTPUT_DIR: str(paths.output_dir),
        ENV_OUTPUT_DATA_DIR: str(paths.output_data_dir),
        ENV_INPUT_DIR: str(paths.input_dir),
        ENV_INPUT_CONFIG_DIR: str(paths.config_dir),
        ENV_CHANNELS: json.dumps(channels),
        ENV_HOSTS: json.dumps(hosts),
        ENV_CURRENT_HOST: resource.get("current_host", hosts[0]),
        ENV_NUM_GPUS: str(num_gpus),
        ENV_NUM_CPUS: str(os.cpu_count() or 1),
        ENV_CHECKPOINT_DIR: str(paths.checkpoint_dir),
    }
    for channel in channels:
        env[f"{ENV_CHANNEL_PREFIX}{channel.upper()}"] = str(paths.channel_dir(channel))
    return env


def write_contract(paths: ContainerPaths, request: dict[str, Any], current_host: str = "algo-1") -> None:
    """Write input/config/*.json from a CreateTrainingJob request (or DescribeTrainingJob answer), as
    SageMaker does before the container starts."""
    paths.make_dirs()
    count = int(request.get("ResourceConfig", {}).get("InstanceCount", 1))
    hosts = [f"algo-{i + 1}" for i in range(count)]
    paths.hyperparameters_file.write_text(json.dumps(request.get("HyperParameters", {}), indent=1))
    paths.resource_config_file.write_text(json.dumps({
        "current_host": current_host, "hosts": hosts, "network_interface_name": "eth0",
        "current_instance_type": request.get("ResourceConfig", {}).get("InstanceType", "local"),
    }))
    channels = {
        c["ChannelName"]: {"TrainingInputMode": c.get("InputMode", "File"), "S3DistributionType":
                           c["DataSource"]["S3DataSource"].get("S3DataDistributionType", "FullyReplicated"),
                           "RecordWrapperType": "None"}
        for c in request.get("InputDataConfig", [])
    }
    paths.input_data_config_file.write_text(json.dumps(channels))
