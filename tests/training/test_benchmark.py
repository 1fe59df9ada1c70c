"""benchmarks/train_throughput.py --tiny --device cpu runs the same code as on the GPU in CI time and prints
each config's figures and the ratio against the Hugging Face default."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_cpu_tiny_benchmark_prints_ratio_against_hf_default():
    out = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--device", "cpu", "--tiny",
                          "--steps", "2", "--configs", "hf-default,ade"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for config in ("hf-default", "ade"):
        assert re.search(rf"^{config} +4 +[\d.]+ +[\d.]+ ", out.stdout, re.M), out.stdout
    assert re.search(r"^LoRA: speedup vs HF default: [\d.]+x, MFU [\d.]+%$", out.stdout, re.M), out.stdout
