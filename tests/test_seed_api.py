"""The ADE Cloud Training API as its specification writes it (issue 17 item 1): the snippet with only the
imports changed (plus role_arn and bucket), and its command line, against moto; in local mode the model
lands in output_dir/registry/."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import mlflow
import pytest

from tests.conftest import FIXTURES, REPO_ROOT
from tests.training.conftest import tiny_model  # noqa: F401 - fixture

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
BUCKET = "ade-seed-api"


@pytest.fixture
def seed_tree(aws, sqlite_tracking, tmp_path: Path) -> Path:
    """The snippet's relative paths (path/to/codebase, path/to/output) under the test's cwd, and its bucket."""
    shutil.copytree(FIXTURES / "backend_project", tmp_path / "path" / "to" / "codebase")
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return tmp_path


def _assert_seed_job(job_name: str, output: Path) -> None:
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=job_name)
    assert described["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    assert described["ResourceConfig"]["InstanceCount"] == 1
    assert described["StoppingCondition"]["MaxRuntimeInSeconds"] == 86400
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string=f"tags.`sagemaker.job_name` = '{job_name}'")
    # ModelRegistryConfig() registers under ade-<codebase folder name>; the local output_dir is on the run.
    assert run.data.params["registered_model_name"] == "ade-codebase"
    assert run.data.tags["ade.output_dir"] == str(output.resolve())


def test_the_seed_snippet_submits_the_job_it_describes(seed_tree):
    from ade_mlflow_plugin import launch_training_job
    from ade_mlflow_plugin.config import CloudTrainingConfig, ModelRegistryConfig

    async def seed() -> str:
        # ---- the specification's snippet; only the imports (above) changed, role_arn/bucket added ----
        cloud_config = CloudTrainingConfig(
            instance_type="ml.g4dn.xlarge",  # GPU instance
            instance_count=1,
            max_runtime=86400,  # 24 hours
            role_arn=ROLE,
            bucket=BUCKET,
        )
        registry_config = ModelRegistryConfig()
        job_name = await launch_training_job(
            codebase_path="path/to/codebase",
            output_dir="path/to/output",
            base_model="deepseek-ai/deepseek-coder-1.3b-instruct",
            cloud_config=cloud_config,
            registry_config=registry_config,
            num_examples=1000,
            synthetic_ratio=0.3
        )
        return job_name

    _assert_seed_job(asyncio.run(seed()), seed_tree / "path" / "to" / "output")


@pytest.mark.slow  # a subprocess launch that follows the job (~8 s)
def test_the_seed_command_line_submits_the_same_job(seed_tree):
    result = subprocess.run(
        [sys.executable, "-m", "ade_mlflow_plugin.launch", "--codebase_path", "path/to/codebase",
         "--output_dir", "path/to/output", "--base_model", "deepseek-ai/deepseek-coder-1.3b-instruct",
         "--num_examples", "1000", "--synthetic_ratio", "0.3", "--instance_type", "ml.g4dn.xlarge",
         "--instance_count", "1", "--max_runtime", "86400", "--role_arn", ROLE, "--bucket", BUCKET],
        cwd=seed_tree, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
        timeout=300)
    # moto reports the job Completed at once: followed to its end, with no model version to land
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["status"] == "FINISHED" and printed["registered_model_name"] == "ade-codebase"
    assert "registered no model version to land" in result.stderr
    _assert_seed_job(printed["job_name"], seed_tree / "path" / "to" / "output")


def test_launch_module_without_arguments_prints_usage_and_exits_2():
    result = subprocess.run([sys.executable, "-m", "ade_mlflow_plugin.launch"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("Usage: python -m ade_mlflow_plugin.launch [OPTIONS]")
    for flag in ("--codebase_path", "--output_dir", "--base_model", "--num_examples", "--synthetic_ratio",
                 "--instance_type", "--instance_count", "--max_runtime", "--role_arn", "--bucket", "--local"):
        assert flag in result.stderr


def test_registry_config_names_the_model():
    from ade_mlflow_plugin.config import ModelRegistryConfig
    from ade_mlflow_plugin.config.registry import default_model_name
    from ade_mlflow_plugin.launch import registered_name

    assert default_model_name("/src/My Service!") == "ade-my-service"
    assert registered_name(ModelRegistryConfig(), "/src/payments") == "ade-payments"
    assert registered_name(None, "/src/payments") == "ade-payments"
    assert registered_name(ModelRegistryConfig(model_name="coder"), "/src/payments") == "coder"
    assert registered_name({"registered_model_name": ""}, "/src/payments") == ""  # empty: not registered


def test_output_dir_local_in_sagemaker_mode_and_s3(tmp_path):
    from ade_mlflow_plugin.config import CloudTrainingConfig
    from ade_mlflow_plugin.errors import ConfigError
    from ade_mlflow_plugin.launch import build_launch

    cloud = CloudTrainingConfig(role_arn=ROLE, bucket=BUCKET)
    _, local = build_launch(str(tmp_path), str(tmp_path / "out"), "m", cloud, None, 10, 0.3, {})
    assert local["output_dir"] == str((tmp_path / "out").resolve()) and "job_root" not in local
    _, s3 = build_launch(str(tmp_path), "s3://other-bucket/team", "m", {"role_arn": ROLE}, None, 10, 0.3, {})
    assert (s3["bucket"], s3["prefix"]) == ("other-bucket", "team") and "output_dir" not in s3
    _, here = build_launch(str(tmp_path), str(tmp_path / "out"), "m", {"mode": "local"}, None, 10, 0.3, {})
    assert here["job_root"] == here["output_dir"] == str((tmp_path / "out").resolve())
    with pytest.raises(ConfigError, match="'output_dir'.*for S3 output set bucket and prefix"):
        CloudTrainingConfig.from_backend_config({"mode": "local", "output_dir": "s3://b/p"})


@pytest.mark.slow  # a whole local-mode job on the tiny model
def test_in_local_mode_the_finished_model_lands_under_output_dir(sqlite_tracking, tmp_path, tiny_model):
    from tests.training.conftest import CODEBASE

    shutil.copytree(CODEBASE, tmp_path / "shop")
    quick = {"max_steps": "3", "batch_size": "2", "grad_accumulation": "1", "max_seq_len": "256",
             "logging_steps": "1", "eval_samples": "2", "max_new_tokens": "8", "warmup_ratio": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "ade_mlflow_plugin.launch", "--codebase_path", "shop", "--output_dir", "out",
         "--base_model", str(tiny_model), "--num_examples", "40", "--synthetic_ratio", "0.3", "--local",
         *[arg for key, value in quick.items() for arg in ("-P", f"{key}={value}")]],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
        timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["status"] == "FINISHED" and printed["registered_model_name"] == "ade-shop"
    version = tmp_path / "out" / "registry" / "ade-shop-v1"
    assert (version / "model_artifacts" / "MLmodel").is_file()
    meta = json.loads((version / "metadata.json").read_text())
    assert (meta["name"], meta["version"], meta["source_run"]) == ("ade-shop", "1", printed["run_id"])
    assert "eval_loss" in json.loads((version / "performance_metrics.json").read_text())
    run = mlflow.MlflowClient().get_run(printed["run_id"])
    assert run.data.tags["ade.output_landed"] == "ade-shop/v1"


def test_the_specifications_config_names_are_aliases_of_ours(tmp_path):
    from ade_mlflow_plugin.config import CloudTrainingConfig, ModelRegistryConfig

    cloud = CloudTrainingConfig(region="us-east-1", bucket="ade-training", role_arn=ROLE, volume_size=100,
                                max_runtime=86400, training_image="123456789012.dkr.ecr.us-east-1.amazonaws.com/ade:1",
                                metrics_interval=60)
    assert (cloud.volume_size_gb, cloud.max_runtime_s, cloud.poll_interval_s) == (100, 86400, 60)
    assert cloud.image_uri == "123456789012.dkr.ecr.us-east-1.amazonaws.com/ade:1"
    # registry_path names the registry folder itself: versions land in it, providers.json beside it
    registry = ModelRegistryConfig(registry_path=str(tmp_path / "models" / "registry"), max_versions=10,
                                   model_name="ade-coder")
    assert (registry.root, registry.keep_versions) == ((tmp_path / "models").resolve(), 10)
    assert registry.registered_model_name == "ade-coder"
    assert ModelRegistryConfig(root=tmp_path / "ade").root == (tmp_path / "ade").resolve()
