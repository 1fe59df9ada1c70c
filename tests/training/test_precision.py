"""Dtype decisions of the training path (speed.precision) and the fp16 recipe they lead to, on the CPU.

A GPU without bf16 (T4, V100) loads the base in fp16 and trains under fp16 autocast with the Trainer's
GradScaler, which refuses fp16 gradients ("Attempting to unscale FP16 gradients"): the LoRA weights must
stay float32 there. The CPU has fp16 autocast and a GradScaler of its own, so the recipe runs here for real;
the whole path on a GPU with bf16 reported unsupported is in benchmarks/RESULTS.md ("fp16 path").
"""
from __future__ import annotations

import pytest
import torch

from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.training import speed
from ade_mlflow_plugin.training.packing import PackedCollator, build_rows

T4, V100, H100 = (7, 5), (7, 0), (9, 0)


def test_bf16_gpu_keeps_every_speed_option():
    plan = speed.precision(TrainingConfig(), "cuda", bf16_supported=True, capability=H100)
    assert (plan.dtype, plan.mixed, plan.bf16_adapters, plan.flex_attention) == (torch.bfloat16, "bf16", True, True)
    assert plan.turned_off == () and plan.summary() == ""
    assert not plan.kbit_upcast


@pytest.mark.parametrize("capability", [T4, V100])
def test_fp16_gpu_keeps_lora_float32_and_turns_off_what_needs_bf16_or_sm80(capability):
    plan = speed.precision(TrainingConfig(), "cuda", bf16_supported=False, capability=capability)
    assert (plan.dtype, plan.mixed, plan.bf16_adapters, plan.flex_attention) == (torch.float16, "fp16", False, False)
    assert [entry.split(" ")[0] for entry in plan.turned_off] == ["bf16_adapters", "flex_attention"]
    assert f"sm{capability[0]}{capability[1]}" in plan.summary() and "\n" not in plan.summary()


def test_fp16_on_a_newer_gpu_keeps_flex_attention():
    # What the device run emulates: an sm90 GPU with bf16 reported unsupported.
    plan = speed.precision(TrainingConfig(), "cuda", bf16_supported=False, capability=H100)
    assert plan.mixed == "fp16" and plan.flex_attention and not plan.bf16_adapters


def test_options_switched_off_by_the_user_are_not_reported():
    config = TrainingConfig(bf16_adapters=False, flex_attention=False)
    plan = speed.precision(config, "cuda", bf16_supported=False, capability=T4)
    assert plan.turned_off == () and plan.mixed == "fp16"


def test_quantized_base_upcasts_its_other_weights_unless_they_may_stay_bf16():
    qlora = TrainingConfig(quantization="4bit")
    assert speed.precision(qlora, "cuda", bf16_supported=False, capability=T4).kbit_upcast
    assert not speed.precision(qlora, "cuda", bf16_supported=True, capability=H100).kbit_upcast
    assert speed.precision(qlora, "cuda", bf16_supported=True, capability=H100, quantization="none").kbit_upcast is False


def test_cpu_trains_in_float32_without_autocast():
    plan = speed.precision(TrainingConfig(), "cpu", bf16_supported=False)
    assert (plan.dtype, plan.mixed, plan.flex_attention, plan.turned_off) == (torch.float32, "no", False, ())


def test_unknown_capability_turns_nothing_off():
    plan = speed.precision(TrainingConfig(), "cuda", bf16_supported=True, capability=None)
    assert plan.flex_attention


def test_fp16_base_trains_with_loss_scaling(tiny_model, tiny_tokenizer):
    """An fp16 base + LoRA under fp16 autocast and a GradScaler: the speed options leave the adapters float32,
    so the scaler unscales, the step is finite and the loss falls."""
    from ade_mlflow_plugin.training.model import add_lora, load_base_model

    torch.manual_seed(0)
    config = TrainingConfig(base_model=str(tiny_model), learning_rate=0.01)
    model = add_lora(load_base_model(config, "cpu", torch.float16), config, "cpu").train()
    examples = [{"prompt": "def add(a, b):\n", "completion": "    return a + b\n"}] * 4
    rows, _ = build_rows(tiny_tokenizer, examples, 64)
    batch = PackedCollator(tiny_tokenizer.pad_token_id)(rows)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    losses = []
    with speed.speedups(model, config, "cpu") as applied:
        assert "bf16_adapters" not in applied  # never to fp16
        assert {p.dtype for p in trainable} == {torch.float32}
        for _ in range(6):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = model(**batch).loss
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # raises "Attempting to unscale FP16 gradients" on fp16 weights
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_the_training_path_loads_without_hub_kernels(tiny_model):
    """transformers 5.2x kernelizes from the hub whenever `kernels` is installed; the job must not fetch code."""
    from ade_mlflow_plugin.training.model import load_base_model

    model = load_base_model(TrainingConfig(base_model=str(tiny_model)), "cpu", torch.float32)
    assert not getattr(model, "use_kernels", False)
