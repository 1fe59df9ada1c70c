"""Whole-job time: where an entry's wall time goes, measured inside the job.

A user pays for the whole job, not for the training loop alone, so the entry times its phases from the
moment the process started (not from main(): imports are part of the bill) to the end of publishing:

  startup         process start -> the entry's main() (interpreter, torch/transformers/mlflow imports)
  setup           attaching to the MLflow run, the Trainer's construction, resuming
  dataset         mining + tokenising + packing (or loading a prepared dataset)
  model_load      base model + tokenizer + LoRA (+ 4-bit) onto the device
  eval            the before/after evals (eval_loss, exact_match) and the periodic evals inside training
  compile_warmup  what the first steps cost beyond a steady step (torch.compile, autotuning, allocator)
  training        optimizer steps at their steady cost
  checkpoints     the time between steps: checkpoint saves, step logs, the next batches' collate
  model_logging   the model saved, logged to the run and registered
  other           the rest of the wall time (metric flushes, threads joining): the shares add up to 100 %

The warm-up is the *excess* of the first steps over the steady step time (median of the later steps),
not the whole of those steps: they train too, and counting them whole would make a short run's warm-up
look like more than it costs. Logged to the run as `phase_seconds/<name>` metrics (plus
`phase_seconds/wall` and `training_share`), a `phases.json` artifact, and a table printed at the end.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Any, Iterator

from transformers import TrainerCallback

PHASES = ("startup", "setup", "dataset", "model_load", "eval", "compile_warmup", "training", "checkpoints",
          "model_logging", "other")
ARTIFACT = "phases.json"
METRIC_PREFIX = "phase_seconds/"
SHARE_METRIC = "training_share"
#: A step is steady once it takes at most this many times the steady (median) step time.
STEADY_FACTOR = 1.5


_IMPORTED_AT = time.time()


def process_start_time() -> float:
    """When this process was created (epoch seconds): psutil's reading of the OS's own record (psutil comes
    with accelerate, a training dependency); without it, when this module was imported (the start-up then
    misses the interpreter's start and the imports before it)."""
    try:
        import psutil
    except ImportError:
        return _IMPORTED_AT
    return psutil.Process().create_time()


class PhaseClock:
    """Seconds per phase of one entry invocation, from the process's start."""

    def __init__(self, started_at: float | None = None, now: float | None = None) -> None:
        self.started_at = process_start_time() if started_at is None else started_at
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.add("startup", (time.time() if now is None else now) - self.started_at)

    def add(self, name: str, seconds: float) -> None:
        if name not in self.seconds:
            raise KeyError(f"unknown phase {name!r}: one of {', '.join(PHASES)}")
        self.seconds[name] += max(0.0, seconds)

    def move(self, source: str, target: str, seconds: float) -> None:
        """Re-book seconds measured as ``source`` to ``target`` (never more than source holds)."""
        seconds = min(max(0.0, seconds), self.seconds[source])
        self.seconds[source] -= seconds
        self.add(target, seconds)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """Seconds and shares of each phase; `other` is what no phase measured, so they add up to the wall."""
        wall = max((time.time() if now is None else now) - self.started_at, 1e-9)
        seconds = {**self.seconds, "other": 0.0}
        seconds["other"] = max(0.0, wall - sum(seconds.values()))
        wall = max(wall, sum(seconds.values()))  # clocks of different kinds may disagree by a hair
        return {"wall_seconds": wall, "training_share": seconds["training"] / wall,
                "phases": {name: {"seconds": seconds[name], "share": seconds[name] / wall} for name in PHASES}}


def metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The summary as run metrics."""
    out = {f"{METRIC_PREFIX}{name}": entry["seconds"] for name, entry in summary["phases"].items()}
    out[f"{METRIC_PREFIX}wall"] = summary["wall_seconds"]
    out[SHARE_METRIC] = summary["training_share"]
    return out


def table(summary: dict[str, Any]) -> str:
    """The phase table the job prints at its end."""
    lines = [f"{'phase':<16}{'seconds':>10}{'share':>9}"]
    for name, entry in summary["phases"].items():
        lines.append(f"{name:<16}{entry['seconds']:>10.2f}{entry['share']:>9.1%}")
    lines.append(f"{'wall':<16}{summary['wall_seconds']:>10.2f}{1:>9.1%}")
    return "\n".join(lines)


def warmup_excess(durations: list[float]) -> float:
    """Seconds the first steps took beyond the steady step time, up to the first steady step.

    Steady: the median of the second half of the steps (the first half may still be warming up). With
    fewer than 4 steps there is no steady state to compare with: the first step's excess over the median
    of the others is all that can be said.
    """
    if len(durations) < 2:
        return 0.0
    tail = durations[len(durations) // 2:] if len(durations) >= 4 else durations[1:]
    steady = statistics.median(tail)
    excess = 0.0
    for duration in durations:
        if duration <= STEADY_FACTOR * steady:
            break
        excess += duration - steady
    return excess


def _sync() -> None:
    """Wait for the GPU: CUDA work is queued ahead of the host, so without this a step's time would show up
    in whatever synchronises next (a log, a save). One wait per optimizer step costs a launch bubble of
    microseconds against steps of tenths of a second."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StepClock(TrainerCallback):
    """Splits the Trainer's wall time into steps, periodic evals, the gaps between steps (checkpoint saves,
    logs) and the time before the first step, for book_training."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.eval_s = 0.0
        self.gaps_s = 0.0
        self._step_start: float | None = None
        self._step_end: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        _sync()
        now = time.perf_counter()
        if self._step_end is not None:
            self.gaps_s += now - self._step_end
        self._step_start = now

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        now = time.perf_counter()
        if self._step_start is not None:
            self.durations.append(now - self._step_start)
        self._step_end, self._step_start = now, None

    def on_train_end(self, args, state, control, **kwargs):
        if self._step_end is not None:  # the last step's eval and save
            self.gaps_s += time.perf_counter() - self._step_end
            self._step_end = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "eval_runtime" in logs:
            self.eval_s += float(logs["eval_runtime"])


def book_training(clock: PhaseClock, steps: StepClock, train_wall_s: float) -> None:
    """Book the wall time of trainer.train(): evals, checkpoints, warm-up and steady steps; the time before
    the first step (Trainer construction, resume) is setup."""
    eval_s = min(steps.eval_s, steps.gaps_s)
    stepping = sum(steps.durations)
    warmup = warmup_excess(steps.durations)
    clock.add("eval", eval_s)
    clock.add("checkpoints", steps.gaps_s - eval_s)
    clock.add("compile_warmup", warmup)
    clock.add("training", stepping - warmup)
    clock.add("setup", train_wall_s - stepping - steps.gaps_s)
