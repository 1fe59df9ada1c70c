"""Training throughput of the `main` entry's loop: packed rows (the default) vs padded rows (the baseline).

Runs the very code `main` runs after data prep (training.model.load_for_training, training.packing.build_rows,
training.trainer.train with its MetricsCallback) on a dataset mined from a codebase, twice per round in
alternating order: once with packing off (baseline "padded": one example per row, padded to the batch's
longest row, as a plain HF data collator does) and once with packing on. tokens_per_second is the very
figure the entry logs to MLflow (non-padding tokens / wall time between step logs); the first step of each
run is warm-up and left out. Prints medians and packed/padded.

    .venv/bin/python benchmarks/train_throughput.py --device cpu --tiny          # CI: tiny model, a minute
    .venv/bin/python benchmarks/train_throughput.py --device cuda --base-model deepseek-ai/deepseek-coder-1.3b-instruct
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CODEBASE = REPO / "tests" / "fixtures" / "codebases" / "polyglot"


class Capture:
    """A MetricLogger stand-in that keeps what the entry would send to MLflow."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def log(self, metrics: dict, step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def flush(self, timeout: float = 0) -> bool:
        return True

    close = flush


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--tiny", action="store_true", help="build the tiny test model from --codebase")
    parser.add_argument("--base-model", default=None, help="hub id or folder (ignored with --tiny)")
    parser.add_argument("--codebase", default=str(DEFAULT_CODEBASE))
    parser.add_argument("--num-examples", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-seq-len", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not args.tiny and not args.base_model:
        parser.error("pass --tiny or --base-model")
    small = args.tiny or args.device == "cpu"
    args.num_examples = args.num_examples or (60 if small else 1000)
    args.steps = args.steps or (8 if small else 40)
    args.batch_size = args.batch_size or (4 if small else 8)
    args.max_seq_len = args.max_seq_len or (256 if small else 2048)
    return args


def run_once(config, prepared, packing: bool, workdir: Path) -> tuple[float, int, float]:
    """(median tokens/s after warm-up, steps, wall s) of one training run through the entry's code."""
    from dataclasses import replace

    from transformers import set_seed

    from ade_mlflow_plugin.training.checkpoints import StopFlag
    from ade_mlflow_plugin.training.model import load_for_training
    from ade_mlflow_plugin.training.packing import build_rows
    from ade_mlflow_plugin.training.trainer import train

    config = replace(config, packing=packing)
    set_seed(config.seed)
    model, tokenizer, device = load_for_training(config)
    rows, _ = build_rows(tokenizer, prepared.dataset["train"].shuffle(seed=config.seed), config.max_seq_len, packing)
    capture = Capture()
    out = Path(tempfile.mkdtemp(dir=workdir, prefix="packed-" if packing else "padded-"))
    started = time.perf_counter()
    state, _ = train(config, model, tokenizer, rows, output_dir=out, device=device, metric_logger=capture,
                     stop=StopFlag())
    wall = time.perf_counter() - started
    speeds = [m["tokens_per_second"] for step, m in capture.rows if step > 1 and "tokens_per_second" in m]
    return (statistics.median(speeds) if speeds else float("nan")), state.global_step, wall


def main() -> int:
    args = parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(REPO))
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ade_mlflow_plugin.dataset import build_dataset
    from ade_mlflow_plugin.training.config import TrainingConfig
    from ade_mlflow_plugin.training.tiny import make_tiny_model

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="ade-train-bench-") as tmp:
        workdir = Path(tmp)
        base = str(make_tiny_model(workdir / "tiny", args.codebase)) if args.tiny else args.base_model
        tokenizer = AutoTokenizer.from_pretrained(base)
        prepared = build_dataset(args.codebase, None, num_examples=args.num_examples, synthetic_ratio=0.3,
                                 eval_fraction=0.0, seed=42, tokenizer=tokenizer, max_tokens=args.max_seq_len,
                                 log_to_mlflow=False, progress=False)
        config = TrainingConfig.from_params({
            "base_model": base, "max_steps": args.steps, "batch_size": args.batch_size, "grad_accumulation": 1,
            "max_seq_len": args.max_seq_len, "logging_steps": 1, "save_steps": 10**6, "eval_samples": 0})
        print(f"device={args.device} model={'tiny' if args.tiny else base} examples={len(prepared.dataset['train'])} "
              f"steps={args.steps} batch={args.batch_size} max_seq_len={args.max_seq_len}")
        results: dict[str, list[float]] = {"padded": [], "packed": []}
        for round_no in range(args.rounds):
            order = ["padded", "packed"] if round_no % 2 == 0 else ["packed", "padded"]
            for name in order:
                speed, steps, wall = run_once(config, prepared, name == "packed", workdir)
                results[name].append(speed)
                print(f"round {round_no + 1} {name:6s}: {speed:10.1f} tokens/s  ({steps} steps, {wall:.1f} s)")
    padded, packed = statistics.median(results["padded"]), statistics.median(results["packed"])
    print(f"baseline padded rows : {padded:10.1f} tokens/s (median)")
    print(f"packed rows (default): {packed:10.1f} tokens/s (median)")
    print(f"ratio packed/padded  : {packed / padded:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
