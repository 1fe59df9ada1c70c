"""The job contract: encode (client) -> the files SageMaker writes -> decode (job) gives the same values;
the SM_* variables; who talks to MLflow."""
from __future__ import annotations

import dataclasses
import json

import pytest

from ade_mlflow_plugin.backend import spec
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.job import contract
from tests.job.test_bad_job_input import _request

JOB = contract.JobContract(
    code_uri="s3://bucket/ade-mlflow/code/abc.tar.gz", region="eu-west-1", entry_point="train",
    run=contract.RunInfo("0123abcd", "7", "https://mlflow.example.com"),
    params={"lr": "0.1", "note": 'quotes " and {braces}', "empty": ""},
    channel_params={"dataset": contract.ChannelParam("dataset"),
                    "config": contract.ChannelParam("config", "c.yaml"),
                    "config copy": contract.ChannelParam("config", "c.yaml")},
)


def _inputs(job: contract.JobContract) -> spec.JobInputs:
    channels = {p: spec.Channel(c.channel, f"s3://bucket/data/{c.channel}/", c.file_name)
                for p, c in job.channel_params.items()}
    return spec.JobInputs(job_name="round-trip-20261206-000000-abcd", entry_point=job.entry_point,
                          image_uri="img", code_uri=job.code_uri, output_uri="s3://bucket/out",
                          checkpoint_uri="s3://bucket/ckpt", run=job.run, params=job.params,
                          channel_params=channels, cost=job.cost)


@pytest.mark.parametrize("mode", ["sagemaker", "local"])
def test_round_trip_through_the_request_and_the_contract_files(tmp_path, mode):
    backend_config = {"mode": mode, "role_arn": "arn:aws:iam::123456789012:role/R", "bucket": "bucket"}
    request = spec.build_training_job_request(CloudTrainingConfig.from_backend_config(backend_config),
                                              _inputs(JOB), JOB.region)
    paths = contract.ContainerPaths(tmp_path / "opt_ml")
    contract.write_contract(paths, request)  # what SageMaker writes before the container starts

    assert contract.decode(paths) == JOB
    assert sorted(contract.read_input_data_config(paths)) == JOB.channel_names == ["config", "dataset"]
    env = request["Environment"]
    assert contract.RunInfo(env[contract.ENV_RUN_ID], env[contract.ENV_EXPERIMENT_ID],
                            env[contract.ENV_TRACKING_URI]) == JOB.run
    (paths.channel_dir("dataset")).mkdir(parents=True)
    (paths.channel_dir("config")).mkdir(parents=True)
    values = contract.param_values(contract.decode(paths), paths)
    assert values["dataset"] == str(paths.channel_dir("dataset"))
    assert values["config copy"] == str(paths.channel_dir("config") / "c.yaml")
    assert values["note"] == JOB.params["note"] and values["empty"] == ""


def test_the_wire_names_stay_what_jobs_and_aws_toolkit_read():
    # Frozen on purpose: AWS's toolkit reads the sagemaker_* keys, and a job submitted by an older
    # client must still decode. Renaming one is a breaking change of docs/job-contract.md.
    encoded = contract.encode(JOB)
    assert sorted(encoded.hyperparameters) == sorted([
        "sagemaker_program", "sagemaker_submit_directory", "sagemaker_region", "ade_entry_point", "ade_params",
        "ade_channel_params", "ade_file_params", "mlflow_run_id", "mlflow_experiment_id", "mlflow_tracking_uri"])
    assert json.loads(encoded.hyperparameters["sagemaker_program"]) == "ade_entry.py"
    assert sorted(encoded.environment) == ["MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI"]


def test_a_job_without_hyperparameters_decodes_to_the_defaults(tmp_path):
    job = contract.decode(contract.ContainerPaths(tmp_path))
    assert (job.entry_point, job.code_uri, job.region, job.params, job.channel_params) == ("main", "", None, {}, {})


def test_a_missing_channel_and_a_mangled_hyperparameter_are_one_line(tmp_path):
    paths = contract.ContainerPaths(tmp_path)
    missing = r"input channel 'dataset' \(parameter 'dataset'\).*InputDataConfig"
    with pytest.raises(contract.ContractError, match=missing):
        contract.param_values(JOB, paths)
    with pytest.raises(contract.ContractError, match=f"{contract.HP_PARAMS} is not a JSON object"):
        contract.decode_hyperparameters({contract.HP_PARAMS: "[1, 2"})


def test_channel_names_follow_sagemaker_rules():
    assert contract.channel_name("my data/dir") == "my_data_dir"
    assert len(contract.channel_name("x" * 100)) == 64


