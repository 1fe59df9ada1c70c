"""benchmarks/train_throughput.py's second baseline, hf-tuned (transformers' own switches: padding-free batches,
the best attention, liger, torch_compile), runs on the CPU with the GPU-only switches off and is compared."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_cpu_tiny_benchmark_runs_hf_tuned_and_prints_the_ratio():
    out = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--device", "cpu", "--tiny",
                          "--steps", "2", "--configs", "hf-tuned,ade", "--tuned-batch", "5"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"^hf-tuned +5 +[\d.]+ +[\d.]+ ", out.stdout, re.M), out.stdout
    assert re.search(r"^LoRA: vs HF tuned: [\d.]+x \(hf-tuned\)$", out.stdout, re.M), out.stdout
    # The flattened rows really trained: a finite, logged loss for every step.
    row = next(line for line in out.stdout.splitlines() if line.startswith('{"config": "hf-tuned"'))
    assert '"loss_finite": true' in row and '"tuned": {"attn": "sdpa"' in row, row


def test_tuned_settings_take_overrides_and_turn_gpu_switches_off_on_cpu():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import train_throughput as bench
    finally:
        sys.path.pop(0)

    class Args:
        device, tuned_batch, batch_size, max_seq_len = "cuda", None, 2, 100

    assert bench.tuned_settings(Args, []) == bench.TUNED_DEFAULTS
    assert bench.tuned_settings(Args, ["attn=sdpa", "compile=false"])["attn"] == "sdpa"
    Args.device = "cpu"
    assert bench.tuned_settings(Args, [])["liger"] == "false"
    # 2 rows of 100 tokens over examples of mean length 40: 5 examples a step.
    assert bench.tuned_batch(Args, [([1] * 30, []), ([1] * 50, [])]) == 5
    # Liger patches transformers' classes for the process: hf-tuned runs after every other config.
    assert bench.run_order(["hf-tuned", "ade", "hf-tuned+compile=false", "ade-qlora"]) == [
        "ade", "ade-qlora", "hf-tuned", "hf-tuned+compile=false"]
