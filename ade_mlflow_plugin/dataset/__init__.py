"""Codebase -> training dataset: mined and synthetic examples, deduplicated, secrets dropped.

Public API (imported lazily, so `import ade_mlflow_plugin.dataset` stays cheap):
    build_dataset(codebase, out_dir, *, num_examples, synthetic_ratio, eval_fraction=0.1, seed=42,
                  tokenizer=None, max_tokens=2048, log_to_mlflow=True) -> PreparedDataset
    load_prepared(path) -> PreparedDataset
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["PreparedDataset", "build_dataset", "load_prepared"]

if TYPE_CHECKING:  # pragma: no cover
    from ade_mlflow_plugin.dataset.build import PreparedDataset, build_dataset, load_prepared


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ade_mlflow_plugin.dataset import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
