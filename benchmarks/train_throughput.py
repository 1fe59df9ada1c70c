"""Training throughput: the project's training path against the Hugging Face default, side by side in one process.

Model: the deepseek-coder-1.3b architecture (LlamaForCausalLM, vocab 32256, hidden 2048, intermediate 5504,
24 layers, 16 heads, rope theta 100000, linear rope scaling 4) with random weights, built from its config on
the GPU and saved, then loaded by each path through from_pretrained. LoRA r=16, alpha=32 on
all seven projections, LoRA dropout the training path's default (0, as PEFT's). Data: synthetic examples of uniform length 200..2048 tokens (loss on every token
but the first), bf16.

  hf-default   baseline: transformers Trainer + peft, every example padded to max length, no packing, batch 4
  hf-tuned     second baseline: transformers' own switches, no code of ours in the step: padding-free batches
               (DataCollatorWithFlattening, position ids), FlexAttention, use_liger_kernel, torch_compile;
               about the tokens of the project path's batch per step (--tuned-batch); `hf-tuned+compile=false`,
               `+liger=false`, `+attn=sdpa` turn one off (the ratio line takes the fastest hf-tuned*)
  ade          the project's path, the very code `main` runs after data prep: training.model.load_for_training,
               training.packing.pack, training.trainer.train (speed options on: training/speed.py), batch --batch-size
Then the same two for QLoRA (NF4 4-bit base). A config name may carry TrainingConfig overrides after '+',
e.g. `--configs ade,ade+batch_size=32,ade-qlora+checkpoint_layers=4` (ADE_BENCH_OPTIONS applies to all).

Each figure is the median over the steps after warm-up of real (non-pad) tokens/s, as the entry's
MetricsCallback logs it. MFU = FLOPs / (time x peak), FLOPs = (4N + 6N_lora) x tokens + attention, N = the
base's matmul weights (decoder linears and LM head), attention = 6 x layers x hidden x sum over examples of
length^2 (causal QK^T and PV, forward + backward); padding counts for nothing. Peak: 989.4 TFLOP/s (H100/H200
SXM dense bf16).

    .venv/bin/python benchmarks/train_throughput.py --tiny --device cpu     # CI: a tiny model, seconds
    python3 benchmarks/train_throughput.py --device cuda --json out.json    # the H200 figures in RESULTS.md
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CODEBASE = REPO / "tests" / "fixtures" / "codebases" / "polyglot"
PEAK_TFLOPS = 989.4
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEEPSEEK_1_3B = dict(vocab_size=32256, hidden_size=2048, intermediate_size=5504, num_hidden_layers=24,
                     num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=16384,
                     rope_theta=100000.0, rope_scaling={"type": "linear", "factor": 4.0}, rms_norm_eps=1e-6,
                     hidden_act="silu", tie_word_embeddings=False, bos_token_id=32013, eos_token_id=32014)


class Capture:
    """A MetricLogger stand-in that keeps what the entry would send to MLflow, with the time it came."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float, dict]] = []

    def log(self, metrics: dict, step: int) -> None:
        self.rows.append((step, time.perf_counter(), dict(metrics)))

    def flush(self, timeout: float = 0) -> bool:
        return True

    close = flush

    def summary(self, warmup: int) -> dict:
        losses = [m["train_loss"] for _, _, m in self.rows if "train_loss" in m]
        steps = [(t, m) for step, t, m in self.rows if step > warmup and "tokens_per_second" in m]
        times = [b[0] - a[0] for a, b in zip(steps, steps[1:])]
        speeds = [m["tokens_per_second"] for _, m in steps]
        return {"tokens_per_s": statistics.median(speeds) if speeds else float("nan"), "steps": len(speeds),
                "step_s": statistics.median(times) if times else float("nan"),
                "loss_last": steps[-1][1].get("train_loss") if steps else None,
                # Over every logged step, warm-up included: whether training learns at all (--token-pool).
                "loss_first": losses[0] if losses else None, "loss_steps": len(losses),
                "loss_finite": all(math.isfinite(x) for x in losses), "losses": [round(x, 5) for x in losses]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model of the same layout (CI)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps after warm-up")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="the project path's batch (rows)")
    parser.add_argument("--baseline-batch", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=None)
    parser.add_argument("--tuned-batch", type=int, default=None,
                        help="hf-tuned's examples per step (default: about the tokens of --batch-size full rows)")
    parser.add_argument("--configs", default="hf-default,hf-tuned,ade,hf-default-qlora,ade-qlora")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--token-pool", type=int, default=None,
                        help="draw example tokens from this many ids (a learnable distribution: the loss must "
                             "fall) instead of the whole vocabulary; the same tokens/s")
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.tiny else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 6)
    args.batch_size = args.batch_size or (4 if args.tiny else 32)
    args.max_seq_len = args.max_seq_len or (256 if args.tiny else 2048)
    return args