def test_contract_files_and_sm_environment_follow_the_request(sqlite_tracking, tmp_path):
    request, run_id = _request(tmp_path, sqlite_tracking)
    request["ResourceConfig"].update(InstanceCount=2, InstanceType="ml.g5.12xlarge")
    request["InputDataConfig"] = [{"ChannelName": "steps_dir", "InputMode": "File", "DataSource": {
        "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/p", "S3DataDistributionType": "ShardedByS3Key"}}}]
    paths = contract.ContainerPaths(tmp_path / "opt_ml")
    contract.write_contract(paths, request, current_host="algo-2")

    job = contract.decode(paths)
    assert job.run.run_id == run_id and job.params == {"steps": "1"}
    resource = contract.read_resource_config(paths)
    assert resource["hosts"] == ["algo-1", "algo-2"] and resource["current_host"] == "algo-2"
    assert resource["current_instance_type"] == "ml.g5.12xlarge"
    assert contract.read_input_data_config(paths)["steps_dir"]["S3DistributionType"] == "ShardedByS3Key"

    env = contract.sm_environment(paths, resource, num_gpus=4)
    assert env[contract.ENV_CHANNEL_PREFIX + "STEPS_DIR"] == str(paths.base / "input" / "data" / "steps_dir")
    assert env[contract.ENV_CHECKPOINT_DIR] == str(paths.base / "checkpoints")
    assert env[contract.ENV_MODEL_DIR] == str(paths.base / "model") and env[contract.ENV_NUM_GPUS] == "4"
    assert json.loads(env[contract.ENV_HOSTS]) == ["algo-1", "algo-2"] and env[contract.ENV_CURRENT_HOST] == "algo-2"


def test_base_dir_comes_from_sagemaker_base_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(contract.ENV_BASE_DIR, raising=False)
    default = contract.ContainerPaths.from_env()
    assert (str(default.checkpoint_dir), str(default.model_dir)) == ("/opt/ml/checkpoints", "/opt/ml/model")
    assert default == contract.CONTAINER_PATHS
    monkeypatch.setenv(contract.ENV_BASE_DIR, str(tmp_path))
    assert contract.ContainerPaths.from_env().failure_file == tmp_path / "output" / "failure"


@pytest.mark.parametrize("cost", [
    contract.Cost(1.408, "bundled price table, 2024-06", 12.5, "alert"),
    contract.Cost(37.688, "AWS Price List API, 2026-12-06"),  # a price without a budget: cost_usd only
])
def test_price_and_budget_travel_to_the_job(tmp_path, cost):
    job = contract.JobContract(code_uri="s3://b/c.tar.gz", region="us-east-1", entry_point="main",
                               run=contract.RunInfo("r", "0", "http://mlflow"), cost=cost)
    request = spec.build_training_job_request(
        CloudTrainingConfig.from_backend_config({"mode": "local"}), _inputs(job), job.region)
    paths = contract.ContainerPaths(tmp_path)
    contract.write_contract(paths, request)
    assert contract.decode(paths) == job
    encoded = contract.encode(job).hyperparameters
    budget_keys = {contract.HP_MAX_COST_USD, contract.HP_ON_BUDGET}
    assert (budget_keys <= set(encoded)) == (cost.max_cost_usd is not None)
    assert cost.usd(3600, 2) == pytest.approx(2 * cost.usd_per_hour)


def test_a_job_without_a_price_carries_no_cost_keys_and_a_mangled_one_is_one_line():
    assert contract.HP_USD_PER_HOUR not in contract.encode(JOB).hyperparameters and JOB.cost is None
    with pytest.raises(contract.ContractError, match=contract.HP_USD_PER_HOUR):
        contract.decode_hyperparameters({contract.HP_USD_PER_HOUR: "cheap"})


def test_the_cost_wire_names_stay_what_jobs_read():
    # Frozen like the others (docs/job-contract.md): a job submitted by this client must decode them.
    with_budget = dataclasses.replace(JOB, cost=contract.Cost(1.0, "table", 5.0, "stop"))
    added = set(contract.encode(with_budget).hyperparameters) - set(contract.encode(JOB).hyperparameters)
    assert added == {"ade_usd_per_hour", "ade_price_source", "ade_max_cost_usd", "ade_on_budget"}
    assert (contract.ENV_BUDGET_INTERVAL_S, contract.ENV_BUDGET_CLOCK_FILE, contract.METRIC_LINE_PREFIX) == (
        "ADE_BUDGET_INTERVAL_S", "ADE_BUDGET_CLOCK_FILE", "ade-metrics")
