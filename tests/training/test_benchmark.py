"""benchmarks/train_throughput.py --device cpu --tiny runs in CI time and prints figures against its baseline."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_cpu_tiny_benchmark_prints_ratio_against_padded_baseline():
    out = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--device", "cpu", "--tiny",
                          "--rounds", "1", "--steps", "3", "--num-examples", "30"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"baseline padded rows : +[\d.]+ tokens/s", out.stdout)
    assert re.search(r"ratio packed/padded  : [\d.]+x", out.stdout), out.stdout
