"""The container contract written from a request, the SM_* variables, and who talks to MLflow."""
from __future__ import annotations

import json

import mlflow
import pytest

from ade_mlflow_plugin.job import contract, launcher
from tests.job.test_bad_job_input import _request


def test_contract_files_and_sm_environment_follow_the_request(sqlite_tracking, tmp_path):
    request, run_id = _request(tmp_path, sqlite_tracking)
    request["ResourceConfig"].update(InstanceCount=2, InstanceType="ml.g5.12xlarge")
    request["InputDataConfig"] = [{"ChannelName": "steps_dir", "InputMode": "File", "DataSource": {
        "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/p", "S3DataDistributionType": "ShardedByS3Key"}}}]
    paths = contract.ContainerPaths(tmp_path / "opt_ml")
    contract.write_contract(paths, request, current_host="algo-2")

    hyper = contract.read_hyperparameters(paths)
    assert hyper["mlflow_run_id"] == run_id and hyper["sagemaker_program"] == "ade_entry.py"
    assert json.loads(hyper["ade_params"]) == {"steps": "1"}  # decoded once, as AWS's toolkit does
    resource = contract.read_resource_config(paths)
    assert resource["hosts"] == ["algo-1", "algo-2"] and resource["current_host"] == "algo-2"
    assert resource["current_instance_type"] == "ml.g5.12xlarge"
    assert contract.read_input_data_config(paths)["steps_dir"]["S3DistributionType"] == "ShardedByS3Key"

    env = contract.sm_environment(paths, resource, num_gpus=4)
    assert env["SM_CHANNEL_STEPS_DIR"] == str(paths.base / "input" / "data" / "steps_dir")
    assert env["ADE_CHECKPOINT_DIR"] == str(paths.base / "checkpoints")
    assert env["SM_MODEL_DIR"] == str(paths.base / "model") and env["SM_NUM_GPUS"] == "4"
    assert json.loads(env["SM_HOSTS"]) == ["algo-1", "algo-2"] and env["SM_CURRENT_HOST"] == "algo-2"


def test_base_dir_comes_from_sagemaker_base_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SAGEMAKER_BASE_DIR", raising=False)
    default = contract.ContainerPaths.from_env()
    assert (str(default.checkpoint_dir), str(default.model_dir)) == ("/opt/ml/checkpoints", "/opt/ml/model")
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert contract.ContainerPaths.from_env().failure_file == tmp_path / "output" / "failure"


@pytest.mark.parametrize("host,ends_it", [("algo-1", True), ("algo-2", False)])
def test_only_the_first_host_ends_the_run(sqlite_tracking, host, ends_it):
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    resource = {"current_host": host, "hosts": ["algo-1", "algo-2"]}
    launcher._end_run({"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": sqlite_tracking}, "FINISHED", resource)
    assert mlflow.get_run(run_id).info.status == ("FINISHED" if ends_it else "RUNNING")

