"""Every request the pure builder produces passes botocore's own validation against the service model."""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone

import botocore.session
import pytest
from botocore.validate import ParamValidator

from ade_mlflow_plugin.backend import spec
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.job import contract

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
BASE = {"role_arn": ROLE, "bucket": "ade-bucket", "region": "eu-west-1"}
VARIANTS = {
    "minimal": {},
    "spot": {"use_spot": True, "max_runtime_s": 3600, "checkpoint_s3_uri": "s3://ade-bucket/ckpt"},
    "vpc-kms-isolation": {"subnets": ["subnet-0abc"], "security_group_ids": ["sg-0def"],
                          "volume_kms_key_id": "alias/ade", "output_kms_key_id": "alias/ade",
                          "enable_network_isolation": True, "enable_inter_container_traffic_encryption": True},
    "warm-pool-retry-multi": {"keep_alive_period_s": 900, "max_retry_attempts": 3, "instance_count": 2,
                              "tags": {"team": "ml"}, "environment": {"NCCL_DEBUG": "WARN"}},
    "local": {"mode": "local"},
}


def _inputs(job_name: str = "ade-test-20261129-000000-abcd") -> spec.JobInputs:
    return spec.JobInputs(
        job_name=job_name, entry_point="main", image_uri="763104351884.dkr.ecr.eu-west-1.amazonaws.com/x:2.5",
        code_uri="s3://ade-bucket/ade-mlflow/code/abc.tar.gz", output_uri="s3://ade-bucket/ade-mlflow/output",
        checkpoint_uri="s3://ade-bucket/ade-mlflow/checkpoints/j",
        run=spec.RunInfo("0123abcd", "7", "https://mlflow.example.com"),
        params={"lr": "0.1", "note": "hello"},
        channel_params={"data": spec.Channel("data", "s3://ade-bucket/ade-mlflow/data/ff/"),
                        "config": spec.Channel("config", "s3://ade-bucket/ade-mlflow/data/ee/", "c.yaml")},
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_request_validates_against_service_model(variant):
    config = CloudTrainingConfig.from_backend_config({**BASE, **VARIANTS[variant]})
    request = spec.build_training_job_request(config, _inputs(), "eu-west-1")
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model("CreateTrainingJob").input_shape
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()


def test_request_carries_what_the_worker_needs():
    config = CloudTrainingConfig.from_backend_config({**BASE, **VARIANTS["spot"]})
    request = spec.build_training_job_request(config, _inputs(), "eu-west-1")
    job = contract.decode_hyperparameters({k: json.loads(v) for k, v in request["HyperParameters"].items()})
    assert job == contract.JobContract(
        code_uri="s3://ade-bucket/ade-mlflow/code/abc.tar.gz", region="eu-west-1", entry_point="main",
        run=spec.RunInfo("0123abcd", "7", "https://mlflow.example.com"), params={"lr": "0.1", "note": "hello"},
        channel_params={"data": contract.ChannelParam("data"), "config": contract.ChannelParam("config", "c.yaml")})
    assert request["Environment"][contract.ENV_RUN_ID] == "0123abcd"
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["CheckpointConfig"] == {"S3Uri": "s3://ade-bucket/ade-mlflow/checkpoints/j",
                                           "LocalPath": "/opt/ml/checkpoints"}
    assert {c["ChannelName"] for c in request["InputDataConfig"]} == {"data", "config"}
    assert {"Key": "mlflow.run_id", "Value": "0123abcd"} in request["Tags"]
    algorithm = request["AlgorithmSpecification"]
    assert algorithm["ContainerEntrypoint"][0] == "python3"
    assert len(algorithm["ContainerArguments"]) <= 100  # the service's limits
    assert all(len(arg) <= 256 for arg in algorithm["ContainerArguments"])
    blob = json.dumps(request)
    assert "testing" not in blob and "SECRET" not in blob.upper()


def test_job_names_are_unique_valid_and_bounded():
    now = datetime(2026, 11, 29, 5, 0, 0, tzinfo=timezone.utc)
    names = {spec.make_job_name("ade-" + "x" * 80, now) for _ in range(50)}
    assert len(names) > 40
    import re

    for name in names:
        assert len(name) <= 63 and re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name)
    assert spec.make_job_name("my_project!", now, "beef") == "my-project-20261129-050000-beef"


def test_tracking_uri_with_credentials_is_refused():
    with pytest.raises(ConfigError, match="user name or password"):
        spec.check_tracking_uri("https://alice:s3cret@mlflow.example.com")
    spec.check_tracking_uri("https://mlflow.example.com")


def test_overlong_params_are_refused_with_the_fix():
    inputs = _inputs()
    inputs = spec.JobInputs(**{**inputs.__dict__, "params": {"note": "x" * 3000}})
    config = CloudTrainingConfig.from_backend_config(BASE)
    with pytest.raises(ConfigError, match="path parameter"):
        spec.build_training_job_request(config, inputs, "eu-west-1")


@pytest.mark.parametrize("overrides,price,count,runtime,wait", [
    # $10 at 2 x $1.212/h buys 14851 s: SageMaker's MaxRuntime is cut to it.
    ({"instance_count": 2}, 1.212, 2, 14851, None),
    # Spot keeps its time to wait for capacity (7200 - 3600 s) on top of the capped runtime.
    ({"use_spot": True, "max_runtime_s": 3600, "max_wait_s": 7200}, 20.0, 1, 1800, 1800 + 3600),
    # A budget that buys more than max_runtime_s leaves it as it is.
    ({"max_runtime_s": 600}, 1.0, 1, 600, None),
])
def test_max_cost_caps_max_runtime_so_the_job_cannot_cost_more(overrides, price, count, runtime, wait):
    budget = 10.0
    config = CloudTrainingConfig.from_backend_config({**BASE, "max_cost_usd": budget, **overrides})
    inputs = dataclasses.replace(_inputs(), cost=contract.Cost(price, "test", budget, "stop"))
    request = spec.build_training_job_request(config, inputs, "eu-west-1")
    stopping = request["StoppingCondition"]
    assert stopping["MaxRuntimeInSeconds"] == runtime
    assert stopping["MaxRuntimeInSeconds"] <= budget / (count * price) * 3600
    assert stopping.get("MaxWaitTimeInSeconds") == wait
    if wait is not None:
        assert stopping["MaxWaitTimeInSeconds"] >= stopping["MaxRuntimeInSeconds"]  # SageMaker's rule
    shape = botocore.session.get_session().get_service_model("sagemaker").operation_model(
        "CreateTrainingJob").input_shape
    assert not ParamValidator().validate(request, shape).has_errors()


def test_local_jobs_keep_max_runtime_their_launcher_keeps_the_budget():
    config = CloudTrainingConfig.from_backend_config({"mode": "local", "max_cost_usd": 0.01})
    inputs = dataclasses.replace(_inputs(), cost=contract.Cost(1.0, "test", 0.01, "stop"))
    request = spec.build_training_job_request(config, inputs, "eu-west-1")
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": config.max_runtime_s}
    assert json.loads(request["HyperParameters"][contract.HP_MAX_COST_USD]) == "0.01"
