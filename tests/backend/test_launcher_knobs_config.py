"""The launcher's multi-host knobs in the backend config's "environment" are checked at submission, in one line
naming the variable: each host's launcher reads them with int() once the instances started (billed x N), and
ADE_MASTER_ADDR, the local runner's loopback, would leave SageMaker hosts waiting on their own address."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.config.cloud import _LAUNCHER_KNOBS
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.job import contract

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def cloud(**overrides) -> CloudTrainingConfig:
    return CloudTrainingConfig.from_backend_config({"role_arn": ROLE, "bucket": "ade-knobs", "region": "us-east-1",
                                                    "instance_count": 2, **overrides})


@pytest.mark.parametrize("mode", ["sagemaker", "local"])
@pytest.mark.parametrize("name,value,expected", [
    ("ADE_RENDEZVOUS_TIMEOUT_S", "20m", "whole seconds > 0"),
    ("ADE_RENDEZVOUS_TIMEOUT_S", "0", "whole seconds > 0"),
    ("ADE_RENDEZVOUS_TIMEOUT_S", "1.5", "whole seconds > 0"),
    ("ADE_MASTER_PORT", "70000", "a TCP port 1-65535"),
    ("ADE_MASTER_PORT", "http", "a TCP port 1-65535"),
    ("ADE_NPROC_PER_NODE", "two", "a count of training processes per host"),
    ("ADE_NPROC_PER_NODE", "0", "a count of training processes per host"),
])
def test_a_bad_knob_is_one_line_naming_the_variable(mode, name, value, expected):
    with pytest.raises(ConfigError) as caught:
        cloud(mode=mode, environment={name: value})
    message = caught.value.message
    assert message.startswith(f"backend config 'environment': {name}={value!r} must be {expected}")
    assert "\n" not in message and message.endswith("fix or remove it")


def test_good_knobs_pass_as_given():
    knobs = {"ADE_RENDEZVOUS_TIMEOUT_S": "1200", "ADE_MASTER_PORT": "29500", "ADE_NPROC_PER_NODE": "8"}
    assert cloud(environment=knobs).environment == knobs


def test_a_rendezvous_address_is_for_local_mode_only():
    with pytest.raises(ConfigError, match="ADE_MASTER_ADDR is for local mode.*algo-1.*remove it"):
        cloud(environment={"ADE_MASTER_ADDR": "127.0.0.1"})
    assert cloud(mode="local", environment={"ADE_MASTER_ADDR": "127.0.0.1"}).environment


def test_the_checked_names_are_the_launchers():
    assert set(_LAUNCHER_KNOBS) == {contract.ENV_RENDEZVOUS_TIMEOUT_S, contract.ENV_MASTER_PORT,
                                    contract.ENV_NPROC_PER_NODE}
    assert contract.ENV_MASTER_ADDR == "ADE_MASTER_ADDR"
