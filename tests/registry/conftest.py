"""Registry test helpers: register small model versions on the session's real MLflow server."""
from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ade_mlflow_plugin import hookimpl


def sha256_tree(directory: Path) -> dict[str, str]:
    """Independent of the code under test: relative path -> sha256 of every file."""
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def model_name() -> str:
    return f"ade-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_version(tracking_uri: str, tmp_path: Path) -> Callable[..., str]:
    """Log files as a run's ``model`` artifact dir and register them as a new version of ``name``."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()

    def make(name: str, files: dict[str, bytes] | None = None, metrics: dict[str, float] | None = None,
             tags: dict[str, str] | None = None) -> str:
        files = files or {"MLmodel": b"flavors:\n  transformers: {}\n  python_function: {}\n",
                          "adapter/adapter_model.safetensors": os.urandom(2048),
                          "tokenizer.json": b'{"version": "1.0"}'}
        src = tmp_path / f"src-{uuid.uuid4().hex[:6]}"
        for rel, data in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
        with mlflow.start_run() as run:
            mlflow.log_metrics(metrics or {"eval_loss": 1.25, "perplexity": 3.5})
            mlflow.set_tags({"ade.base_model": "tiny-llama", "ade.dataset_digest": "sha256:abc"})
            mlflow.log_artifacts(str(src), "model")
        try:
            client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(name)
        mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model",
                                         run_id=run.info.run_id, tags=tags)
        return str(mv.version)

    return make


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "ade-models"


class Recorder:
    """A real plugin that records every hook call it receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def named(self, hook: str) -> list[dict[str, Any]]:
        return [kwargs for name, kwargs in self.calls if name == hook]

    @hookimpl
    def ade_version_registered(self, name, version, run_id, tags):  # noqa: ANN001
        self.calls.append(("ade_version_registered", dict(name=name, version=version, run_id=run_id)))

    @hookimpl
    def ade_version_promoted(self, name, version, alias, stage, previous_version):  # noqa: ANN001
        self.calls.append(("ade_version_promoted", dict(name=name, version=version, alias=alias,
                                                        stage=stage, previous_version=previous_version)))

    @hookimpl
    def ade_before_sync(self, name, version, destination):  # noqa: ANN001
        self.calls.append(("ade_before_sync", dict(name=name, version=version, destination=destination)))

    @hookimpl
    def ade_after_sync(self, name, version, path, downloaded_bytes):  # noqa: ANN001
        self.calls.append(("ade_after_sync", dict(name=name, version=version, path=path,
                                                  downloaded_bytes=downloaded_bytes)))

    @hookimpl
    def ade_provider_registry_updated(self, path, providers):  # noqa: ANN001
        self.calls.append(("ade_provider_registry_updated", dict(path=path)))


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `ade-mlflow ARGS` in-process through the real console entry; (exit code, stdout, stderr)."""
    from ade_mlflow_plugin.cli import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
