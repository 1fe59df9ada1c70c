"""Backend test helpers: a copy of the fixture project, an AWS call counter, a moto job controller."""
from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, REPO_ROOT

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The fixture project plus files that must never ship (.env, a key, a .gitignore'd log)."""
    dest = tmp_path / "project"
    shutil.copytree(FIXTURES / "backend_project", dest)
    (dest / ".env").write_text("AWS_SECRET_ACCESS_KEY=do-not-ship\n")
    (dest / "deploy.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (dest / ".gitignore").write_text("*.log\n")
    (dest / "debug.log").write_text("noise\n")
    (dest / ".git").mkdir()
    (dest / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return dest


@pytest.fixture
def data_dir() -> Path:
    return FIXTURES / "backend_project_data"


class _Counter(http.server.BaseHTTPRequestHandler):
    count = 0

    def _answer(self) -> None:
        type(self).count += 1
        self.send_response(500)
        self.end_headers()

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _answer

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def aws_call_counter():
    """An HTTP endpoint that counts every request; AWS_ENDPOINT_URL pointed here sees every AWS call."""
    handler = type("Counter", (_Counter,), {"count": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()


def mlflow_run(project: Path, args: list[str], env: dict[str, str], cwd: Path,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `mlflow run` CLI in a subprocess."""
    cmd = [sys.executable, "-m", "mlflow", "run", str(project), "-b", "ade-sagemaker", *args]
    return subprocess.run(cmd, env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def moto_jobs(moto_server):
    """Make moto's training jobs start InProgress, and let the test end them as SageMaker would."""
    from moto.sagemaker import models

    original = models.FakeTrainingJob.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.training_job_status = "InProgress"
        self.secondary_status = "Training"

    models.FakeTrainingJob.__init__ = init

    class Control:
        def wait_for_job(self, timeout: float = 120) -> "models.FakeTrainingJob":
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for account in models.sagemaker_backends.values():
                    for backend in account.values():
                        if backend.training_jobs:
                            return list(backend.training_jobs.values())[-1]
                time.sleep(0.2)
            raise AssertionError("no training job was created")

        def finish(self, job, status: str, reason: str | None = None) -> None:
            job.secondary_status = {"Completed": "Completed", "Failed": "Failed"}.get(status, "Stopped")
            if reason:
                job.failure_reason = reason
            job.training_job_status = status

        def clear(self) -> None:
            for account in models.sagemaker_backends.values():
                for backend in account.values():
                    backend.training_jobs.clear()

    control = Control()
    control.clear()
    yield control
    models.FakeTrainingJob.__init__ = original
    control.clear()


def write_config(tmp_path: Path, **overrides) -> Path:
    config = {"role_arn": ROLE, "bucket": "ade-backend-test", "region": "us-east-1",
              "instance_type": "ml.g5.2xlarge", "poll_interval_s": 1}
    config.update(overrides)
    path = tmp_path / "backend.json"
    path.write_text(json.dumps(config))
    return path
