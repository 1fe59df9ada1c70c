"""fp8_base (training/fp8.py) on the CPU, whose torch runs the same row-wise scaled matmul: the product and
x's gradient against a float64 reference, a tiny model's loss and LoRA gradients against bf16, fused groups
included, and the model back to bf16 after."""
from __future__ import annotations

import pytest
import torch

from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.training import fp8
from ade_mlflow_plugin.training.fused_lora import fused_lora

pytestmark = pytest.mark.skipif(not fp8.available(), reason="this torch has no torch.nn.functional.scaled_mm")
FP8_REL = 0.05  # e4m3 keeps 3 mantissa bits: ~2-3% relative error on a product of random rows


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(got).all()
    return float((got.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("seed", [0, 1])
def test_product_and_input_gradient_against_float64(seed):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(64, 96, generator=generator) * torch.rand(64, 1, generator=generator) * 10).bfloat16()
    weight = (torch.randn(48, 96, generator=generator) * 0.02).bfloat16()
    grad = torch.randn(64, 48, generator=generator).bfloat16()
    x.requires_grad_(True)
    out = fp8.matmul(x, _holding(weight))
    out.backward(grad)
    assert out.dtype == torch.bfloat16 and out.shape == (64, 48)
    assert _rel(out, x.detach().double() @ weight.double().t()) < FP8_REL
    assert _rel(x.grad, grad.double() @ weight.double()) < FP8_REL


def test_zero_rows_and_odd_row_counts():
    weight = torch.randn(32, 16).bfloat16()
    x = torch.zeros(16, 16, dtype=torch.bfloat16)
    holder = _holding(weight)
    assert torch.equal(fp8.matmul(x, holder), torch.zeros(16, 32, dtype=torch.bfloat16))
    assert fp8.matmul(torch.randn(5, 16).bfloat16(), holder) is None  # the bf16 path instead
    fp8.detach(holder)
    assert fp8.matmul(x, holder) is None and not list(holder.buffers())


def _holding(weight: torch.Tensor) -> torch.nn.Module:
    holder = torch.nn.Module()
    fp8.attach(holder, weight)
    assert holder.state_dict() == {}  # non-persistent: checkpoints never hold the fp8 copies
    return holder


@pytest.fixture
def bf16_lora(tiny_model):
    from ade_mlflow_plugin.training.model import add_lora, load_base_model

    torch.manual_seed(0)
    config = TrainingConfig(base_model=str(tiny_model))
    model = add_lora(load_base_model(config, "cpu", torch.bfloat16), config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model.train()


def _loss_and_lora_grads(model, seed: int):
    ids = torch.randint(3, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(seed))
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach().double(), torch.cat([p.grad.double().flatten() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("fuse", [False, True])
def test_tiny_model_loss_and_gradients_near_bf16(bf16_lora, fuse):
    ref_loss, ref_grads = _loss_and_lora_grads(bf16_lora, 5)
    with fused_lora(bf16_lora) if fuse else _nothing() as groups, fp8.fp8_base(bf16_lora, groups or []) as count:
        # 2 layers: q/k/v (a group, or 3) and o each; the MLP (intermediate 172, not a multiple of 16) stays bf16
        assert count == (4 if fuse else 8)
        loss, grads = _loss_and_lora_grads(bf16_lora, 5)
    assert abs(float(loss - ref_loss)) / float(ref_loss) < 0.01
    assert float(torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0)) > 0.99
    assert _rel(grads, ref_grads) < 0.15
    after, _ = _loss_and_lora_grads(bf16_lora, 5)  # outside: bf16 again, bit for bit
    assert torch.equal(after, ref_loss)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False



def test_precision_turns_fp8_on_only_where_it_runs():
    from ade_mlflow_plugin.training.speed import precision

    on = TrainingConfig(fp8_base=True)
    assert precision(on, "cuda", bf16_supported=True, capability=(9, 0)).fp8
    assert not precision(TrainingConfig(), "cuda", bf16_supported=True, capability=(9, 0)).fp8  # off by default
    older = precision(on, "cuda", bf16_supported=True, capability=(8, 0))
    assert not older.fp8 and "fp8_base (needs sm89 or newer, this GPU is sm80)" in older.summary()
    quantized = precision(on, "cuda", bf16_supported=True, capability=(9, 0), quantization="4bit")
    assert not quantized.fp8 and "fp8_base (a quantized base" in quantized.summary()
    assert not precision(on, "cpu", bf16_supported=False).fp8
