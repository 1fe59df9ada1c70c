"""Throughput of codebase -> dataset preparation, against bare tree-sitter parsing of the same files.

Default corpus: the running interpreter's standard library (sysconfig's stdlib path without test/ and
site-packages/: ~870 files, ~360k lines, ~13 MB). Baseline, measured in the same run: parsing every
walked file with tree-sitter in one process (files read into memory first). Prints files/s, lines/s,
examples made, time per stage, and the ratio of the whole preparation to the baseline.

    python benchmarks/mine_throughput.py [--root DIR] [--num-examples N] [--workers N] [--tokenizer bpe|none|PATH]

Library imports happen before the clock starts (once per process, not per preparation).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

DEFAULT_EXCLUDE = ["test/", "site-packages/"]
FIM = ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"]
CHAT_TEMPLATE = ("{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}### Response:\n{% endif %}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--exclude", action="append", default=None,
                        help=f"gitignore-style pattern (repeatable; default {DEFAULT_EXCLUDE})")
    parser.add_argument("--num-examples", type=int, default=10_000)
    parser.add_argument("--synthetic-ratio", type=float, default=0.3)
    parser.add_argument("--workers", type=int, default=None, help="default: CPUs available")
    parser.add_argument("--tokenizer", default="bpe",
                        help="bpe: a byte-level BPE (deepseek FIM tokens, chat template) trained here on a sample "
                             "of the corpus; none: regex estimate; or a model folder")
    return parser.parse_args()


def train_bpe(files) -> object:
    """A deepseek-like tokenizer stand-in: byte-level BPE, 16k vocab, FIM tokens, chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sample = [Path(f.abs).read_text(errors="replace") for f in files[::8]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=16_000, special_tokens=["<s>", "</s>", *FIM], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sample, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=FIM)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def bare_parse_seconds(files) -> tuple[float, float, int, int]:
    """One core: tree-sitter parse of every file (already in memory). Returns (wall s, cpu s, lines, bytes)."""
    from ade_mlflow_plugin.dataset.languages import parser_for

    blobs = [(f.language, Path(f.abs).read_bytes()) for f in files]
    for language in {lang for lang, _ in blobs}:
        parser_for(language)
    start, cpu_start = time.perf_counter(), time.process_time()
    for language, data in blobs:
        parser_for(language).parse(data)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return seconds, cpu, sum(d.count(b"\n") + 1 for _, d in blobs), sum(len(d) for _, d in blobs)


def main() -> None:
    args = parse_args()
    exclude = args.exclude or DEFAULT_EXCLUDE
    import datasets  # noqa: F401  (imports before the clock)

    from ade_mlflow_plugin.dataset.build import build_dataset
    from ade_mlflow_plugin.dataset.pool import default_workers
    from ade_mlflow_plugin.dataset.run import load_tokenizer
    from ade_mlflow_plugin.dataset.walk import walk_codebase

    files = walk_codebase(args.root, exclude=exclude).files
    tokenizer = None
    if args.tokenizer == "bpe":
        tokenizer = train_bpe(files)
    elif args.tokenizer != "none":
        tokenizer = load_tokenizer(args.tokenizer)
    workers = args.workers or default_workers()
    baseline, baseline_cpu, lines, size = bare_parse_seconds(files)

    with tempfile.TemporaryDirectory() as tmp:
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        prepared = build_dataset(args.root, Path(tmp) / "out", num_examples=args.num_examples,
                                 synthetic_ratio=args.synthetic_ratio, tokenizer=tokenizer, exclude=exclude,
                                 workers=workers, log_to_mlflow=False, progress=False)
        wall = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_before
    report(args, files, lines, size, (baseline, baseline_cpu), wall, cpu, workers, prepared)


def _cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the mining workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def report(args, files, lines, size, baselines, wall, cpu, workers, prepared) -> None:
    stats = prepared.stats
    baseline, baseline_cpu = baselines
    print(f"corpus: {args.root} ({len(files)} files, {lines:,} lines, {size / 1e6:.1f} MB); "
          f"cpus available {len(os.sched_getaffinity(0))}, workers {workers}; load avg {os.getloadavg()[0]:.2f}")
    print(f"tokenizer: {'none (regex estimate)' if args.tokenizer == 'none' else args.tokenizer}; "
          f"python {sys.version.split()[0]}")
    print(f"baseline  bare tree-sitter parse, 1 core: {baseline:7.3f} s  ({lines / baseline:,.0f} lines/s; "
          f"cpu {baseline_cpu:.3f} s)")
    print(f"prepare   whole build_dataset, wall     : {wall:7.3f} s  ({len(files) / wall:,.0f} files/s, "
          f"{lines / wall:,.0f} lines/s)")
    print(f"          cpu seconds, main + workers   : {cpu:7.3f} s  (cpu / bare parse cpu: {cpu / baseline_cpu:.2f})")
    print(f"examples made: {stats['examples']['total']:,} ({stats['examples']['mined']:,} mined, "
          f"{stats['examples']['synthetic']:,} synthetic) of {sum(stats['examples']['available'].values()):,} "
          f"candidates; units kept {stats['units']['kept']:,} of {stats['units']['found']:,}")
    print("stages, wall seconds in the main process:")
    for name, seconds in stats["timings_s"].items():
        print(f"  {name:<16} {seconds:7.3f}")
    print("stages, cpu seconds summed over mining workers (run in parallel inside 'mine'):")
    labels = {"read": "read+licence", "secret_scan": "filters: secret scan", "parse": "parse",
              "extract": "extract units+chunks", "sketch": "dedup: minhash"}
    for name, seconds in stats["worker_cpu_s"].items():
        print(f"  {labels.get(name, name):<22} {seconds:7.3f}")
    print(f"ratio whole preparation / bare parse: {wall / baseline:.2f}")


if __name__ == "__main__":
    main()
