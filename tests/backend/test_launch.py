"""The seed's Python API and `ade-mlflow launch` submit the packaged project's `main` entry (moto)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tarfile

import boto3

from ade_mlflow_plugin import launch_training_job
from ade_mlflow_plugin.job import contract
from tests.backend.conftest import ROLE
from tests.conftest import FIXTURES


def test_python_api_returns_the_job_name_once_submitted(aws, sqlite_tracking, tmp_path):
    boto3.client("s3").create_bucket(Bucket="ade-launch-test")
    codebase = FIXTURES / "backend_project"
    job_name = asyncio.run(launch_training_job(
        codebase_path=str(codebase), output_dir="s3://ade-launch-test/team-a", base_model="tiny/model",
        cloud_config={"role_arn": ROLE, "region": "us-east-1", "instance_type": "ml.g5.xlarge"},
        registry_config={"registered_model_name": "ade-coder"}, num_examples=50, synthetic_ratio=0.5))
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=job_name)
    params = json.loads(json.loads(described["HyperParameters"][contract.HP_PARAMS]))
    assert params["num_examples"] == "50" and params["registered_model_name"] == "ade-coder"
    assert params["base_model"] == "tiny/model"
    assert [c["ChannelName"] for c in described["InputDataConfig"]] == ["codebase"]
    assert described["OutputDataConfig"]["S3OutputPath"] == "s3://ade-launch-test/team-a/output"
    code = json.loads(described["HyperParameters"][contract.HP_SUBMIT_DIRECTORY])
    bucket, key = code[5:].split("/", 1)
    local = tmp_path / "code.tar.gz"
    boto3.client("s3").download_file(bucket, key, str(local))
    names = tarfile.open(local).getnames()
    assert {"MLproject", "conda.yaml", "entrypoints/main.py", "ade_entry.py"} <= set(names)


def test_launch_cli_bad_flag_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ade_mlflow_plugin.cli", "launch", "--codebase_path",
                             str(tmp_path), "--synthetic_ratio", "1.5"], capture_output=True, text=True,
                            env=os.environ, timeout=60)
    assert result.returncode == 2 and "synthetic_ratio" in result.stderr and "Traceback" not in result.stderr
