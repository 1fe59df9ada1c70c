"""Shared by the CLI verb and the MLproject entry: load a tokenizer, build, save, log to the MLflow run."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.config.dataset import DatasetConfig
from ade_mlflow_plugin.errors import AdeError, ConfigError, first_line
from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.options import add_arguments, from_mapping, options_of


def load_tokenizer(name_or_path: str | None) -> Any:
    """The base model's tokenizer (AutoTokenizer), or None when no model is named."""
    if not name_or_path:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of '{name_or_path}' ({first_line(exc, 200)}): pass a local "
                          "model folder or a hub model name reachable from here") from exc


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
        raise AdeError(f"cannot attach to MLflow run {run_id} from MLFLOW_RUN_ID ({first_line(exc)}): "
                       "check MLFLOW_TRACKING_URI and the run id") from exc
    # Like any MLflow entry script, end the attached run with this process (FAILED on an exception); the
    # launcher or `mlflow run` that created it records the final status again from the exit code.
    with run:
        prepared = build_dataset(codebase, out_dir, tokenizer=tokenizer, log_to_mlflow=True, **kwargs)
        if log_dataset and prepared.path is not None:
            try:
                mlflow.log_artifacts(str(prepared.path), artifact_path="dataset")
            except (MlflowException, OSError) as exc:
                raise AdeError(f"could not upload the dataset to MLflow run {run_id} ({first_line(exc)}): "
                               "check the artifact store") from exc
    return prepared


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


def entry_parser() -> argparse.ArgumentParser:
    """The `prepare_data` entry's command line: the dataset options, help from their declarations."""
    parser = argparse.ArgumentParser(prog="prepare_data", description="Mine the codebase into a dataset and log "
                                                                      "it to the run.")
    parser.add_argument("--codebase", required=True, help="the codebase to mine")
    add_arguments(parser, DatasetConfig)
    # In a job: the container's output folder. Elsewhere not the project folder (`mlflow run .` runs in
    # it): a fresh temporary folder; the run's `dataset/` artifacts hold the copy that matters.
    parser.add_argument("--out", default=None,
                        help="default: $SM_OUTPUT_DATA_DIR/prepared_dataset, else a temporary folder")
    return parser


def entry(argv: list[str] | None = None) -> int:
    """MLproject entry `prepare_data`: bad input -> one line, exit 2; a failure -> one line, exit 1."""
    args = vars(entry_parser().parse_args(argv))
    out, codebase = args.pop("out") or _default_out(), args.pop("codebase")
    try:
        options = from_mapping(DatasetConfig, {k: v for k, v in args.items() if v is not None})
        prepared = prepare_and_log(codebase, out, log_dataset=True,
                                   **{name: getattr(options, name) for name in options_of(DatasetConfig)})
    except AdeError as exc:
        print(f"prepare_data: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    print(summary(prepared))
    return 0


def _default_out() -> str:
    sm_output = os.environ.get(contract.ENV_OUTPUT_DATA_DIR)
    return str(Path(sm_output) / "prepared_dataset") if sm_output else tempfile.mkdtemp(prefix="ade-data-")
