"""Checkpoint choice and rank handling, without training."""
from __future__ import annotations

import signal

import pytest

from ade_mlflow_plugin.training.checkpoints import (COMPLETE_MARKER, StopFlag, checkpoint_dir, latest_checkpoint,
                                                    mark_complete)


def _checkpoint(root, step, complete=True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    if complete:
        mark_complete(folder)
    return folder


def test_newest_complete_checkpoint_wins_half_written_ones_are_skipped(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    _checkpoint(tmp_path, 2)
    ten = _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 12, complete=False)  # killed mid-save
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path) == ten  # numeric order, not string order (10 > 2)
    assert (ten / COMPLETE_MARKER).is_file()


def test_checkpoint_dir_from_launcher_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ADE_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    assert checkpoint_dir() == tmp_path / "ckpt"
    monkeypatch.delenv("ADE_CHECKPOINT_DIR")
    monkeypatch.chdir(tmp_path)
    assert checkpoint_dir() == tmp_path / "checkpoints"


@pytest.fixture
def restore_sigterm():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_before_training_exits_143_during_training_sets_flag(restore_sigterm):
    flag = StopFlag().install()
    with pytest.raises(SystemExit) as exit_info:
        signal.raise_signal(signal.SIGTERM)
    assert exit_info.value.code == 143 and flag
    flag = StopFlag().install()
    flag.training = True
    signal.raise_signal(signal.SIGTERM)  # no exit: the loop saves at the end of the step
    assert flag


def test_only_rank_0_talks_to_mlflow(monkeypatch, restore_sigterm):
    from ade_mlflow_plugin.config.training import TrainingConfig
    from ade_mlflow_plugin.training.session import Session
    from ade_mlflow_plugin.training.tracking import NullLogger

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: any call would fail
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef")
    session = Session(TrainingConfig())
    assert session.run is None and isinstance(session.metrics, NullLogger)
    session.metrics.log({"train_loss": 1.0}, step=1)
    session.close()


class _Metrics:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def log(self, metrics: dict, step: int) -> None:
        self.steps.append(step)


def test_the_last_step_is_saved_and_marked_between_save_steps(tiny_model, tmp_path):
    """transformers saves the final step itself (save_strategy="steps"), so a job stopped during the
    final eval or model logging resumes at the end instead of redoing the steps after the last save."""
    from ade_mlflow_plugin.training.checkpoints import complete_checkpoints
    from ade_mlflow_plugin.config.training import TrainingConfig
    from ade_mlflow_plugin.training.model import load_for_training
    from ade_mlflow_plugin.training.trainer import train

    config = TrainingConfig.from_params({"base_model": str(tiny_model), "max_steps": "3", "save_steps": "2",
                                         "batch_size": "1", "logging_steps": "1", "lora_r": "4"})
    model, tokenizer, device = load_for_training(config)
    ids = tokenizer("def add(a, b):\n    return a + b\n")["input_ids"]
    rows = [{"input_ids": ids, "labels": ids, "position_ids": list(range(len(ids)))}] * 4
    metrics = _Metrics()
    train(config, model, tokenizer, rows, output_dir=tmp_path, device=device, metric_logger=metrics,
          stop=StopFlag())
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [2, 3]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-3" and metrics.steps == [1, 2, 3]
