"""Reviewer's demonstrations (session 4, issues 20 and 21): each test shows one bug found in review and is
marked xfail(strict=True) until its owner fixes it and removes the marker (/work/notes/requests-for-*.md)."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.backend.fit import Gpus, plan_fit
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.errors import ConfigError

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def cloud(**overrides) -> CloudTrainingConfig:
    return CloudTrainingConfig.from_backend_config({"role_arn": ROLE, "bucket": "ade-review", "region": "us-east-1",
                                                    **overrides})


def training(**params) -> TrainingConfig:
    return TrainingConfig.from_params({"codebase": "src", **{k: str(v) for k, v in params.items()}})


# ---- S2: memory_estimate.decide_on / backend/fit.py --------------------------------------------------------

@pytest.mark.xfail(strict=True, raises=ConfigError,
                   reason="sharding=fsdp on one GPU that holds the plan is refused at submission with "
                          "'-1.2 GiB too much' (memory_estimate.decide_on: no sharded estimate for one GPU)")
def test_sharding_fsdp_on_one_gpu_that_fits_is_not_refused_with_a_negative_excess():
    # The job trains sharding=fsdp with one process unsharded (training/sharding.choose); the fit check must not
    # refuse what fits, least of all with a negative "too much".
    plan = plan_fit(cloud(instance_type="ml.g5.2xlarge"), training(sharding="fsdp"))
    assert "fits" in plan.line


@pytest.mark.xfail(strict=True, raises=ConfigError,
                   reason="sharding=fsdp on this machine's one GPU (local mode, 80 GiB) is refused with "
                          "'-59.2 GiB too much'")
def test_sharding_fsdp_in_local_mode_on_one_big_gpu_is_not_refused():
    plan = plan_fit(cloud(mode="local"), training(sharding="fsdp"), local=Gpus(1, 80.0, "this machine's GPUs"))
    assert "fits" in plan.line
