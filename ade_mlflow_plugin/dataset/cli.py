"""`ade-mlflow prepare-data CODEBASE --out DIR --num-examples N --synthetic-ratio R`."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("prepare-data")
@click.argument("codebase", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder to save the dataset (save_to_disk) and stats.json in.")
@click.option("--num-examples", required=True, type=int, help="Most examples to make (all there are if fewer).")
@click.option("--synthetic-ratio", required=True, type=float, help="Share of synthetic examples, 0 to 1.")
@click.option("--eval-fraction", default=0.1, show_default=True, type=float,
              help="Share of examples (whole files) held out for eval.")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--tokenizer", "base_model", default=None,
              help="Base model folder or hub name: its chat template, FIM tokens and token counts are used.")
@click.option("--max-tokens", default=2048, show_default=True, type=int,
              help="Examples longer than this (prompt + completion) are dropped.")
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
