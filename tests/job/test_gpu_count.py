"""How many GPUs a host's launcher starts ranks for: SM_NUM_GPUS, else nvidia-smi narrowed by CUDA_VISIBLE_DEVICES."""
from __future__ import annotations

import os
import stat

import pytest

from ade_mlflow_plugin.job import contract, gpus


@pytest.fixture
def four_gpus(tmp_path, monkeypatch):
    """An nvidia-smi that lists four GPUs, first on PATH (this machine has none)."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA A10G (UUID: GPU-{i}abc)'\n" for i in range(4)))
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(contract.ENV_NUM_GPUS, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return monkeypatch


def test_every_installed_gpu_without_cuda_visible_devices(four_gpus):
    assert gpus.gpu_count() == 4


@pytest.mark.parametrize("visible, expected", [("1", 1), ("0,2", 2), ("", 0), ("0,-1,3", 1), ("-1", 0),
                                               ("GPU-0abc,GPU-1abc", 2), ("0,1,2,3,4,5", 4)])
def test_cuda_visible_devices_narrows_the_ranks(four_gpus, visible, expected):
    four_gpus.setenv("CUDA_VISIBLE_DEVICES", visible)

    assert gpus.gpu_count() == expected


def test_sm_num_gpus_wins(four_gpus):
    four_gpus.setenv("CUDA_VISIBLE_DEVICES", "0")
    four_gpus.setenv(contract.ENV_NUM_GPUS, "2")

    assert gpus.gpu_count() == 2


def test_no_nvidia_smi_means_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(contract.ENV_NUM_GPUS, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")

    assert gpus.gpu_count() == 0
