"""The training loop: transformers Trainer over packed rows, resumable from the checkpoint dir."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainingArguments

from ade_mlflow_plugin.training.callbacks import MarkComplete, MetricsCallback, StopOnSigterm
from ade_mlflow_plugin.training.checkpoints import StopFlag, latest_checkpoint
from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.training.packing import PackedCollator
from ade_mlflow_plugin.training.speed import device_precision, pad_multiple, speedups

logger = logging.getLogger(__name__)


def training_arguments(config: TrainingConfig, output_dir: Path, device: str) -> TrainingArguments:
    mixed = device_precision(config, device).mixed  # fp16: autocast + GradScaler over float32 LoRA weights
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accumulation,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a share of the total steps
        weight_decay=config.weight_decay,
        logging_steps=config.logging_steps,
        save_strategy="steps",  # also saves the last step: a job stopped during eval restarts at the end
        save_steps=config.save_steps,
        save_total_limit=config.keep_checkpoints,
        eval_strategy="no",  # eval runs before and after training, on the same rows (evaluation.py)
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


def train(config: TrainingConfig, model: Any, tokenizer: Any, rows: list[dict], *, output_dir: Path,
          device: str, metric_logger: Any, stop: StopFlag) -> tuple[Any, bool]:
    """Run (or resume) training; returns (trainer state, whether it was stopped by SIGTERM)."""
    resume = latest_checkpoint(output_dir)
    if resume is not None:
        logger.info("resuming from %s", resume)
    collator = PackedCollator(tokenizer.pad_token_id, pad_multiple(config, device))
    trainer = Trainer(model=model, args=training_arguments(config, output_dir, device),
                      train_dataset=rows_dataset(rows), data_collator=collator,
                      processing_class=tokenizer,
                      callbacks=[MetricsCallback(metric_logger), StopOnSigterm(stop), MarkComplete()])
    stop.training = True
    try:
        with speedups(model, config, device):
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        stop.training = False
    return trainer.state, bool(stop)