def synthetic_examples(count: int, max_len: int, vocab: int, seed: int = 0,
                       pool: int | None = None) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of uniform length max_len/10..max_len; ids above the special tokens, never the pad
    (from ``pool`` ids only, when given)."""
    rng = random.Random(seed)
    low = max(2, max_len * 200 // 2048)
    top = min(vocab, 100 + pool) if pool else vocab
    out = []
    for _ in range(count):
        ids = [rng.randrange(100, top) for _ in range(rng.randint(low, max_len))]
        out.append((ids, [-100] + ids[1:]))
    return out


def build_base(workdir: Path, tiny: bool, device: str) -> Path:
    """The base model folder (random weights, bf16 on GPU) with a tokenizer trained on the fixture codebase."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ade_mlflow_plugin.training.tiny import make_tiny_model, train_tokenizer

    if tiny:
        return make_tiny_model(workdir / "tiny", CODEBASE)
    out = workdir / "deepseek-coder-1.3b-random"
    config = LlamaConfig(**DEEPSEEK_1_3B)
    torch.manual_seed(0)
    with torch.device(device):  # from_config on the CPU takes ~70 s at this size; on the GPU 0.2 s
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    del model
    tokenizer = train_tokenizer(CODEBASE, 1024)
    tokenizer.save_pretrained(out)
    return out


def model_flops(base_config, lora_r: int, lengths: list[int]) -> float:
    """Training FLOPs per real token, averaged over the examples' lengths."""
    d, f, layers, vocab = (base_config.hidden_size, base_config.intermediate_size, base_config.num_hidden_layers,
                           base_config.vocab_size)
    n_base = layers * (4 * d * d + 3 * d * f) + d * vocab
    n_lora = layers * lora_r * (4 * (d + d) + 3 * (d + f))
    attention = 6 * layers * d * sum(n * n for n in lengths) / sum(lengths)
    return 4 * n_base + 6 * n_lora + attention


def hf_default(base: Path, args, examples, quantized: bool, workdir: Path) -> Capture:
    """The baseline: a plain transformers Trainer over rows padded to max length, batch 4."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, Trainer, TrainingArguments,
                              default_data_collator)

    from ade_mlflow_plugin.training.callbacks import MetricsCallback
    from ade_mlflow_plugin.training.model import NO_HUB_KERNELS

    cuda = args.device == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(base)
    # No hub kernels: transformers 5.25 raises without the `kernels` package, and fetches code with it.
    kwargs = {"dtype": torch.bfloat16 if cuda else torch.float32, **NO_HUB_KERNELS}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=kwargs["dtype"])
        kwargs["device_map"] = {"": args.device}
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(args.device)
    from ade_mlflow_plugin.config.training import TrainingConfig

    dropout = TrainingConfig().lora_dropout  # the same adapter as the project's path trains
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=PROJECTIONS,
                                             task_type="CAUSAL_LM"))
    pad, width = tokenizer.pad_token_id, args.max_seq_len
    need = args.baseline_batch * (args.steps + args.warmup + 2)
    rows = [{"input_ids": ids + [pad] * (width - len(ids)), "attention_mask": [1] * len(ids) + [0] * (width - len(ids)),
             "labels": labels + [-100] * (width - len(ids))} for ids, labels in examples[:need]]
    capture = Capture()
    targs = TrainingArguments(output_dir=str(workdir / "hf"), per_device_train_batch_size=args.baseline_batch,
                              max_steps=args.steps + args.warmup + 1, learning_rate=2e-4, logging_steps=1,
                              save_strategy="no", report_to="none", bf16=cuda, use_cpu=not cuda, disable_tqdm=True,
                              include_num_input_tokens_seen="non_padding", dataloader_num_workers=0)
    Trainer(model=model, args=targs, train_dataset=datasets.Dataset.from_list(rows), data_collator=default_data_collator,
            callbacks=[MetricsCallback(capture)]).train()
    return capture


TUNED_DEFAULTS = {"attn": "flex_attention", "liger": "true", "compile": "true"}


def tuned_settings(args, overrides: list[str]) -> dict[str, str]:
    """hf-tuned's switches: the best of transformers' own that run here, each one overridable by name."""
    settings = dict(TUNED_DEFAULTS)
    if args.device == "cpu":  # liger is Triton (GPU only); flex and compile add minutes on a CPU for nothing
        settings.update(attn="sdpa", liger="false", compile="false")
    settings.update(o.split("=", 1) for o in overrides)
    return settings


def tuned_batch(args, examples) -> int:
    """Examples per hf-tuned step: about the tokens of the project path's batch of full rows."""
    if args.tuned_batch:
        return args.tuned_batch
    mean = sum(len(e[0]) for e in examples) / len(examples)
    return max(1, round(args.batch_size * args.max_seq_len / mean))


