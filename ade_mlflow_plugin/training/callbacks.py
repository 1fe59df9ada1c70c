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
    """After the step in progress: save a checkpoint and stop, on every rank at the same step.

    SIGTERM may reach one rank only (one host reclaimed, a signal to one process): the ranks agree on the flag
    after every optimizer step (one all_reduce(MAX) of one number), so all of them save the same step and stop;
    a rank that stopped alone would leave its peers waiting in a collective for ever. The agreed flag is set
    on every rank, so each one's train() reports the stop and exits as stopped."""

    def __init__(self, flag: StopFlag) -> None:
        self.flag = flag

    def on_step_end(self, args, state, control, **kwargs):
        if any_rank(bool(self.flag)):
            self.flag.set()
            control.should_save = True
            control.should_training_stop = True
        return control


def distributed() -> bool:
    """Whether this process is one of several in a torch.distributed process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_rank(value: bool) -> bool:
    """True on every rank when it is True on any rank (a collective: every rank must call it); the value
    itself when the process is alone."""
    if not distributed():
        return value
    import torch
    import torch.distributed as dist

    # NCCL reduces only CUDA tensors; gloo (and a cpu:gloo,cuda:nccl group) takes a CPU one.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if value else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class SaveTrainingState(TrainerCallback):
    """The optimizer and scheduler state of a checkpoint, for a model sharded at load time (sharding.py).

    The Trainer is told save_only_model for such a model (it refuses to checkpoint an optimizer it cannot
    see whole); the LoRA weights it optimizes are replicated, so rank 0's state is every rank's. Written
    under the names the Trainer reads on resume (its RNG state is not: without dropout, the default, the
    data order alone decides the run, and it comes from the seed and the step)."""

    def on_save(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if not state.is_world_process_zero or optimizer is None:
            return
        import torch
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

        folder = checkpoint_folder(Path(args.output_dir), state.global_step)
        if folder.is_dir():
            torch.save(optimizer.state_dict(), folder / OPTIMIZER_NAME)
            if lr_scheduler is not None:
                torch.save(lr_scheduler.state_dict(), folder / SCHEDULER_NAME)


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
    """Marks a checkpoint complete once the Trainer (every rank of it) has written all of it and rotated old
    ones."""

    def on_save(self, args, state, control, **kwargs):
        # Every rank writes into the checkpoint (its RNG state at least): the marker waits for all of them.
        if distributed():
            import torch.distributed as dist

            dist.barrier()
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
