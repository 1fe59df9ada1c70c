"""Command lines of the MLproject entries (entrypoints/*.py call these): parse, run, exit codes.

Bad input -> one line on stderr, exit 2; a failure -> one line, exit 1; SIGTERM -> checkpoint, exit 143.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, NoReturn

from ade_mlflow_plugin.config.training import EvaluateConfig, TrainingConfig
from ade_mlflow_plugin.errors import AdeError, ConfigError
from ade_mlflow_plugin.options import add_arguments, from_mapping


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage over several lines; we print one
        raise ConfigError(f"{self.prog}: {message}: see --help")


def config_parser(prog: str) -> argparse.ArgumentParser:
    """Every TrainingConfig field as `--name VALUE`, help from its declaration."""
    parser = _Parser(prog=prog, description="ade-mlflow training entry: fine-tune a base model with LoRA/QLoRA "
                                            "and log it to the MLflow run.")
    add_arguments(parser, TrainingConfig)
    return parser


def parse_config(prog: str, argv: list[str] | None) -> TrainingConfig:
    args = vars(config_parser(prog).parse_args(argv))
    return TrainingConfig.from_params({k: v for k, v in args.items() if v is not None})


def _guard(body: Callable[[], None]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        body()
    except AdeError as exc:
        print(f"ade-mlflow: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    return 0


def main(argv: list[str] | None = None) -> int:
    from ade_mlflow_plugin.training.pipeline import run_main

    return _guard(lambda: _report(run_main(parse_config("main", argv))))


def train(argv: list[str] | None = None) -> int:
    from ade_mlflow_plugin.training.pipeline import run_train

    return _guard(lambda: _report(run_train(parse_config("train", argv))))


def evaluate(argv: list[str] | None = None) -> int:
    def body() -> None:
        from ade_mlflow_plugin.training.pipeline import run_evaluate

        parser = _Parser(prog="evaluate", description="Score a logged or registered model on a prepared dataset.")
        add_arguments(parser, EvaluateConfig)
        args = vars(parser.parse_args(argv))
        config = from_mapping(EvaluateConfig, {k: v for k, v in args.items() if v is not None})
        metrics = run_evaluate(config.model_uri, config.dataset, config.max_new_tokens, config.num_samples,
                               config.max_seq_len)
        print(" ".join(f"{k}={v:.6g}" for k, v in metrics.items()))

    return _guard(body)


def _report(outcome) -> None:
    line = f"run {outcome.run_id}: global step {outcome.global_step}"
    if outcome.metrics:
        line += " " + " ".join(f"{k}={v:.6g}" for k, v in outcome.metrics.items())
    if outcome.version:
        line += f"; registered version {outcome.version}"
    print(line)