def hf_tuned(base: Path, args, examples, workdir: Path, overrides: list[str]) -> tuple[Capture, dict]:
    """The second baseline: what a user gets from transformers' own switches, no code of ours in the step.

    Padding-free batches (DataCollatorWithFlattening: the batch's examples in one row, position ids restarting
    per example, so the attention is block-diagonal), FlexAttention (the best varlen attention that runs here
    without flash-attn), Liger's kernels (use_liger_kernel: RMSNorm, RoPE, SwiGLU, fused linear cross-entropy)
    and torch_compile of the whole model. The LoRA adapter is PEFT's default (float32 weights under bf16 autocast).
    """
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorWithFlattening, Trainer, TrainingArguments

    from ade_mlflow_plugin.config.training import TrainingConfig
    from ade_mlflow_plugin.training.callbacks import MetricsCallback
    from ade_mlflow_plugin.training.model import NO_HUB_KERNELS

    cuda = args.device == "cuda"
    settings = tuned_settings(args, overrides)
    on = {k: v.lower() in ("1", "true", "yes") for k, v in settings.items() if k != "attn"}
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation=settings["attn"], **NO_HUB_KERNELS)
    model.to(args.device)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=TrainingConfig().lora_dropout,
                                             target_modules=PROJECTIONS, task_type="CAUSAL_LM"))
    batch = tuned_batch(args, examples)
    rows = [{"input_ids": ids, "labels": labels} for ids, labels in examples[:batch * (args.steps + args.warmup + 2)]]
    capture = Capture()
    targs = TrainingArguments(output_dir=str(workdir / "hf-tuned"), per_device_train_batch_size=batch,
                              max_steps=args.steps + args.warmup + 1, learning_rate=2e-4, logging_steps=1,
                              save_strategy="no", report_to="none", bf16=cuda, use_cpu=not cuda, disable_tqdm=True,
                              include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
                              remove_unused_columns=False, use_liger_kernel=on["liger"], torch_compile=on["compile"])
    Trainer(model=model, args=targs, train_dataset=datasets.Dataset.from_list(rows),
            data_collator=DataCollatorWithFlattening(), callbacks=[MetricsCallback(capture)]).train()
    return capture, {"batch": batch, "tuned": settings}


#: What hf-tuned falls back to, in order, when a switch fails here (a user would turn it off and go on).
TUNED_FALLBACKS = ([], ["compile=false"], ["liger=false"], ["liger=false", "compile=false"])


def tuned_best_that_runs(base: Path, args, examples, workdir: Path, overrides: list[str]) -> tuple[Capture, dict]:
    """hf_tuned with the given switches; without any given, the first set of TUNED_FALLBACKS that trains."""
    failures = []
    for fallback in TUNED_FALLBACKS if not overrides else [[]]:
        try:
            capture, extra = hf_tuned(base, args, examples, workdir, overrides + fallback)
            return capture, {**extra, "failed_first": failures}
        except Exception as exc:  # noqa: BLE001 - the next set of switches may run
            if overrides or fallback is TUNED_FALLBACKS[-1]:
                raise
            traceback.print_exc()
            failures.append(f"{'+'.join(fallback) or 'all on'}: {type(exc).__name__}: {str(exc)[:160]}")
            gc.collect()
    raise AssertionError("unreachable")


