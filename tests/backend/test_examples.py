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


def test_example_job_role_is_accepted_by_iam_and_covers_the_example_config(moto_server):
    import boto3

    trust = (REPO_ROOT / "examples" / "iam-job-role-trust.json").read_text()
    permissions = (REPO_ROOT / "examples" / "iam-job-role-policy.json").read_text()
    iam = boto3.client("iam", region_name="us-east-1")
    # moto validates policy documents as IAM does (syntax, actions, resources): a broken example is refused.
    role = iam.create_role(RoleName="AdeSageMakerTraining", AssumeRolePolicyDocument=trust)["Role"]
    iam.put_role_policy(RoleName="AdeSageMakerTraining", PolicyName="ade-job", PolicyDocument=permissions)
    cloud = CloudTrainingConfig.from_backend_config(str(REPO_ROOT / "examples" / "sagemaker.json"))
    assert cloud.role_arn == role["Arn"]  # the example config names exactly this role
    resources = {r for s in json.loads(permissions)["Statement"]
                 for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])}
    assert f"arn:aws:s3:::{cloud.bucket}/{cloud.prefix}/*" in resources
    assert json.loads(trust)["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
