"""Real peers for the tests: a moto server (AWS) and an `mlflow server` on 127.0.0.1.

Both are started once per test session and stopped by PID at the end. Tests reach moto through
AWS_ENDPOINT_URL (boto3 honours it), the MLflow server through its http:// tracking URI.
"""
from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import start_mlflow_server, stop_server, wait_http  # noqa: F401 (re-exported)

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"

# Set before anything imports mlflow or boto3 (conftest is imported first).
_TEST_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}
os.environ.update(_TEST_ENV)
for _var in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "MLFLOW_TRACKING_URI"):
    os.environ.pop(_var, None)
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


@pytest.fixture(scope="session", autouse=True)
def private_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Temp files of the code under test land in pytest's own base temp (rotated), not loose in /tmp.

    MLflow leaves a ``db_init_lock-*`` file in the temp dir for every sqlite store it opens, torch
    elastic a ``torchelastic_*`` dir per launch; servers and jobs started by tests inherit TMPDIR.
    """
    import tempfile

    path = tmp_path_factory.mktemp("tmp")
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(path), str(path)
    os.environ["ADE_CACHE_DIR"] = str(path / "ade-cache")  # the secret-scan cache, not in $HOME
    yield path
    tempfile.tempdir = saved_tempdir
    if saved_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server in this process (so tests can edit job state through moto's backends)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    os.environ["MLFLOW_S3_ENDPOINT_URL"] = endpoint
    wait_http(f"{endpoint}/moto-api/")
    yield endpoint
    server.stop()
    os.environ.pop("AWS_ENDPOINT_URL", None)
    os.environ.pop("MLFLOW_S3_ENDPOINT_URL", None)


@pytest.fixture
def aws(moto_server: str) -> str:
    """Endpoint of the moto server, for tests that call AWS."""
    return moto_server


@pytest.fixture
def s3_bucket(aws: str) -> str:
    """A fresh, empty S3 bucket on moto."""
    import boto3

    name = f"ade-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def mlflow_server(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server`: sqlite backend store, artifacts proxied to an S3 bucket on moto."""
    import boto3

    root = tmp_path_factory.mktemp("mlflow-server")
    boto3.client("s3").create_bucket(Bucket="mlflow-artifacts")
    port = free_port()
    env = {
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": os.environ.get(
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "YHJqcTsimaUtrFqr343hRDEKQGPNrb-JNoTRd3lDdEU="),
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
    }
    proc = start_mlflow_server(root, port, f"sqlite:///{root}/mlflow.db", "s3://mlflow-artifacts/", env)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture
def tracking_uri(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point this test's MLflow client at the session's server."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(None)


@pytest.fixture
def sqlite_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A private sqlite tracking store (artifacts in tmp_path/mlruns) for tests that need no server."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def submit_to_moto(bucket: str, tracking: str, params: dict[str, str] | None = None):
    """Submit the fixture project through the backend in sagemaker mode (no waiting) against moto.

    Returns (submitted run, DescribeTrainingJob answer): what a worker would be handed.
    """
    import io

    import boto3
    import mlflow

    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend

    boto3.client("s3").create_bucket(Bucket=bucket)
    config = {"role_arn": "arn:aws:iam::123456789012:role/SageMakerRole", "bucket": bucket,
              "region": "us-east-1", "wait": False, "SYNCHRONOUS": False}
    experiment = mlflow.get_experiment_by_name("Default").experiment_id
    submitted = AdeSageMakerBackend(console=io.StringIO()).run(
        str(FIXTURES / "backend_project"), "main",
        {"data": str(FIXTURES / "backend_project_data"), **(params or {})}, None, config, tracking, experiment)
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=submitted.job_name)
    return submitted, described