def ade(base: Path, args, examples, quantized: bool, workdir: Path, overrides: list[str]) -> tuple[Capture, dict]:
    """The project's path: load_for_training -> pack -> trainer.train, as pipeline._train_and_log runs them."""
    from transformers import set_seed

    from ade_mlflow_plugin.training.checkpoints import StopFlag
    from ade_mlflow_plugin.config.training import TrainingConfig
    from ade_mlflow_plugin.training.model import load_for_training
    from ade_mlflow_plugin.training.packing import Encoded, pack
    from ade_mlflow_plugin.training.trainer import train
    from ade_mlflow_plugin.adapters.transformers_attn import attn_implementation

    config = TrainingConfig.from_params({
        "base_model": str(base), "max_steps": args.steps + args.warmup + 1, "batch_size": args.batch_size,
        "grad_accumulation": 1, "max_seq_len": args.max_seq_len, "logging_steps": 1, "save_steps": 10**6,
        "eval_samples": 0, "lora_r": 16, "lora_alpha": 32, "quantization": "4bit" if quantized else "none",
        **{k: v for k, v in (o.split("=", 1) for o in args.options + overrides)}})
    set_seed(config.seed)
    model, tokenizer, device = load_for_training(config)
    rows = pack([Encoded(ids, labels) for ids, labels in examples], config.max_seq_len, config.packing)
    capture = Capture()
    # A folder per config: the path resumes from any checkpoint it finds in its output dir.
    out = workdir / ("ade-q" if quantized else "ade") / "+".join(overrides).replace("=", "-")
    train(config, model, tokenizer, rows, output_dir=out, device=device,
          metric_logger=capture, stop=StopFlag())
    check = packed_vs_alone(model, examples[:3], device) if device == "cuda" else {}
    return capture, {"attention": attn_implementation(model.config), "batch": config.batch_size, **check}


def packed_vs_alone(model, examples, device: str) -> dict:
    """Relative error of packed-row logits against each example run alone (the packed mask at work)."""
    import torch

    model.eval()
    ids = [e[0][:300] for e in examples]
    row = torch.tensor([sum(ids, [])], device=device)
    positions = torch.tensor([sum((list(range(len(i))) for i in ids), [])], device=device)
    worst = 0.0
    with torch.no_grad():
        packed = model(input_ids=row, position_ids=positions, use_cache=False).logits[0].float()
        offset = 0
        for part in ids:
            alone = model(input_ids=torch.tensor([part], device=device), use_cache=False).logits[0].float()
            got = packed[offset:offset + len(part)]
            worst = max(worst, float((got - alone).norm() / alone.norm()))
            offset += len(part)
    model.train()
    return {"packed_vs_alone_rel_err": worst}


