"""The shipped example backend configs are valid."""
import json

from ade_mlflow_plugin.config import CloudTrainingConfig
from tests.conftest import REPO_ROOT


def test_example_configs_validate():
    local = CloudTrainingConfig.from_backend_config(str(REPO_ROOT / "examples" / "local.json"))
    cloud = CloudTrainingConfig.from_backend_config(str(REPO_ROOT / "examples" / "sagemaker.json"))
    assert local.mode == "local" and cloud.use_spot and cloud.max_wait_s == 28800
    policy = json.loads((REPO_ROOT / "examples" / "iam-policy.json").read_text())
    actions = {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert {"sagemaker:CreateTrainingJob", "sagemaker:StopTrainingJob", "iam:PassRole", "s3:PutObject"} <= actions
