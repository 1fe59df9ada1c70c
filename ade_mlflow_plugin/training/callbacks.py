"""Trainer callbacks: step metrics to MLflow, SIGTERM -> save and stop, complete-checkpoint markers.

The HF MLflowCallback is not used (report_to="none"): it ignores MLFLOW_RUN_ID and opens a run of its own.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from transformers import TrainerCallback

from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.training.checkpoints import StopFlag, checkpoint_folder, mark_complete
from ade_mlflow_plugin.training.evaluation import MAX_LOG_PERPLEXITY

logger = logging.getLogger(__name__)
# Trainer log key -> metric name users see (DESIGN.md).
STEP_METRICS = {"loss": "train_loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm", "epoch": "epoch"}


class MetricsCallback(TrainerCallback):
    """Per-step train_loss, learning_rate, grad_norm, epoch and tokens_per_second into the MetricLogger."""

    def __init__(self, metric_logger: Any) -> None:
        self.metric_logger = metric_logger
        self._last_time: float | None = None
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time, self._last_tokens = time.perf_counter(), state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        # The last step's periodic eval (on a share of the eval split) is not logged: the pipeline scores the
        # published model (the best checkpoint's, with load_best) on the whole split at that step.
        if logs and "eval_loss" in logs and state.is_world_process_zero and state.global_step < state.max_steps:
            self._log_eval(logs["eval_loss"], state.global_step)
        # The end-of-training summary also carries "train_loss" (a mean) but no "loss": skip it.
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        metrics = {name: logs[key] for key, name in STEP_METRICS.items() if key in logs}
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        if self._last_time is not None and now > self._last_time and tokens > self._last_tokens:
            metrics["tokens_per_second"] = (tokens - self._last_tokens) / (now - self._last_time)
        self._last_time, self._last_tokens = now, tokens
        self.metric_logger.log(metrics, step=state.global_step)
        print(metric_line(metrics, state.global_step), flush=True)


    def _log_eval(self, loss: float, step: int) -> None:
        metrics = {"eval_loss": loss, "perplexity": math.exp(min(loss, MAX_LOG_PERPLEXITY))}
        self.metric_logger.log(metrics, step=step)
        print(metric_line(metrics, step), flush=True)


class LogLastStep(TrainerCallback):
    """The last step is always logged, whatever logging_steps is: every curve ends where training did."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control


class EvalTiming(TrainerCallback):
    """Periodic eval's share of the training time (eval_runtime of each eval over train_runtime)."""

    def __init__(self) -> None:
        self.evals, self.eval_s, self.train_s = 0, 0.0, 0.0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "eval_runtime" in logs:
            self.evals, self.eval_s = self.evals + 1, self.eval_s + float(logs["eval_runtime"])
        if logs and "train_runtime" in logs:
            self.train_s = float(logs["train_runtime"])

    @property
    def share(self) -> float | None:
        return self.eval_s / self.train_s if self.evals and self.train_s else None

    def line(self) -> str:
        if self.share is None:
            return ""
        return (f"periodic eval: {self.evals} evals, {self.eval_s:.2f} s, {self.share:.1%} of the training "
                f"time ({self.train_s:.2f} s)")


def metric_line(metrics: dict[str, float], step: int) -> str:
    """One stable line per log, `ade-metrics step=5 train_loss=1.234 ...`: the SageMaker console and
    CloudWatch draw the curves from it (the request's MetricDefinitions), with no MLflow at all."""
    values = " ".join(f"{name}={float(value):.6g}" for name, value in metrics.items())
    return f"{contract.METRIC_LINE_PREFIX} step={step} {values}"


class StopOnSigterm(TrainerCallback):
    """After the step in progress: save a checkpoint and stop."""

    def __init__(self, flag: StopFlag) -> None:
        self.flag = flag

    def on_step_end(self, args, state, control, **kwargs):
        if self.flag:
            control.should_save = True
            control.should_training_stop = True
        return control


#: Called (rank 0) with (checkpoint root, TrainerState) after each checkpoint is complete and old ones are
#: rotated out. A registry here, not a callback argument: trainer.py builds the callbacks, while the one who
#: listens (the pipeline, which holds the MLflow run) is above it.
_checkpoint_listeners: list[Callable[[Path, Any], None]] = []


@contextmanager
def checkpoint_listener(listener: Callable[[Path, Any], None]) -> Iterator[None]:
    """Have ``listener`` called after each complete checkpoint while the block runs."""
    _checkpoint_listeners.append(listener)
    try:
        yield
    finally:
        _checkpoint_listeners.remove(listener)


class MarkComplete(TrainerCallback):
    """Marks a checkpoint complete once the Trainer has written all of it (and rotated old ones)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = checkpoint_folder(Path(args.output_dir), state.global_step)
            if folder.is_dir():
                mark_complete(folder)
                _tell_listeners(Path(args.output_dir), state)


def _tell_listeners(root: Path, state: Any) -> None:
    for listener in list(_checkpoint_listeners):
        try:
            listener(root, state)
        except Exception as exc:  # noqa: BLE001 - a listing that fails must not stop the training
            from ade_mlflow_plugin.errors import describe

            logger.warning("checkpoint listing not updated: %s", describe(exc))
