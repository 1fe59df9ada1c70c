"""benchmarks/mine_throughput.py runs end to end and prints its figures (no timing is asserted)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_mine_throughput_prints_stages_and_ratio(codebase):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "mine_throughput.py"), "--root", str(codebase),
                           "--exclude", "vendor/", "--num-examples", "30", "--tokenizer", "none", "--workers", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("baseline  bare tree-sitter parse", "files/s", "lines/s", "examples made: 30 ", "walk", "mine",
                   "dedup", "render_tokenise", "save", "filters: secret scan", "parse", "dedup: minhash",
                   "ratio whole preparation / bare parse:"):
        assert needle in out, needle
