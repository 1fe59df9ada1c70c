"""torch: undo ``nn.Module.compile()`` on a module, so it runs eagerly again.

training/speed.py compiles each decoder layer for the duration of training only (regional compilation:
the layers share one compiled graph) and wants evaluation and generation afterwards to run the plain
model. ``nn.Module.compile()`` stores ``torch.compile(self._call_impl)`` in the instance attribute
``_compiled_call_impl`` and has no public inverse; setting that attribute back to None is the undo.

Public fallback when torch drops the attribute: the layers stay compiled (results are the same; later
forwards of new shapes may recompile), and a warning says so. tests/adapters/test_torch_compile.py
fails first.
"""
from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)
_ATTR = "_compiled_call_impl"


def can_uncompile() -> bool:
    """Whether torch still keeps Module.compile()'s result where uncompile() resets it."""
    import torch

    return hasattr(torch.nn.Module, _ATTR)


def is_compiled(module: Any) -> bool:
    """Whether ``module.compile()`` is in effect on this instance."""
    return getattr(module, _ATTR, None) is not None


def uncompile(module: Any) -> bool:
    """Undo ``module.compile()``: the next call runs the module eagerly. False when torch changed."""
    if not can_uncompile():
        logger.warning("torch has no nn.Module.%s any more: compiled layers stay compiled after training; "
                       "update ade_mlflow_plugin/adapters/torch_compile.py", _ATTR)
        return False
    setattr(module, _ATTR, None)
    return True
