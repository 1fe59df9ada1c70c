"""The GPUs a local multi-host job shares out are the ones CUDA sees: CUDA_VISIBLE_DEVICES up to its first invalid
entry, as gpus.gpu_count and the fit check count them (else a host would get a GPU CUDA hides from it)."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.backend.local_hosts import host_devices, visible_gpus


@pytest.mark.parametrize("value,expected", [
    ("0,1,2,3", ["0", "1", "2", "3"]),
    (" 4, 6 ", ["4", "6"]),
    ("0,-1,1", ["0"]),  # CUDA stops at -1: one GPU
    ("0,,1", ["0"]),  # an empty entry is invalid too
    ("GPU-8f2a,MIG-1c3d", ["GPU-8f2a", "MIG-1c3d"]),
    ("", []),  # none: the hosts train on CPU
    ("-1", []),
])
def test_visible_gpus_are_what_cuda_sees(value, expected, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus({"Environment": {"CUDA_VISIBLE_DEVICES": value}}) == expected


def test_the_shell_value_counts_when_the_job_sets_none(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,x,5")
    assert visible_gpus({}) == ["2", "3"]
    assert host_devices(2, visible_gpus({})) == [{"CUDA_VISIBLE_DEVICES": "2", "SM_NUM_GPUS": "1"},
                                                  {"CUDA_VISIBLE_DEVICES": "3", "SM_NUM_GPUS": "1"}]
