"""Command lines of the MLproject entries (entrypoints/*.py call these): parse, run, exit codes.

Bad input -> one line on stderr, exit 2; a failure -> one line, exit 1; SIGTERM -> checkpoint, exit 143.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from typing import Callable, NoReturn

from ade_mlflow_plugin.errors import AdeError, ConfigError
from ade_mlflow_plugin.training.config import TrainingConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage over several lines; we print one
        raise ConfigError(f"{self.prog}: {message}: see --help")


def config_parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="ade-mlflow training entry; every option takes a string value.")
    for f in fields(TrainingConfig):
        parser.add_argument(f"--{f.name}", default=None, metavar=f.name.upper())
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
    from ade_mlflow_plugin.training.config import whole

    def body() -> None:
        from ade_mlflow_plugin.training.pipeline import run_evaluate

        parser = _Parser(prog="evaluate")
        for name in ("model_uri", "dataset", "max_new_tokens", "num_samples", "max_seq_len"):
            parser.add_argument(f"--{name}", default=None)
        args = parser.parse_args(argv)
        if not args.model_uri or not args.dataset:
            raise ConfigError("evaluate needs --model_uri (runs:/<id>/model or models:/<name>/<n>) and --dataset")
        metrics = run_evaluate(args.model_uri, args.dataset,
                               whole(0)("max_new_tokens", args.max_new_tokens or 64),
                               whole(1)("num_samples", args.num_samples or 50),
                               whole(16)("max_seq_len", args.max_seq_len or 2048))
        print(" ".join(f"{k}={v:.6g}" for k, v in metrics.items()))

    return _guard(body)


def _report(outcome) -> None:
    line = f"run {outcome.run_id}: global step {outcome.global_step}"
    if outcome.metrics:
        line += " " + " ".join(f"{k}={v:.6g}" for k, v in outcome.metrics.items())
    if outcome.version:
        line += f"; registered version {outcome.version}"
    print(line)
