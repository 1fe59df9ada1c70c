"""Peer proof: AWS's own container toolkit (sagemaker-training, the code that starts user scripts in
AWS's PyTorch/HF training images) runs a submitted job's entry through the ade_entry.py shim."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import boto3
import mlflow

from ade_mlflow_plugin.backend.local import Location
from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend
from ade_mlflow_plugin.container.contract import ContainerPaths, write_contract
from tests.conftest import FIXTURES

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def test_toolkit_starts_the_shim_and_the_entry_runs(aws, sqlite_tracking, tmp_path):
    boto3.client("s3").create_bucket(Bucket="ade-toolkit")
    config = {"role_arn": ROLE, "bucket": "ade-toolkit", "region": "us-east-1", "wait": False,
              "SYNCHRONOUS": False}
    experiment = mlflow.get_experiment_by_name("Default").experiment_id
    submitted = AdeSageMakerBackend(console=io.StringIO()).run(
        str(FIXTURES / "backend_project"), "main", {"data": str(FIXTURES / "backend_project_data")}, None,
        config, sqlite_tracking, experiment)
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=submitted.job_name)

    # What SageMaker does before it starts the image: the contract files and the channels.
    paths = ContainerPaths(tmp_path / "opt_ml")
    write_contract(paths, described)
    for channel in described["InputDataConfig"]:
        Location(channel["DataSource"]["S3DataSource"]["S3Uri"], None).download_to(
            paths.channel_dir(channel["ChannelName"]))

    # moto drops Environment from its answer; the launcher reads the run from the hyperparameters then.
    env = {**os.environ, **described.get("Environment", {}), "SAGEMAKER_BASE_DIR": str(paths.base),
           "SM_STUDIO_LOCAL_MODE": "true", "TRAINING_JOB_NAME": submitted.job_name}
    result = subprocess.run([sys.executable, "-m", "sagemaker_training.cli.train"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "ade_entry.py" in output and "trained on 3 lines" in output
    assert (paths.code_dir / "ade_entry.py").is_file()  # the toolkit unpacked our archive itself
    assert (paths.model_dir / "weights.txt").read_text().startswith("lr=0.1")
    assert (paths.checkpoint_dir / "last.txt").is_file()
    assert mlflow.get_run(submitted.run_id).info.status == "FINISHED"
