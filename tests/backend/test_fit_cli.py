"""The fit check as a user meets it: `mlflow run -b ade-sagemaker` of the packaged project against moto prints
the memory estimate under the cost line, hands the job the resolved `sharding`, tags the run, and refuses a
plan that cannot fit even sharded in one line, exit 2, before any run exists."""
from __future__ import annotations

import json

import boto3
import mlflow
import pytest

from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.launch import PROJECT_DIR
from tests.backend.conftest import ROLE, mlflow_run

# A subprocess `mlflow run` each (~10 s of start-up and packing): not in `make test-fast`.
pytestmark = pytest.mark.slow

CODER_33B = "deepseek-ai/deepseek-coder-33b-instruct"
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300}


@pytest.fixture
def dataset(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"prompt": "def add(a, b):", "completion": " return a + b"}\n')
    return data


@pytest.fixture
def hub_cache(tmp_path):
    """A Hugging Face cache holding one tiny model, as huggingface_hub lays it out."""
    repo = tmp_path / "hub" / "models--tiny-org--tiny-coder"
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    (repo / "snapshots" / "0123abc" / "config.json").write_text(json.dumps(TINY))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    return tmp_path / "hub"


def _submit(tmp_path, bucket, dataset, hub_cache, instance_type, params):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    config = {"role_arn": ROLE, "bucket": bucket, "region": "us-east-1", "instance_type": instance_type,
              "wait": False, "wheelhouse": "never"}
    args = ["-e", "train", "--backend-config", json.dumps(config), "-P", f"dataset={dataset}"]
    for name, value in params.items():
        args += ["-P", f"{name}={value}"]
    env = {"MLFLOW_TRACKING_URI": tracking, "HF_HUB_CACHE": str(hub_cache)}
    return mlflow_run(PROJECT_DIR, args, env, cwd=tmp_path), tracking


def _job_params(job_name: str) -> dict[str, str]:
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=job_name)
    return json.loads(json.loads(described["HyperParameters"][contract.HP_PARAMS]))


@pytest.mark.parametrize("instance_type,params,words,sharding", [
    # the defaults (deepseek-coder-1.3b-instruct, batch 4 x 2048) on one A10G
    ("ml.g5.2xlarge", {}, ["deepseek-ai/deepseek-coder-1.3b-instruct: ~", "fits unsharded"], "none"),
    # 33B LoRA at batch 2 x 2048 does not fit one 141 GB H200; sharded over the 8 of a p5e it does
    ("ml.p5e.48xlarge", {"base_model": CODER_33B, "batch_size": 2},
     ["sharded (FSDP) over ml.p5e.48xlarge (139.8 GiB per GPU, 8 GPU(s)); unsharded it would need"], "fsdp"),
    # a hub name found in the Hugging Face cache: its config.json
    ("ml.g5.2xlarge", {"base_model": "tiny-org/tiny-coder"}, ["tiny-org/tiny-coder: ~", "fits unsharded"], "none"),
    # a model neither cached nor in the table: skipped, the job decides on its own GPUs
    ("ml.g5.2xlarge", {"base_model": "someorg/mystery-coder-7b"},
     ["skipped: 'someorg/mystery-coder-7b' is neither in this machine's Hugging Face cache", "the job decides"],
     "auto"),
], ids=["fits", "33b-fsdp", "hf-cache", "unknown"])
def test_the_estimate_is_printed_and_sharding_resolved_for_the_job(instance_type, params, words, sharding,
                                                                   tmp_path, s3_bucket, dataset, hub_cache):
    done, tracking = _submit(tmp_path, s3_bucket, dataset, hub_cache, instance_type, params)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    estimate = next(i for i, line in enumerate(lines) if line.startswith("Memory estimate: "))
    assert lines[estimate - 1].startswith("Worst-case cost: "), lines  # next to the cost estimate
    for word in words:
        assert word in lines[estimate], lines[estimate]
    arrow = "sharding=auto: the job decides on its GPUs" if sharding == "auto" else f"sharding=auto -> {sharding}"
    assert lines[estimate].endswith(arrow)
    mlflow.set_tracking_uri(tracking)
    try:
        run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    finally:
        mlflow.set_tracking_uri(None)
    assert _job_params(run.data.tags["sagemaker.job_name"])["sharding"] == sharding  # the job's --sharding
    assert run.data.tags["ade.sharding"] == sharding
    if sharding != "auto":
        assert float(run.data.tags["ade.memory_estimate_gib"]) < float(run.data.tags["ade.memory_gpu_gib"])


def test_a_plan_that_cannot_fit_even_sharded_is_refused_before_any_run(tmp_path, s3_bucket, dataset, hub_cache):
    done, tracking = _submit(tmp_path, s3_bucket, dataset, hub_cache, "ml.g5.xlarge",
                             {"base_model": CODER_33B, "batch_size": 16})
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("ade-sagemaker: error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert f"{CODER_33B} at batch_size 16 x 2048 tokens needs ~" in errors[0]
    assert errors[0].endswith("GiB too much; use an instance type with more GPU memory or more GPUs (or instance_count > 1)")
    assert not boto3.client("s3").list_objects_v2(Bucket=s3_bucket).get("Contents")  # nothing uploaded
    mlflow.set_tracking_uri(tracking)
    try:
        assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    finally:
        mlflow.set_tracking_uri(None)
