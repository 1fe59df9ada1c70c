"""`ade-mlflow prepare-data CODEBASE --out DIR --num-examples N --synthetic-ratio R`.

The dataset options (and their --help) are DatasetConfig's fields: the same parsers as the MLproject
entries and the backend use, so a bad value is the same one line everywhere.
"""
from __future__ import annotations

from pathlib import Path

import click

from ade_mlflow_plugin.config.dataset import DatasetConfig
from ade_mlflow_plugin.options import click_option


@click.command("prepare-data")
@click.argument("codebase", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder to save the dataset (save_to_disk) and stats.json in.")
@click_option(DatasetConfig, "num_examples", "--num-examples", required=True)
@click_option(DatasetConfig, "synthetic_ratio", "--synthetic-ratio", required=True)
@click_option(DatasetConfig, "eval_fraction", "--eval-fraction")
@click_option(DatasetConfig, "seed", "--seed")
@click_option(DatasetConfig, "base_model", "--tokenizer", metavar="MODEL")
@click_option(DatasetConfig, "max_tokens", "--max-tokens")
@click.option("--exclude", multiple=True, help="Extra .gitignore-style pattern to leave out (repeatable).")
@click.option("--workers", default=None, type=int, help="Processes to mine with [default: CPUs available].")
@click.option("--progress/--no-progress", default=True, show_default=True)
def prepare_data_command(codebase: Path, out_dir: Path, num_examples: int, synthetic_ratio: float,
                         eval_fraction: float, seed: int, base_model: str | None, max_tokens: int,
                         exclude: tuple[str, ...], workers: int | None, progress: bool) -> None:
    """Mine CODEBASE into a train/eval dataset of prompt/completion examples.

    Inside an MLflow run (MLFLOW_RUN_ID set) the dataset is logged as a run input with stats.json.
    """
    from ade_mlflow_plugin.dataset.run import prepare_and_log, summary

    prepared = prepare_and_log(
        codebase, out_dir, base_model=base_model, log_dataset=False, num_examples=num_examples,
        synthetic_ratio=synthetic_ratio, eval_fraction=eval_fraction, seed=seed, max_tokens=max_tokens,
        exclude=list(exclude), workers=workers, progress=progress)
    click.echo(summary(prepared))
