"""How many GPUs a host's processes may use: what the launcher starts torchrun ranks for, and what local mode
lends its hosts (backend/local_hosts.py)."""
from __future__ import annotations

import os
import shutil
import subprocess

from ade_mlflow_plugin.job.contract import ENV_NUM_GPUS


def gpu_count() -> int:
    """GPUs this host's processes may use: SM_NUM_GPUS when SageMaker/the toolkit (or local mode's hosts)
    set it; else nvidia-smi's, narrowed by CUDA_VISIBLE_DEVICES when set (a user lending one of four GPUs to
    a local job must get one rank, not four ranks on devices CUDA hides)."""
    if os.environ.get(ENV_NUM_GPUS, "").isdigit():
        return int(os.environ[ENV_NUM_GPUS])
    installed = _nvidia_smi_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return installed if visible is None else min(installed, visible_device_count(visible))


def visible_device_count(value: str) -> int:
    """Devices a CUDA_VISIBLE_DEVICES value exposes. CUDA reads the list up to its first invalid entry
    ("0,-1,1" exposes one device; "" none); entries are indices or GPU-/MIG- UUIDs."""
    count = 0
    for entry in value.split(","):
        entry = entry.strip()
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        count += 1
    return count


def _nvidia_smi_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))
