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
import types
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ade_mlflow_plugin.training import fp8

#: Names of sibling projections that read the same input in Llama-like decoder layers, first-called first.
GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


#: Plain (unregistered) attributes set on the member modules while fused_lora is on. The group's state lives on
#: its first member, an nn.Module, so that torch.compile's one graph for a decoder layer serves every layer:
#: dynamo guards on a Python object's identity (a graph per layer, and past 8 layers eager code) but not on
#: an inlined module's.
LEAD, INDEX = "ade_fused_lead", "ade_fused_index"
MEMBERS, ADAPTER, FUSE_BASE = "ade_fused_members", "ade_fused_adapter", "ade_fused_base"
INPUT, OUTS, LEFT = "ade_fused_x", "ade_fused_outs", "ade_fused_left"
ATTRS = (LEAD, INDEX, MEMBERS, ADAPTER, FUSE_BASE, INPUT, OUTS, LEFT)


def _set(module: nn.Module, name: str, value: Any) -> None:
    object.__setattr__(module, name, value)  # not nn.Module's setattr: no submodule registration, no state_dict


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


def find_groups(model: Any) -> list[Any]:
    """The first member ("lead") of every group of GROUPS found under one parent whose members all qualify."""
    leads = []
    for parent in model.modules():
        for names in GROUPS:
            members = tuple(getattr(parent, name, None) for name in names)
            adapters = {_plain_adapter(m) for m in members}
            if None in adapters or len(adapters) != 1:
                continue
            adapter = adapters.pop()
            if len({m.lora_A[adapter].weight.dtype for m in members}) != 1:
                continue
            lead = members[0]
            for index, member in enumerate(members):
                _set(member, LEAD, lead)
                _set(member, INDEX, index)
            for name, value in ((MEMBERS, members), (ADAPTER, adapter), (FUSE_BASE, _fusable_base(members)),
                                (INPUT, None), (OUTS, None), (LEFT, 0)):
                _set(lead, name, value)
            leads.append(lead)
    return leads


def members(lead: Any) -> tuple[Any, ...]:
    return getattr(lead, MEMBERS)


def fuses_base(lead: Any) -> bool:
    return getattr(lead, FUSE_BASE)


def group_outputs(lead: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """Every member's output for input x: one base matmul (when fusable), one A matmul, a B matmul each."""
    group, name = members(lead), getattr(lead, ADAPTER)
    if fuses_base(lead):
        base = fp8.matmul(x, lead)  # None unless fp8_base gave the lead its fp8 copies
        if base is None:
            base = F.linear(x, torch.cat([m.base_layer.weight for m in group]))
        bases = base.split([m.base_layer.out_features for m in group], dim=-1)
    else:
        bases = [m.base_layer(x) for m in group]
    a_weight = torch.cat([m.lora_A[name].weight for m in group])
    xa = F.linear(x.to(a_weight.dtype), a_weight).split([m.lora_A[name].out_features for m in group], dim=-1)
    return [(base + m.lora_B[name](part) * m.scaling[name]).to(base.dtype)
            for m, base, part in zip(group, bases, xa)]


def _member_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    lead, index = getattr(self, LEAD), getattr(self, INDEX)
    if args or kwargs or _plain_adapter(self) != getattr(lead, ADAPTER):
        return type(self).forward(self, x, *args, **kwargs)
    if index == 0:
        outs = group_outputs(lead, x)
        _set(lead, INPUT, x)
        _set(lead, OUTS, outs)
        _set(lead, LEFT, len(outs) - 1)
        return outs[0]
    outs = getattr(lead, OUTS)
    if outs is None or getattr(lead, INPUT) is not x:
        return type(self).forward(self, x)  # another input, or all siblings served: PEFT's exact forward
    _set(lead, LEFT, getattr(lead, LEFT) - 1)
    if getattr(lead, LEFT) == 0:  # the last sibling took its output: hold no activations past the layer
        _set(lead, INPUT, None)
        _set(lead, OUTS, None)
    return outs[index]


@contextlib.contextmanager
def fused_lora(model: Any) -> Iterator[list[Any]]:
    """While inside, sibling LoRA projections run as groups; yields the groups' leads. Outside, PEFT's forward."""
    leads = find_groups(model)
    grouped = [m for lead in leads for m in members(lead)]
    for member in grouped:
        # One function for every member (a bound method): compiled code does not depend on the layer.
        member.forward = types.MethodType(_member_forward, member)
    try:
        yield leads
    finally:
        for member in grouped:
            del member.forward  # back to the class's forward
            for name in ATTRS:
                if name in vars(member):
                    object.__delattr__(member, name)
