"""Fused LoRA: projections that read the same input (q/k/v, gate/up) run as one group.

PEFT runs each adapted projection alone: per projection one base matmul, one x @ A.T, one (x A.T) @ B.T and
an add, and in backward as many matmuls again plus the sums of their input gradients. For a group that shares
its input x, this module computes

    base = x @ cat(W_q, W_k, W_v).T          one matmul instead of three (frozen 16-bit weights only)
    xa   = x @ cat(A_q, A_k, A_v).T          one matmul instead of three: x is read once
    out_i = base_i + (xa_i @ B_i.T) * s_i

so backward has one matmul for x's gradient through the base and one through the adapters, one for the A
weights' gradients, and no adds of three input-gradient copies. The concatenated frozen weight exists only
during the step (autograd keeps it for x's gradient).

How it hooks in without model code: the group's first member (q_proj, gate_proj; the order the decoder layer
calls them in) computes every member's output and keeps them for the others; a member called with another
tensor than the one the group saw, or with extra arguments, or out of order, runs PEFT's own forward, so
the result is always exact. Only plain LoRA qualifies (one active adapter, no dropout, no DoRA or other
variant, no LoRA bias, not merged); a quantized base keeps its own matmul and only the A matrices fuse.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ade_mlflow_plugin.training import fp8

#: Names of sibling projections that read the same input in Llama-like decoder layers, first-called first.
GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass(eq=False)
class _Group:
    """One group of sibling LoRA projections and the outputs the first member computed for the others."""

    members: tuple[Any, ...]
    adapter: str
    fuse_base: bool
    x: torch.Tensor | None = None
    outs: list[torch.Tensor] | None = None
    served: list[bool] = field(default_factory=list)
    fp8: Any = None  # fp8.Fp8Weight of the concatenated base weight, while fp8_base is on


def _plain_adapter(module: Any) -> str | None:
    """The adapter name when module is a PEFT LoRA Linear running one plain adapter, else None."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
        return None
    if len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    if name not in module.lora_A or name not in module.lora_B:
        return None
    lora_a, lora_b = module.lora_A[name], module.lora_B[name]
    if not isinstance(lora_a, nn.Linear) or not isinstance(lora_b, nn.Linear) or lora_b.bias is not None:
        return None
    if name in getattr(module, "lora_variant", {}) or not isinstance(module.lora_dropout[name], nn.Identity):
        return None
    return name


def _fusable_base(members: tuple[Any, ...]) -> bool:
    """Frozen plain 16/32-bit Linear bases without bias, of one dtype: their weights can be concatenated."""
    bases = [m.base_layer for m in members]
    return all(type(b) is nn.Linear and b.bias is None and not b.weight.requires_grad for b in bases) \
        and len({b.weight.dtype for b in bases}) == 1 and len({b.in_features for b in bases}) == 1


def find_groups(model: Any) -> list[_Group]:
    """Every group of GROUPS found under one parent module whose members all qualify."""
    groups = []
    for parent in model.modules():
        for names in GROUPS:
            members = tuple(getattr(parent, name, None) for name in names)
            adapters = {_plain_adapter(m) for m in members}
            if None in adapters or len(adapters) != 1:
                continue
            if len({m.lora_A[next(iter(adapters))].weight.dtype for m in members}) != 1:
                continue
            groups.append(_Group(members, adapters.pop(), _fusable_base(members)))
    return groups


def group_outputs(group: _Group, x: torch.Tensor) -> list[torch.Tensor]:
    """Every member's output for input x: one base matmul (when fusable), one A matmul, a B matmul each."""
    members, name = group.members, group.adapter
    if group.fuse_base:
        base = fp8.matmul(x, group.fp8) if group.fp8 is not None else None
        if base is None:
            base = F.linear(x, torch.cat([m.base_layer.weight for m in members]))
        bases = base.split([m.base_layer.out_features for m in members], dim=-1)
    else:
        bases = [m.base_layer(x) for m in members]
    a_weight = torch.cat([m.lora_A[name].weight for m in members])
    xa = F.linear(x.to(a_weight.dtype), a_weight).split([m.lora_A[name].out_features for m in members], dim=-1)
    return [(base + m.lora_B[name](part) * m.scaling[name]).to(base.dtype)
            for m, base, part in zip(members, bases, xa)]


def _member_forward(group: _Group, index: int, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    module = group.members[index]
    if args or kwargs or _plain_adapter(module) != group.adapter:
        return type(module).forward(module, x, *args, **kwargs)
    if index == 0:
        group.x, group.outs = x, group_outputs(group, x)
        group.served = [True] + [False] * (len(group.members) - 1)
        return group.outs[0]
    if group.outs is None or group.x is not x or group.served[index]:
        return type(module).forward(module, x)  # another input, or called twice: PEFT's exact forward
    out = group.outs[index]
    group.served[index] = True
    if all(group.served):  # the last sibling took its output: hold no activations past the layer
        group.x = group.outs = None
    return out


@contextlib.contextmanager
def fused_lora(model: Any) -> Iterator[list[_Group]]:
    """While inside, sibling LoRA projections run as groups; yields the groups. Outside, PEFT's forward."""
    groups = find_groups(model)
    for group in groups:
        for index, member in enumerate(group.members):
            member.forward = functools.partial(_member_forward, group, index)
    try:
        yield groups
    finally:
        for group in groups:
            group.x = group.outs = None
            for member in group.members:
                del member.forward  # back to the class's forward
