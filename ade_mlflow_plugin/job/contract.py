"""The SageMaker training container contract, in one place, rooted at a configurable base.

SageMaker mounts everything under /opt/ml; AWS's own toolkit honours SAGEMAKER_BASE_DIR to move that
root, and so do we: the local runner (backend/local.py) writes the same files under a job root.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BASE = "/opt/ml"
SAGEMAKER_CHECKPOINT_DIR = "/opt/ml/checkpoints"


@dataclass(frozen=True)
class ContainerPaths:
    """Paths of the contract under ``base``."""

    base: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", Path(self.base))  # accept a str as well

    @classmethod
    def from_env(cls) -> "ContainerPaths":
        return cls(Path(os.environ.get("SAGEMAKER_BASE_DIR", DEFAULT_BASE)))

    @property
    def config_dir(self) -> Path:
        return self.base / "input" / "config"

    @property
    def hyperparameters_file(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def resource_config_file(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    @property
    def input_data_config_file(self) -> Path:
        return self.config_dir / "inputdataconfig.json"

    def channel_dir(self, channel: str) -> Path:
        return self.base / "input" / "data" / channel

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def code_dir(self) -> Path:
        return self.base / "code"

    @property
    def entry_pgid_file(self) -> Path:
        # Not part of SageMaker's contract: lets the local runner SIGKILL the entry's process group
        # (the entry runs in its own session) when the launcher itself is killed after the grace period.
        return self.base / "ade-entry.pgid"

    @property
    def checkpoint_dir(self) -> Path:
        # On SageMaker CheckpointConfig.LocalPath is /opt/ml/checkpoints, i.e. <base>/checkpoints.
        return self.base / "checkpoints"

    def make_dirs(self) -> None:
        for path in (self.config_dir, self.model_dir, self.output_data_dir, self.checkpoint_dir,
                     self.base / "input" / "data"):
            path.mkdir(parents=True, exist_ok=True)


def _decode(value: Any) -> Any:
    # The toolkit convention: every hyperparameter value is a JSON-encoded string.
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def read_hyperparameters(paths: ContainerPaths) -> dict[str, Any]:
    if not paths.hyperparameters_file.is_file():
        return {}
    return {k: _decode(v) for k, v in json.loads(paths.hyperparameters_file.read_text()).items()}


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


def gpu_count() -> int:
    """GPUs on this host: SM_NUM_GPUS when SageMaker/the toolkit set it, else nvidia-smi."""
    if os.environ.get("SM_NUM_GPUS", "").isdigit():
        return int(os.environ["SM_NUM_GPUS"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))


def sm_environment(paths: ContainerPaths, resource: dict[str, Any], num_gpus: int) -> dict[str, str]:
    """The SM_* variables a training script expects (the subset AWS's toolkit documents)."""
    hosts = resource.get("hosts", ["algo-1"])
    channels = sorted(read_input_data_config(paths))
    env = {
        "SM_MODEL_DIR": str(paths.model_dir),
        "SM_OUTPUT_DIR": str(paths.output_dir),
        "SM_OUTPUT_DATA_DIR": str(paths.output_data_dir),
        "SM_INPUT_DIR": str(paths.base / "input"),
        "SM_INPUT_CONFIG_DIR": str(paths.config_dir),
        "SM_CHANNELS": json.dumps(channels),
        "SM_HOSTS": json.dumps(hosts),
        "SM_CURRENT_HOST": resource.get("current_host", hosts[0]),
        "SM_NUM_GPUS": str(num_gpus),
        "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "ADE_CHECKPOINT_DIR": str(paths.checkpoint_dir),
    }
    for channel in channels:
        env[f"SM_CHANNEL_{channel.upper()}"] = str(paths.channel_dir(channel))
    return env


def write_contract(paths: ContainerPaths, request: dict[str, Any], current_host: str = "algo-1") -> None:
    """Write input/config/*.json from a CreateTrainingJob request (or DescribeTrainingJob answer)."""
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
