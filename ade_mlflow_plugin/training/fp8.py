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
import types
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


#: Non-persistent buffers (no state_dict entry) holding a module's fp8 copies while fp8_base is on: buffers,
#: so torch.compile passes them as graph inputs and one compiled graph serves every decoder layer.
BUFFERS = ("ade_fp8_w", "ade_fp8_w_scale", "ade_fp8_wt", "ade_fp8_wt_scale")


def attach(module: nn.Module, weight: torch.Tensor) -> None:
    """Give module the fp8 copies of weight (out x in): scaled per output row, and transposed per input column."""
    with torch.no_grad():
        w8, w_scale = quantize_rows(weight)
        wt8, wt_scale = quantize_rows(weight.t().contiguous())
    for name, tensor in zip(BUFFERS, (w8, w_scale, wt8, wt_scale)):
        module.register_buffer(name, tensor, persistent=False)


def detach(module: nn.Module) -> None:
    own = dict(module.named_buffers(recurse=False))
    for name in BUFFERS:
        if name in own:
            delattr(module, name)


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


def matmul(x: torch.Tensor, module: nn.Module) -> torch.Tensor | None:
    """x @ W.T in fp8 with the copies attach() gave module; None without them, or when the row count does not
    suit the kernels (the caller runs its 16-bit matmul)."""
    w8 = getattr(module, BUFFERS[0], None)
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if w8 is None or rows == 0 or rows % 16:
        return None
    # Under autocast a 16-bit weight's matmul would run in the autocast dtype: the output keeps that dtype.
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    dtype = dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    flat = x.reshape(rows, x.shape[-1]).to(dtype)
    out = _Fp8Linear.apply(flat, *(getattr(module, name) for name in BUFFERS))
    return out.reshape(*x.shape[:-1], w8.shape[0])


def eligible(layer: Any) -> bool:
    """A frozen, bias-free, 16-bit nn.Linear whose two dimensions are multiples of 16."""
    return type(layer) is nn.Linear and layer.bias is None and not layer.weight.requires_grad \
        and layer.weight.dtype in (torch.bfloat16, torch.float16) \
        and layer.in_features % 16 == 0 and layer.out_features % 16 == 0


def _base_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    out = matmul(x, self)
    return F.linear(x, self.weight) if out is None else out


@contextlib.contextmanager
def fp8_base(model: Any, leads: Iterable[Any] = ()) -> Iterator[int]:
    """While inside, the frozen bases of LoRA layers (and fused groups' concatenated bases) multiply in fp8.

    ``leads`` are fused_lora's groups: each one whose base is fused gets the fp8 copies of the concatenated
    weight, and its members' own bases are left alone (the group's matmul replaces them). Yields how many
    weights.
    """
    from peft.tuners.lora import LoraLayer

    from ade_mlflow_plugin.training.fused_lora import fuses_base, members

    holders, grouped = [], set()
    for lead in leads:
        group = members(lead)
        if fuses_base(lead) and all(eligible(m.base_layer) for m in group):
            attach(lead, torch.cat([m.base_layer.weight for m in group]))
            holders.append(lead)
            grouped.update(id(m) for m in group)
    patched = []
    for module in model.modules():
        if isinstance(module, LoraLayer) and id(module) not in grouped and eligible(module.base_layer):
            base = module.base_layer
            attach(base, base.weight)
            base.forward = types.MethodType(_base_forward, base)  # one function for all: one compiled graph
            patched.append(base)
    try:
        yield len(holders) + len(patched)
    finally:
        for module in holders + patched:
            detach(module)
        for base in patched:
            del base.forward  # back to nn.Linear's forward
