"""Shared by the CLI verb and the MLproject entry: load a tokenizer, build, save, log to the MLflow run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.errors import ConfigError


def load_tokenizer(name_or_path: str | None) -> Any:
    """The base model's tokenizer (AutoTokenizer), or None when no model is named."""
    if not name_or_path:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load the tokenizer of '{name_or_path}' ({reason[:200]}): pass a local model "
                          "folder or a hub model name reachable from here") from exc


def whole_number(value: Any, name: str) -> int:
    """An int from an MLflow param string such as "1000" or "1000.0"; ConfigError for "12.5" or "abc"."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}: pass e.g. 1000") from None
    if not number.is_integer():
        raise ConfigError(f"{name} must be a whole number, got {value!r}: pass e.g. 1000")
    return int(number)


def fraction(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}: pass e.g. 0.3") from None


def prepare_and_log(codebase: str | Path, out_dir: str | Path, *, base_model: str | None, log_dataset: bool,
                    **kwargs: Any):
    """build_dataset; inside an MLflow run (MLFLOW_RUN_ID set) also log the saved dataset folder."""
    from ade_mlflow_plugin.dataset.build import build_dataset

    tokenizer = load_tokenizer(base_model)
    if not os.environ.get("MLFLOW_RUN_ID"):
        return build_dataset(codebase, out_dir, tokenizer=tokenizer, log_to_mlflow=False, **kwargs)
    import mlflow

    active = mlflow.active_run()
    with (mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"]) if active is None else _noop()):
        prepared = build_dataset(codebase, out_dir, tokenizer=tokenizer, log_to_mlflow=True, **kwargs)
        if log_dataset and prepared.path is not None:
            mlflow.log_artifacts(str(prepared.path), artifact_path="dataset")
    return prepared


class _noop:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def summary(prepared) -> str:
    """A few lines for the console: counts, split sizes, digest, where it was saved."""
    ex, stats = prepared.stats["examples"], prepared.stats
    lines = [f"prepared {ex['total']} examples ({ex['mined']} mined, {ex['synthetic']} synthetic) from "
             f"{stats['files']['mined']} files: train {len(prepared.dataset['train'])}, "
             f"eval {len(prepared.dataset['eval'])}; digest {prepared.digest}"]
    if ex["shortfall"]:
        lines.append(f"note: {ex['shortfall']}")
    drops = ", ".join(f"{k} {v}" for k, v in stats["drops"].items())
    lines.append(f"dropped/skipped: {drops or 'nothing'}")
    if prepared.path is not None:
        lines.append(f"saved to {prepared.path}")
    return "\n".join(lines)
