"""transformers: the attention implementation a loaded model actually runs.

training/speed.py reports "flex_attention" among the speed options only when the model runs it.
transformers 5 decides the implementation in from_pretrained (falling back when one is unavailable)
and keeps it in ``config._attn_implementation``; it offers ``set_attn_implementation`` and the
``attn_implementation`` argument to choose one, but no public getter (checked on transformers 5.25 and
its attention_interface docs), and ``config.to_dict()`` drops the value.

Public fallback when the property is gone: what the caller asked from_pretrained for (``requested``);
from_pretrained raises rather than falls back when flex_attention is named and cannot run.
tests/adapters/test_transformers_attn.py fails first.
"""
from __future__ import annotations

from typing import Any

_ATTR = "_attn_implementation"


def attn_implementation(config: Any, requested: str | None = None) -> str | None:
    """The attention implementation of a model's ``config`` ("sdpa", "flex_attention", ...)."""
    if hasattr(type(config), _ATTR) or hasattr(config, _ATTR):
        return getattr(config, _ATTR)
    return requested
