"""Training on from a registered model, in local mode, through the real `mlflow run -b ade-sagemaker`.

Run 1 registers v1 (adapter-only, or merged), v1 is promoted to `production`, run 2 trains with
base_model=models:/NAME@production (the backend downloads it as an input channel, the job resolves MLflow's
model folder: training/base_model.py) and registers v2, whose tags and ADE storage metadata name v1 as its
parent; v2 loads with mlflow.pyfunc and generates.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import FIXTURES, REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
CODEBASE = FIXTURES / "codebases" / "polyglot"
# A few steps on a tiny model: seconds of training; the eval split is small (each sample is a generation).
TRAINING = {"num_examples": "30", "max_steps": "4", "batch_size": "2", "grad_accumulation": "1",
            "max_seq_len": "256", "learning_rate": "0.003", "eval_fraction": "0.15", "eval_samples": "2",
            "max_new_tokens": "4"}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ade_mlflow_plugin.training.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("base") / "model", CODEBASE)


def _env(tracking: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_DISABLE_TELEMETRY": "true",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _train(tmp_path: Path, tracking: str, name: str, base_model: str, **extra: str) -> None:
    params = {**TRAINING, **extra, "codebase": str(CODEBASE), "base_model": base_model,
              "registered_model_name": name}
    config = json.dumps({"mode": "local", "job_root": str(tmp_path / "jobs")})
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), "-e", "main", "-b", "ade-sagemaker",
           "--backend-config", config, *[a for k, v in params.items() for a in ("-P", f"{k}={v}")]]
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(tracking), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _promote(tmp_path: Path, tracking: str, name: str, version: str) -> Path:
    root = tmp_path / "ade_models"
    cmd = [sys.executable, "-m", "ade_mlflow_plugin.cli", "promote", name, version, "--alias", "production",
           "--root", str(root)]
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(tracking), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return root / "registry" / f"{name}-v{version}"


def _flavor(name: str, version: str, tmp_path: Path) -> dict:
    import mlflow

    (tmp_path / version).mkdir()
    path = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}/MLmodel", dst_path=str(tmp_path / version))
    return yaml.safe_load(Path(path).read_text())["flavors"]["transformers"]


@pytest.mark.parametrize("merged", [False, True], ids=["adapter-parent", "merged-parent"])
def test_run_two_trains_on_the_promoted_version_and_names_it_as_parent(tmp_path, tiny_base, merged, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)  # the registry's too, for models:/ URIs here
    name = "ade-chain"
    client = MlflowClient(tracking, registry_uri=tracking)

    _train(tmp_path, tracking, name, str(tiny_base), merge_adapter=str(merged).lower())
    v1 = client.get_model_version(name, "1")
    assert ("model_binary" in _flavor(name, "1", tmp_path)) == merged  # else peft_adaptor + its base
    _promote(tmp_path, tracking, name, "1")

    _train(tmp_path, tracking, name, f"models:/{name}@production", lora_r="8", lora_alpha="16")
    v2 = client.get_model_version(name, "2")
    assert v2.run_id != v1.run_id
    assert (v2.tags["ade.parent_model"], v2.tags["ade.parent_version"]) == (name, "1")
    assert v2.tags["ade.base_model"] == f"models:/{name}/1"
    run2 = client.get_run(v2.run_id)
    assert run2.info.status == "FINISHED" and run2.data.params["base_model"] == f"models:/{name}@production"
    assert "model_binary" in _flavor(name, "2", tmp_path)  # the parent lived in the job: merged

    landed = _promote(tmp_path, tracking, name, "2")
    meta = json.loads((landed / "metadata.json").read_text())
    assert (meta["version"], meta["tags"]["ade.parent_version"], meta["tags"]["ade.parent_model"]) == ("2", "1", name)

    model = mlflow.pyfunc.load_model(f"models:/{name}/2")
    out = model.predict(["def add(a, b):"], params={"max_new_tokens": 4})
    assert len(out) == 1 and isinstance(out[0], str)


def test_a_sagemaker_request_ships_the_version_as_a_channel_the_job_resolves(tracking_uri, tiny_base, tmp_path):
    """SageMaker mode against moto: the registered version (merged, so it loads anywhere) goes in as an input
    channel; the channel's files, as a container would get them, resolve to the model, its tokenizer and its
    parent version."""
    import uuid

    import boto3
    import mlflow
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ade_mlflow_plugin.config.training import TrainingConfig
    from ade_mlflow_plugin.training import base_model, modelio
    from ade_mlflow_plugin.training.model import load_for_training
    from tests.conftest import submit_to_moto

    name = f"ade-channel-{uuid.uuid4().hex[:8]}"
    model, tokenizer, _ = load_for_training(TrainingConfig(base_model=str(tiny_base)))
    chosen = modelio.publishable(model, tiny_base, merge_adapter=True, base_model=str(tiny_base))
    with mlflow.start_run():
        info = modelio.log_publishable(chosen, tokenizer, base_dir=tiny_base, quantized=False, max_new_tokens=4)
    version = str(modelio.register(info.model_uri, name, {}).version)
    mlflow.MlflowClient().set_registered_model_alias(name, "production", version)

    # The fixture project's string param `note` stands for base_model: any models:/ value becomes a channel.
    bucket = f"ade-channel-{uuid.uuid4().hex[:8]}"
    _, described = submit_to_moto(bucket, tracking_uri, {"note": f"models:/{name}@production"})
    channel = next(c for c in described["InputDataConfig"] if c["ChannelName"] == "note")
    uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
    assert uri.startswith(f"s3://{bucket}/")
    s3, prefix = boto3.client("s3"), uri.split("/", 3)[3].rstrip("/") + "/"
    folder = tmp_path / "input" / "data" / "note"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            target = folder / obj["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))

    resolved = base_model.resolve(str(folder))
    assert resolved.parent == base_model.Parent(name, version) and not resolved.temporary
    loaded = AutoModelForCausalLM.from_pretrained(resolved.model)
    ids = torch.tensor([AutoTokenizer.from_pretrained(resolved.tokenizer)("def f():")["input_ids"]])
    with torch.no_grad():
        assert loaded(input_ids=ids).logits.shape[-1] == loaded.config.vocab_size
