"""benchmarks/job_phases.py: the whole-job benchmark runs on CPU with a tiny model (what the GPU run does,
at CI size) and writes the phase table with the device and versions."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def test_arguments_after_a_double_dash_go_to_the_entry() -> None:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import job_phases
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    args, extra = job_phases.parse_args(["--tiny", "--", "--eval_samples", "0"])
    assert args.tiny and args.num_examples == 120 and args.max_seq_len == 512
    assert extra == ["--eval_samples", "0"]
    args, extra = job_phases.parse_args([])
    assert (args.num_examples, args.max_seq_len, extra) == (1000, 2048, [])  # the realistic job


@pytest.mark.slow
def test_cpu_tiny_whole_job_writes_its_phase_table(tmp_path) -> None:
    out_json = tmp_path / "phases.json"
    out = subprocess.run([sys.executable, "benchmarks/job_phases.py", "--tiny", "--num-examples", "30",
                          "--max-seq-len", "256", "--codebase", "tests/fixtures/codebases/polyglot",
                          "--workdir", str(tmp_path / "work"), "--json", str(out_json), "--",
                          "--max_steps", "3", "--eval_samples", "2", "--max_new_tokens", "4"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "training share" in out.stdout and "compile_warmup" in out.stdout
    result = json.loads(out_json.read_text())
    assert result["device"] == "cpu" and result["settings"]["extra"][:2] == ["--max_steps", "3"]
    assert result["job"]["steps"] == 3
    phases = result["phases"]
    assert sum(p["seconds"] for p in phases["phases"].values()) == pytest.approx(phases["wall_seconds"])
    assert phases["wall_seconds"] <= result["outside_wall_seconds"] + 1.0
