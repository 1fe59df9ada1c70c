"""Shared by the CLI verb and the MLproject entry: load a tokenizer, build, save, log to the MLflow run."""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.errors import AdeError, ConfigError


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
    from mlflow.exceptions import MlflowException

    run_id = os.environ["MLFLOW_RUN_ID"]
    try:
        run = mlflow.start_run(run_id=run_id) if mlflow.active_run() is None else nullcontext()
    except MlflowException as exc:
        raise AdeError(f"cannot attach to MLflow run {run_id} from MLFLOW_RUN_ID ({_first_line(exc)}): "
                       "check MLFLOW_TRACKING_URI and the run id") from exc
    # Like any MLflow entry script, end the attached run with this process (FAILED on an exception); the
    # launcher or `mlflow run` that created it records the final status again from the exit code.
    with run:
        prepared = build_dataset(codebase, out_dir, tokenizer=tokenizer, log_to_mlflow=True, **kwargs)
        if log_dataset and prepared.path is not None:
            try:
                mlflow.log_artifacts(str(prepared.path), artifact_path="dataset")
            except (MlflowException, OSError) as exc:
                raise AdeError(f"could not upload the dataset to MLflow run {run_id} ({_first_line(exc)}): "
                               "check the artifact store") from exc
    return prepared


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def summary(prepared) -> str:
    """A few lines for the console: counts, split sizes, digest, where it was saved."""
    ex, stats = prepared.stats["examples"], prepared.stats
    lines = [f"prepared {ex['total']} examples ({ex['mined']} mined, {ex['synthetic']} synthetic) from "
             f"{stats['files']['mined']} files: train {len(prepared.dataset['train'])}, "
             f"eval {len(prepared.dataset['eval'])}; digest {prepared.digest}"]
    for note in (ex["shortfall"], ex.get("eval_note")):
        if note:
            lines.append(f"note: {note}")
    drops = ", ".join(f"{k} {v}" for k, v in stats["drops"].items())
    lines.append(f"dropped/skipped: {drops or 'nothing'}")
    if prepared.path is not None:
        lines.append(f"saved to {prepared.path}")
    return "\n".join(lines)
