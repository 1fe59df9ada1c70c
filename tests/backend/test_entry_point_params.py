"""Every entry point's training parameters, declared or not, are refused before a run exists when bad
(issue 19 item 4: main, train and prepare_data of the packaged project), and a path parameter naming a
folder with a space and non-ASCII characters ships in SageMaker mode.

The backend runs in this process against a sqlite store; AWS is a closed port, so a bad value that slipped
through would fail on its first AWS call, after its run was created: the run count tells.
"""
from __future__ import annotations

import io
import socket
from pathlib import Path

import mlflow
import pytest

from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend
from ade_mlflow_plugin.cli import _one_line
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.launch import PROJECT_DIR

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"

# (name, bad value, entry points that declare or take it): declared ones and undeclared training options
BAD = [
    ("lora_r", "-1", ["main", "train"]), ("learning_rate", "abc", ["main", "train"]),
    ("merge_adapter", "maybe", ["main", "train"]), ("max_seq_len", "0", ["main", "train"]),
    ("epochs", "-1", ["main", "train"]), ("batch_size", "0", ["main", "train"]),
    ("lora_dropout", "1.5", ["main", "train"]), ("target_modules", "", ["main", "train"]),
    ("max_steps", "-3", ["main", "train"]), ("quantization", "2bit", ["main", "train"]),
    ("num_examples", "0", ["main", "prepare_data"]), ("synthetic_ratio", "2", ["main", "prepare_data"]),
    ("eval_fraction", "1.5", ["main", "prepare_data"]), ("seed", "x", ["main", "prepare_data", "train"]),
    # undeclared: training options the entry takes by name, and names nothing takes
    ("gradient_checkpointing", "maybe", ["main", "train"]), ("dataset_ratio", "5", ["main", "train"]),
    ("no_such_param", "1", ["main", "train", "prepare_data"]),
    ("lora_r", "8", ["prepare_data"]),  # a training option prepare_data does not take
]
CASES = [(entry, name, value) for name, value, entries in BAD for entry in entries]


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    code = tmp_path / "code base ü"
    code.mkdir()
    (code / "app.py").write_text("def add(a, b):\n    return a + b\n")
    data = tmp_path / "données x"
    data.mkdir()
    (data / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    return {"codebase": str(code), "dataset": str(data)}


def closed_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def run_count(client: mlflow.MlflowClient) -> int:
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the table (a fresh one costs ~2 s of migrations): each row counts runs before/after."""
    return f"sqlite:///{tmp_path_factory.mktemp('entry-points')}/mlflow.db"


@pytest.mark.parametrize("entry,name,value", CASES, ids=[f"{e}-{n}={v}" for e, n, v in CASES])
def test_a_bad_parameter_is_refused_before_any_run(entry: str, name: str, value: str, inputs: dict[str, str],
                                                   shared_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_endpoint())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_store)
    mlflow.set_tracking_uri(shared_store)
    client = mlflow.MlflowClient(shared_store)
    before = run_count(client)
    experiment = client.get_experiment_by_name("Default").experiment_id
    params = {"codebase": inputs["codebase"]} if entry != "train" else {"dataset": inputs["dataset"]}
    config = {"role_arn": ROLE, "bucket": "ade-bucket", "region": "us-east-1", "wait": False, "SYNCHRONOUS": False}
    with pytest.raises(ConfigError) as refused:
        try:
            AdeSageMakerBackend(console=io.StringIO()).run(str(PROJECT_DIR), entry, {**params, name: value}, None,
                                                           config, shared_store, experiment)
        finally:
            mlflow.set_tracking_uri(None)
    line, code = _one_line(refused.value)
    assert code == 2 and name in line and "\n" not in line, line
    assert run_count(client) == before


@pytest.mark.slow  # a whole submission to moto (packing and scanning the project): ~15 s
def test_an_odd_folder_name_ships_in_sagemaker_mode(inputs: dict[str, str], s3_bucket: str,
                                                    sqlite_tracking: str) -> None:
    """SageMaker mode uploads the folder's files under a content address: the name never reaches the request."""
    import boto3

    experiment = mlflow.get_experiment_by_name("Default").experiment_id
    config = {"role_arn": ROLE, "bucket": s3_bucket, "region": "us-east-1", "wait": False, "SYNCHRONOUS": False,
              "wheelhouse": "never"}
    submitted = AdeSageMakerBackend(console=io.StringIO()).run(
        str(PROJECT_DIR), "train", {"dataset": inputs["dataset"], "max_steps": "1"}, None, config, sqlite_tracking,
        experiment)
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=submitted.job_name)
    channel = next(c for c in described["InputDataConfig"] if c["ChannelName"] == "dataset")
    uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
    bucket, _, prefix = uri[5:].partition("/")
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    assert "train.jsonl" in [key.rsplit("/", 1)[-1] for key in keys], keys
    assert " " not in uri and "ü" not in uri and "é" not in uri, uri
