"""Fixtures for training tests: a tiny model made by `ade-mlflow make-tiny-model`, a prepared dataset,
a private `mlflow server` that a test may stop and restart, and a helper that runs an entry script."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, REPO_ROOT, free_port
from tests.servers import start_mlflow_server, stop_server

CODEBASE = FIXTURES / "codebases" / "polyglot"
# Small enough for 2 shared CPU cores: each step is a fraction of a second on the tiny model.
FAST_ARGS = ["--batch_size", "2", "--grad_accumulation", "1", "--max_seq_len", "256", "--logging_steps", "1",
             "--eval_samples", "2", "--max_new_tokens", "8", "--learning_rate", "0.01", "--warmup_ratio", "0"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny deepseek-coder-shaped model, built through the real CLI verb."""
    from ade_mlflow_plugin.cli import main

    out = tmp_path_factory.mktemp("tiny") / "model"
    main(["make-tiny-model", str(out), "--codebase", str(CODEBASE)])
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="session")
def prepared_dataset(tiny_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The polyglot fixture codebase mined into a saved dataset (what `prepare_data` writes)."""
    from ade_mlflow_plugin.dataset import build_dataset

    out = tmp_path_factory.mktemp("prepared") / "ds"
    build_dataset(CODEBASE, out, num_examples=40, synthetic_ratio=0.3, eval_fraction=0.15, seed=42,
                  tokenizer=tiny_tokenizer, max_tokens=256, log_to_mlflow=False, progress=False)
    return out


class MlflowServer:
    """An `mlflow server` of this test's own (sqlite + local artifacts) on a fixed port: stop() and
    start() again keep the same URI and data."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = start_mlflow_server(self.root, self.port, f"sqlite:///{self.root}/mlflow.db",
                                        str(self.root / "artifacts"))

    def stop(self) -> None:
        if self.proc is not None:
            stop_server(self.proc, grace_s=10)


@pytest.fixture
def own_mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path / "own-mlflow")
    server.root.mkdir()
    server.start()
    yield server
    server.stop()


class Entry:
    """A training entry script running as a real subprocess, its output collected line by line."""

    started: list["Entry"] = []

    def __init__(self, script: str, args: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "entrypoints" / script), *args],
                                     cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        Entry.started.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait(self, timeout: float = 120) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader.join(timeout=5)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def logged_steps(self) -> int:
        """How many step logs the Trainer has printed so far."""
        return sum(1 for line in list(self.lines) if line.startswith("{'loss'"))


@pytest.fixture(autouse=True)
def _stop_leftover_entries() -> Iterator[None]:
    """A test that fails half way leaves no entry process behind (each is killed by its PID)."""
    yield
    while Entry.started:
        entry = Entry.started.pop()
        if entry.proc.poll() is None:
            entry.proc.kill()
            entry.proc.wait()


def entry_env(tracking_uri: str, run_id: str, checkpoints: Path, model_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_RUN_ID": run_id, "ADE_CHECKPOINT_DIR": str(checkpoints),
                "ADE_SYSTEM_METRICS_INTERVAL_S": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("TRAINING_JOB_NAME", None)
    if model_dir is not None:
        env["SM_MODEL_DIR"] = str(model_dir)
    return env


def new_run(tracking_uri: str, name: str) -> str:
    """A run created the way the launcher creates it (the entry must attach, not open its own)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name) or client.get_experiment(client.create_experiment(name))
    return client.create_run(experiment.experiment_id).info.run_id


@pytest.fixture
def lora_model(tiny_model):
    """The tiny model with LoRA on CPU in float32, its B matrices random (they start at zero) so every adapter
    counts in the outputs and gradients the speed tests compare."""
    import torch

    from ade_mlflow_plugin.config.training import TrainingConfig
    from ade_mlflow_plugin.training.model import add_lora, load_base_model

    torch.manual_seed(0)
    config = TrainingConfig(base_model=str(tiny_model), lora_dropout=0.0)
    model = add_lora(load_base_model(config, "cpu", torch.float32), config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model.train()


@pytest.fixture
def held_starts(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """The detached start held: a "wait": false submission records (request, root, clients) here and returns
    its job root's handle, so the test runs the job itself (LocalJob) and can signal its launchers as SageMaker
    would, then run the same request again as SageMaker restarts a job."""
    from ade_mlflow_plugin.backend import local

    held: list[tuple] = []

    def hold(request, root, clients=None):  # noqa: ANN001, ANN202
        held.append((request, root, clients))
        root.mkdir(parents=True)
        return local.JobRoot(root)

    monkeypatch.setattr(local, "start_detached", hold)
    return held
