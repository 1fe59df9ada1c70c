"""fp8 matmuls for the frozen base's linear layers (option fp8_base; off by default, H100/H200 class GPUs).

A LoRA step multiplies by each frozen base weight twice: x @ W.T forward and grad @ W backward (W gets no
gradient). Both run here as float8 (e4m3) matrix products with row-wise scales: each token's row of x (or
of the gradient) is scaled by its own absolute maximum, and the weight by its output rows (forward) or its
input columns (backward; a second fp8 copy of W, transposed, so each product gets the layout it needs).
Hopper's fp8 tensor cores run twice bf16's rate; the price is one pass over each activation to quantize it
and 2 bytes a frozen weight for the two fp8 copies. The LoRA adapters, norms, attention and the LM head stay
in bf16, so only the frozen path is rounded: the loss against bf16 is measured in benchmarks/RESULTS.md.

Only plain frozen Linear bases without bias, 16-bit, with both dimensions multiples of 16 (the fp8 kernels'
tile constraint) take part; every other layer, and any call with a row count not a multiple of 16, runs
in bf16. Needs torch.nn.functional.scaled_mm (public since torch 2.10) and sm89 or newer (speed.precision).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
MIN_SCALE = 1e-12  # an all-zero row (padding) gets this scale instead of a division by zero


def available() -> bool:
    """Whether this torch has the public row-wise scaled matmul."""
    return hasattr(F, "scaled_mm") and hasattr(F, "ScalingType") and hasattr(F.ScalingType, "RowWise")


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 tensor, float32 scale per row of shape (rows, 1)) with t ~= fp8 * scale."""
    amax = t.abs().amax(dim=-1, keepdim=True).float()
    scale = (amax / E4M3_MAX).clamp(min=MIN_SCALE)
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def scaled_mm(a8: torch.Tensor, a_scale: torch.Tensor, b8_t: torch.Tensor, b_scale: torch.Tensor,
              out_dtype: torch.dtype) -> torch.Tensor:
    """a8 (M x K, row-major) @ b8_t.T, b8_t (N x K, row-major); scales (M, 1) and (N, 1)."""
    rowwise = F.ScalingType.RowWise
    return F.scaled_mm(a8, b8_t.t(), a_scale, rowwise, b_scale.t(), rowwise, output_dtype=out_dtype)


@dataclass(frozen=True)
class Fp8Weight:
    """A frozen weight W (out x in) as the two fp8 copies its forward and backward products need."""

    w8: torch.Tensor        # out x in, scale per output row: x @ W.T
    w_scale: torch.Tensor   # (out, 1)
    wt8: torch.Tensor       # in x out, scale per input column: grad @ W
    wt_scale: torch.Tensor  # (in, 1)

    @classmethod
    def of(cls, weight: torch.Tensor) -> "Fp8Weight":
        with torch.no_grad():
            w8, w_scale = quantize_rows(weight)
            wt8, wt_scale = quantize_rows(weight.t().contiguous())
        return cls(w8, w_scale, wt8, wt_scale)


class _Fp8Linear(torch.autograd.Function):
    """y = x @ W.T with W frozen: fp8 products forward and backward; nothing of x is saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor,  # type: ignore[override]
                wt8: torch.Tensor, wt_scale: torch.Tensor) -> torch.Tensor:
        x8, x_scale = quantize_rows(x)
        ctx.save_for_backward(wt8, wt_scale)
        ctx.out_dtype = x.dtype
        return scaled_mm(x8, x_scale, w8, w_scale, x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        wt8, wt_scale = ctx.saved_tensors
        g8, g_scale = quantize_rows(grad.contiguous())
        return scaled_mm(g8, g_scale, wt8, wt_scale, ctx.out_dtype), None, None, None, None


def matmul(x: torch.Tensor, fp8: Fp8Weight) -> torch.Tensor | None:
    """x @ W.T in fp8 (W the weight fp8 was made of); None when the row count does not suit the kernels."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if rows == 0 or rows % 16:
        return None
    # Under autocast a 16-bit weight's matmul would run in the autocast dtype: the output keeps that dtype.
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    dtype = dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    flat = x.reshape(rows, x.shape[-1]).to(dtype)
    out = _Fp8Linear.apply(flat, fp8.w8, fp8.w_scale, fp8.wt8, fp8.wt_scale)
    return out.reshape(*x.shape[:-1], fp8.w8.shape[0])


def eligible(layer: Any) -> bool:
    """A frozen, bias-free, 16-bit nn.Linear whose two dimensions are multiples of 16."""
    return type(layer) is nn.Linear and layer.bias is None and not layer.weight.requires_grad \
        and layer.weight.dtype in (torch.bfloat16, torch.float16) \
        and layer.in_features % 16 == 0 and layer.out_features % 16 == 0


def _base_forward(layer: nn.Linear, fp8: Fp8Weight, x: torch.Tensor) -> torch.Tensor:
    out = matmul(x, fp8)
    return F.linear(x, layer.weight) if out is None else out


@contextlib.contextmanager
def fp8_base(model: Any, groups: Iterable[Any] = ()) -> Iterator[int]:
    """While inside, the frozen bases of LoRA layers (and fused groups' concatenated bases) multiply in fp8.

    ``groups`` are fused_lora's groups: each fusable one gets the fp8 copies of its concatenated weight, and
    its members' own bases are left alone (the group's matmul replaces them). Yields how many weights.
    """
    from peft.tuners.lora import LoraLayer

    grouped = set()
    count = 0
    for group in groups:
        if group.fuse_base and all(eligible(m.base_layer) for m in group.members):
            group.fp8 = Fp8Weight.of(torch.cat([m.base_layer.weight for m in group.members]))
            grouped.update(id(m) for m in group.members)
            count += 1
    patched = []
    for module in model.modules():
        if isinstance(module, LoraLayer) and id(module) not in grouped and eligible(module.base_layer):
            base = module.base_layer
            base.forward = functools.partial(_base_forward, base, Fp8Weight.of(base.weight))
            patched.append(base)
    try:
        yield count + len(patched)
    finally:
        for group in groups:
            group.fp8 = None
        for base in patched:
            del base.forward  # back to nn.Linear's forward; the fp8 copies go with the partial
