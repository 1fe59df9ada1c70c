"""The training loop: transformers Trainer over packed rows, resumable from the checkpoint dir."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

from ade_mlflow_plugin.training.callbacks import (EvalTiming, LogLastStep, MarkComplete, MetricsCallback,
                                                  SaveTrainingState, StopOnSigterm)
from ade_mlflow_plugin.training.checkpoints import StopFlag, latest_checkpoint
from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.training.packing import PackedCollator
from ade_mlflow_plugin.training.sharding import is_sharded
from ade_mlflow_plugin.training.speed import device_precision, pad_multiple, speedups

logger = logging.getLogger(__name__)


#: Periodic eval's share of the compute it may take: a forward pass over a row costs about a third of a
#: training step's forward + backward over one, so eval rows per eval are capped at
#: EVAL_COMPUTE_SHARE * 3 * (rows trained on) / (evals per run): hundreds of packed rows on a real run. At
#: least MIN_EVAL_ROWS (packed rows hold several examples each): on the demo's 30 tiny steps 4 rows took
#: 11.6% of the training time, 2 rows keep it under 10%.
EVAL_COMPUTE_SHARE = 0.05
MIN_EVAL_ROWS = 2


@dataclass(frozen=True)
class Plan:
    """The run's cadence, worked out once from its length: what the Trainer is told and the job log says."""

    total_steps: int
    logging_steps: int
    eval_steps: int  # 0: no periodic eval
    save_steps: int
    eval_rows: int  # rows of the eval split each periodic eval uses
    load_best: bool

    def line(self) -> str:
        evals = f"eval every {self.eval_steps} steps on {self.eval_rows} rows" if self.eval_steps \
            else "no periodic eval"
        best = "; the best checkpoint by eval_loss is kept and loaded" if self.load_best else ""
        return (f"plan: ~{self.total_steps} steps; log every {self.logging_steps}, {evals}, checkpoint every "
                f"{self.save_steps}{best}")


def world_size() -> int:
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def total_steps(config: TrainingConfig, rows: int) -> int:
    """Optimizer steps of the run, as the Trainer counts them (max_steps, else epochs over the rows)."""
    if config.max_steps > 0:
        return config.max_steps
    per_epoch = max(1, math.ceil(rows / (config.batch_size * world_size())) // config.grad_accumulation)
    return max(1, math.ceil(config.epochs * per_epoch))


def plan(config: TrainingConfig, rows: int, eval_rows: int) -> Plan:
    total = total_steps(config, rows)
    logging, evals, save = config.intervals(total)
    if not eval_rows:
        evals = 0
    if evals:
        per_eval = EVAL_COMPUTE_SHARE * 3 * total * config.batch_size * config.grad_accumulation * world_size() \
            / max(1, math.ceil(total / evals))
        eval_rows = min(eval_rows, max(MIN_EVAL_ROWS, math.ceil(round(per_eval, 6))))
    return Plan(total, logging, evals, save, eval_rows if evals else 0, bool(evals) and config.load_best)


def training_arguments(config: TrainingConfig, output_dir: Path, device: str,
                       cadence: Plan | None = None, sharded: bool = False) -> TrainingArguments:
    """``sharded``: the model was sharded as it loaded (sharding.py); the Trainer refuses to checkpoint such a
    model's optimizer, so it saves the model only and SaveTrainingState writes the rest."""
    mixed = device_precision(config, device).mixed  # fp16: autocast + GradScaler over float32 LoRA weights
    cadence = cadence or plan(config, 0, 0)
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accumulation,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a share of the total steps
        weight_decay=config.weight_decay,
        logging_steps=cadence.logging_steps,
        save_strategy="steps",  # also saves the last step: a job stopped during eval restarts at the end
        save_steps=cadence.save_steps,
        save_total_limit=config.keep_checkpoints,
        save_only_model=sharded,
        # Periodic eval on a small fixed share of the eval split; the full split is scored before and after
        # training (evaluation.py). The Trainer evaluates the last step too.
        eval_strategy="steps" if cadence.eval_steps else "no",
        eval_steps=cadence.eval_steps or None,
        prediction_loss_only=True,  # the loss only: no logits gathered
        load_best_model_at_end=cadence.load_best,
        metric_for_best_model="eval_loss" if cadence.load_best else None,
        greater_is_better=False if cadence.load_best else None,
        seed=config.seed,
        data_seed=config.seed,
        bf16=mixed == "bf16",
        fp16=mixed == "fp16",
        report_to="none",  # HF's MLflowCallback ignores MLFLOW_RUN_ID and opens a second run
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        use_cpu=device == "cpu",
    )


def rows_dataset(rows: list[dict]) -> Any:
    import datasets

    return datasets.Dataset.from_list(rows)


def spread(rows: list[dict], count: int) -> list[dict]:
    """count rows spread evenly over rows (the eval split is ordered by file: the first rows are one file's)."""
    if count >= len(rows):
        return rows
    return [rows[i * len(rows) // count] for i in range(count)]


def train(config: TrainingConfig, model: Any, tokenizer: Any, rows: list[dict], *, output_dir: Path,
          device: str, metric_logger: Any, stop: StopFlag, eval_rows: list[dict] | None = None,
          callbacks: Sequence[Any] = ()) -> tuple[Any, bool]:
    """Run (or resume) training; returns (trainer state, whether it was stopped by SIGTERM).

    With eval_rows, a share of them is evaluated periodically (Plan); with load_best the model ends as the
    best checkpoint's (state.best_model_checkpoint says which). ``callbacks`` are added to the Trainer's.
    """
    resume = latest_checkpoint(output_dir)
    if resume is not None:
        logger.info("resuming from %s", resume)
    cadence = plan(config, len(rows), len(eval_rows or []))
    logger.info(cadence.line())
    collator = PackedCollator(tokenizer.pad_token_id, pad_multiple(config, device))
    extra = [EarlyStoppingCallback(config.early_stopping_patience)] \
        if cadence.load_best and config.early_stopping_patience else []
    timing = EvalTiming()
    sharded = is_sharded(model)
    # SaveTrainingState before MarkComplete: the marker goes on a checkpoint with its optimizer state in it.
    state_saver = [SaveTrainingState()] if sharded else []
    trainer = Trainer(model=model, args=training_arguments(config, output_dir, device, cadence, sharded),
                      train_dataset=rows_dataset(rows), data_collator=collator,
                      eval_dataset=rows_dataset(spread(eval_rows, cadence.eval_rows)) if cadence.eval_steps else None,
                      processing_class=tokenizer,
                      callbacks=[MetricsCallback(metric_logger), LogLastStep(), timing, StopOnSigterm(stop),
                                 *state_saver, MarkComplete(), *extra, *callbacks])
    stop.training = True
    try:
        with speedups(model, config, device):
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        stop.training = False
    if timing.line():
        logger.info(timing.line())
    return trainer.state, bool(stop)
