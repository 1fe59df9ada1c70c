"""One torchrun worker of the sharded-training tests (tests/distributed/test_fsdp_training.py): the job's own
loading (sharding.load_for_training) and training loop (trainer.train) on the tiny model, CPU/gloo.

    torchrun --nproc_per_node=2 sharded_worker.py BASE OUT SHARDING MAX_STEPS [SIGTERM_RANK SIGTERM_STEP]

Writes OUT/result-<rank>.json: the train_loss logged at each step (rank 0 logs), global step, stopped, and
whether the model was sharded; rank 0 also saves the publishable model's adapter in OUT/published.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from transformers import TrainerCallback, set_seed

from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.training import sharding
from ade_mlflow_plugin.training.checkpoints import StopFlag
from ade_mlflow_plugin.training.packing import build_rows
from ade_mlflow_plugin.training.trainer import train


class Recorder:
    """The MetricLogger's interface: what the run would get."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.evals: dict[int, float] = {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        if "train_loss" in metrics:
            self.losses[step] = metrics["train_loss"]
        if "eval_loss" in metrics:
            self.evals[step] = metrics["eval_loss"]


class SigtermAt(TrainerCallback):
    """SIGTERM to this process once the given step has begun (as a reclaim of one host would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def examples() -> list[dict[str, str]]:
    return [{"prompt": f"def f{i}(x):\n", "completion": f"    return x * {i} + {i * i}  # case {i}\n"}
            for i in range(96)]


def main(argv: list[str]) -> None:
    base, out, mode, steps = argv[0], Path(argv[1]), argv[2], int(argv[3])
    term_rank, term_step = (int(argv[4]), int(argv[5])) if len(argv) > 5 else (-1, 0)
    periodic_eval = os.environ.get("SHARDED_WORKER_EVAL") == "1"  # eval every 2 steps, load_best
    config = TrainingConfig(base_model=base, sharding=mode, max_steps=steps, batch_size=2, grad_accumulation=2,
                            max_seq_len=64, learning_rate=5e-3, warmup_ratio=0.0, logging_steps="1",
                            save_steps="2" if periodic_eval else "3", eval_steps="2" if periodic_eval else "0",
                            load_best=periodic_eval, seed=7)
    set_seed(config.seed)
    model, tokenizer, device = sharding.load_for_training(config)
    rows, _ = build_rows(tokenizer, examples(), config.max_seq_len, config.packing)
    stop = StopFlag().install()
    recorder = Recorder()
    extra = [SigtermAt(term_step)] if sharding.rank() == term_rank else []
    eval_rows = rows[-8:] if periodic_eval else None
    state, stopped = train(config, model, tokenizer, rows, output_dir=out / "checkpoints", device=device,
                           metric_logger=recorder, stop=stop, eval_rows=eval_rows, callbacks=extra)
    sharded = sharding.is_sharded(model)
    published = sharding.publishable_model(model, config) if not stopped else None
    if published is not None:
        published.save_pretrained(str(out / "published"))
    (out / f"result-{sharding.rank()}.json").write_text(json.dumps({
        "losses": recorder.losses, "evals": recorder.evals, "global_step": state.global_step, "stopped": stopped, "sharded": sharded,
        "best": state.best_model_checkpoint and Path(state.best_model_checkpoint).name}))


if __name__ == "__main__":
    main(sys.argv[1:])
