"""Measure the peak GPU memory of LoRA training steps on the deepseek-coder-1.3b layout (random weights) and
print it next to ade_mlflow_plugin/memory_estimate.py's figure: `python tests/measure_memory.py [--qlora] [out.json]`
(--qlora also measures a 4-bit NF4 base: needs bitsandbytes).

Plain path as the estimate models it: bf16 base, bf16 LoRA (all linear layers, r=16) with AdamW, sdpa
attention, the model's own (unfused) loss, no gradient checkpointing. Needs a CUDA GPU, torch, transformers
and peft only (the estimate module is pure Python, imported from the working tree).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ade_mlflow_plugin.memory_estimate import GIB, ModelShape, Workload, estimate  # noqa: E402

LAYOUT = {"hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": 24, "num_attention_heads": 16,
          "num_key_value_heads": 16, "vocab_size": 32256, "max_position_embeddings": 4096}
CASES = [(1, 2048, 0), (4, 2048, 0), (4, 2048, 24)]  # (batch, seq, checkpointed layers)
QLORA_CASES = [(1, 2048, 0), (4, 2048, 0)]  # with --qlora: a 4-bit NF4 base (bitsandbytes), bf16 compute


def build():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("cuda"):  # from_config on the GPU: 0.2 s instead of 70 s on CPU
        model = AutoModelForCausalLM.from_config(LlamaConfig(**LAYOUT), attn_implementation="sdpa",
                                                 dtype=torch.bfloat16)
    model.config.use_cache = False
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora, autocast_adapter_dtype=False)  # adapters stay bf16, as bf16_adapters=true


def build_qlora(scratch: Path):
    """The same layout with a 4-bit NF4 base, as training/model.py loads QLoRA (compute and storage bf16):
    built in bf16 on the GPU, saved, and loaded back through from_pretrained's quantization."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

    with torch.device("cuda"):
        dense = AutoModelForCausalLM.from_config(LlamaConfig(**LAYOUT), dtype=torch.bfloat16)
    dense.save_pretrained(scratch)
    del dense
    torch.cuda.empty_cache()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(scratch, quantization_config=quant, dtype=torch.bfloat16,
                                                 attn_implementation="sdpa", device_map={"": 0})
    model.config.use_cache = False
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora, autocast_adapter_dtype=False)


def measure(model, batch: int, seq: int, checkpointed: int) -> float:
    import torch

    if checkpointed:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, LAYOUT["vocab_size"], (batch, seq), device="cuda")
    for _ in range(3):  # the optimizer state exists from the first step on
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del optimizer, ids
    return peak


def _rows(model, cases: list[tuple[int, int, int]], quantization: str) -> list[dict]:
    shape, rows = ModelShape.from_config(LAYOUT), []
    for batch, seq, checkpointed in cases:
        measured = measure(model, batch, seq, checkpointed)
        estimated = estimate(shape, Workload(batch, seq, checkpointed_layers=checkpointed,
                                             quantization=quantization)).peak
        rows.append({"quantization": quantization, "batch": batch, "seq": seq, "checkpointed_layers": checkpointed,
                     "measured_gib": round(measured / GIB, 2), "estimated_gib": round(estimated / GIB, 2),
                     "error_pct": round(100 * (estimated - measured) / measured, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    import tempfile

    import torch

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    model = build()
    rows = _rows(model, CASES, "none")
    if "--qlora" in sys.argv:
        del model
        torch.cuda.empty_cache()
        with tempfile.TemporaryDirectory() as scratch:
            rows += _rows(build_qlora(Path(scratch)), QLORA_CASES, "4bit")
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    if args:
        Path(args[0]).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