def measure(name: str, base: Path, args, examples, workdir: Path) -> dict:
    import torch

    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    # Each config compiles afresh, as in its own process: dynamo's per-function recompile limit (8) and its
    # cached graphs must not carry over from the config before (inductor's on-disk cache still speeds it up).
    torch.compiler.reset()
    started = time.perf_counter()
    kind, *overrides = name.split("+")
    quantized = kind.endswith("qlora")
    extra: dict = {"batch": args.baseline_batch}
    if kind.startswith("hf-default"):
        capture = hf_default(base, args, examples, quantized, workdir)
    elif kind == "hf-tuned":
        capture, extra = tuned_best_that_runs(base, args, examples, workdir, overrides)
    else:
        capture, extra = ade(base, args, examples, quantized, workdir, overrides)
    result = {"config": name, **capture.summary(args.warmup), **extra, "wall_s": time.perf_counter() - started,
              "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")}
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def report(results: dict[str, dict], flops_per_token: float, args) -> list[str]:
    lora, qlora = results.get("ade", {}), results.get("ade-qlora", {})
    lines = [f"{'config':30s} {'batch':>5s} {'tokens/s':>10s} {'step s':>8s} {'peak GB':>8s} {'MFU %':>6s}"]
    for r in results.values():
        if "error" in r:
            lines.append(f"{r['config']:30s} FAILED: {r['error']}")
            continue
        r["mfu_pct"] = 100 * r["tokens_per_s"] * flops_per_token / (PEAK_TFLOPS * 1e12)
        lines.append(f"{r['config']:30s} {r['batch']:5d} {r['tokens_per_s']:10.1f} {r['step_s']:8.3f} "
                     f"{r['peak_mem_gb']:8.2f} {r['mfu_pct']:6.1f}")
    for label, a, b in (("LoRA", "hf-default", "ade"), ("QLoRA", "hf-default-qlora", "ade-qlora")):
        if "tokens_per_s" in results.get(a, {}) and "tokens_per_s" in results.get(b, {}):
            ratio = results[b]["tokens_per_s"] / results[a]["tokens_per_s"]
            lines.append(f"{label}: speedup vs HF default: {ratio:.2f}x, MFU {results[b]['mfu_pct']:.1f}%")
    tuned = [r for name, r in results.items() if name.split("+")[0] == "hf-tuned" and "tokens_per_s" in r]
    if tuned and "tokens_per_s" in lora:
        best = max(tuned, key=lambda r: r["tokens_per_s"])
        lines.append(f"LoRA: vs HF tuned: {lora['tokens_per_s'] / best['tokens_per_s']:.2f}x ({best['config']})")
    if "tokens_per_s" in lora and "tokens_per_s" in qlora:
        lines.append(f"QLoRA / LoRA at batch {args.batch_size}: tokens/s {qlora['tokens_per_s'] / lora['tokens_per_s']:.2f}x, "
                     f"peak memory {qlora['peak_mem_gb'] / lora['peak_mem_gb']:.2f}x")
    return lines


def run_order(configs: list[str]) -> list[str]:
    """hf-tuned configs last: use_liger_kernel patches transformers' Llama classes for the whole process, so
    every model built after it would run Liger's kernels (seen on the H100, 2026-12-06)."""
    return [c for c in configs if c.split("+")[0] != "hf-tuned"] + [c for c in configs if c.split("+")[0] == "hf-tuned"]


def main() -> int:
    args = parse_args()
    args.options = [o for o in os.environ.get("ADE_BENCH_OPTIONS", "").split(",") if o]  # e.g. compile_layers=false
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(REPO))
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    # The training path's own lines (speed options applied, options a GPU turned off).
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("ade_mlflow_plugin").setLevel(logging.INFO)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ade-train-bench-") as tmp:
        workdir = Path(tmp)
        base = build_base(workdir, args.tiny, args.device)
        base_config = AutoConfig.from_pretrained(base)
        batches = [int(o.split("=", 1)[1]) for name in args.configs.split(",") for o in name.split("+")[1:]
                   if o.startswith("batch_size=")]
        need = max(args.baseline_batch, 2 * max([args.batch_size, *batches])) * (args.steps + args.warmup + 2)
        examples = synthetic_examples(need, args.max_seq_len, base_config.vocab_size, pool=args.token_pool)
        flops = model_flops(base_config, 16, [len(e[0]) for e in examples])
        print(f"device={args.device} {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'} "
              f"bf16_supported={args.device == 'cuda' and torch.cuda.is_bf16_supported()} "
              f"torch={torch.__version__} transformers={transformers.__version__} model={'tiny' if args.tiny else '1.3b'} "
              f"seq={args.max_seq_len} steps={args.steps} warmup={args.warmup} options={args.options or 'defaults'} "
              f"flops/token={flops / 1e9:.3f}G", flush=True)
        for name in run_order(args.configs.split(",")):
            try:
                results[name] = measure(name, base, args, examples, workdir)
            except Exception as exc:  # noqa: BLE001 - one config failing must not hide the others' figures
                traceback.print_exc()
                results[name] = {"config": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            print(json.dumps(results[name]), flush=True)
            gc.collect()
    lines = report(results, flops, args)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "lines": lines, "flops_per_token": flops}, indent=1))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
