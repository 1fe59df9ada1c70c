"""Bad configs and params through the real `mlflow run` CLI: one line on stderr, exit 2, no AWS call."""
from __future__ import annotations

import json

import pytest

from tests.backend.conftest import ROLE, mlflow_run

GOOD = {"role_arn": ROLE, "bucket": "ade-bucket", "region": "us-east-1"}

CASES = [
    # (id, backend config, extra CLI args, words the one line must contain)
    ("unknown-key", {**GOOD, "instance_typ": "ml.g5.xlarge"}, [], ["instance_typ", "did you mean 'instance_type'"]),
    ("count-zero", {**GOOD, "instance_count": 0}, [], ["instance_count", "integer between 1 and 100"]),
    ("count-text", {**GOOD, "instance_count": "two"}, [], ["instance_count", "\"two\""]),
    ("volume-negative", {**GOOD, "volume_size_gb": -5}, [], ["volume_size_gb", "-5"]),
    ("runtime-too-long", {**GOOD, "max_runtime_s": 10**8}, [], ["max_runtime_s", "2419200"]),
    ("spot-not-bool", {**GOOD, "use_spot": "yes"}, [], ["use_spot", "true or false"]),
    ("wait-below-runtime", {**GOOD, "use_spot": True, "max_runtime_s": 7200, "max_wait_s": 3600}, [],
     ["max_wait_s", ">= max_runtime_s"]),
    ("no-role", {"bucket": "ade-bucket", "region": "us-east-1"}, [], ["role_arn", "required"]),
    ("bad-role", {**GOOD, "role_arn": "SageMakerRole"}, [], ["role_arn", "IAM role ARN"]),
    ("bad-bucket", {**GOOD, "bucket": "My_Bucket"}, [], ["bucket", "My_Bucket"]),
    ("bad-mode", {**GOOD, "mode": "cloud"}, [], ["mode", "'sagemaker' or 'local'"]),
    ("secret-env", {**GOOD, "environment": {"AWS_SECRET_ACCESS_KEY": "x"}}, [], ["AWS_SECRET_ACCESS_KEY", "IAM role"]),
    ("subnets-alone", {**GOOD, "subnets": ["subnet-0abc"]}, [], ["security_group_ids", "both"]),
    ("bad-region", {**GOOD, "region": "useast1"}, [], ["region", "us-east-1"]),
    ("negative-budget", {**GOOD, "max_cost_usd": -1}, [], ["max_cost_usd", "positive"]),
    ("warm-pool-spot", {**GOOD, "use_spot": True, "keep_alive_period_s": 600}, [], ["keep_alive_period_s", "spot"]),
    ("no-image", {**GOOD, "framework_version": "1.0"}, [], ["framework_version", "image_uri"]),
    ("unknown-param", GOOD, ["-P", "lrr=0.1"], ["lrr", "did you mean 'lr'"]),
    ("float-param", GOOD, ["-P", "lr=fast"], ["lr", "expected a number"]),
    ("missing-param", GOOD, [], ["data", "no default", "-P data="]),
    ("unknown-entry", GOOD, ["-e", "mian"], ["mian", "did you mean 'main'"]),
    ("missing-path", GOOD, ["-P", "data=/nonexistent/dir"], ["data", "does not exist"]),
]


# The real `mlflow run` in a subprocess costs ~10 s of interpreter and MLflow start-up each: two cases prove
# that path (stderr, exit code, no traceback); the others run the same click command in this process.
SUBPROCESS_CASES = {"unknown-key", "float-param"}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('bad-input')}/mlflow.db"


def _run_in_process(args: list[str], env: dict[str, str], cwd, monkeypatch) -> tuple[int, str]:
    """`mlflow run ARGS` through MLflow's own click group in this process: (exit code, stderr)."""
    import mlflow
    from click.testing import CliRunner
    from mlflow.cli import cli

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(cwd)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        result = CliRunner().invoke(cli, args, catch_exceptions=True)
    finally:
        mlflow.set_tracking_uri(None)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


# The subprocess cases are `slow` (a subprocess `mlflow run`): make test runs them, make test-fast does not.
@pytest.mark.parametrize("case_id,config,args,words",
                         [pytest.param(*case, marks=pytest.mark.slow) if case[0] in SUBPROCESS_CASES else case
                          for case in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_no_aws_call(case_id, config, args, words, project, data_dir, tmp_path,
                                                aws_call_counter, tracking, monkeypatch):
    endpoint, counter = aws_call_counter
    needs_data = case_id not in {"missing-param", "missing-path"}
    data_args = ["-P", f"data={data_dir}"] if needs_data else []
    cli_args = ["--backend-config", json.dumps(config), *data_args, *args]
    env = {"AWS_ENDPOINT_URL": endpoint, "MLFLOW_TRACKING_URI": tracking}
    if case_id in SUBPROCESS_CASES:
        result = mlflow_run(project, cli_args, env=env, cwd=tmp_path)
        code, stderr = result.returncode, result.stderr
    else:
        code, stderr = _run_in_process(["run", str(project), "-b", "ade-sagemaker", *cli_args], env, tmp_path,
                                       monkeypatch)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("ade-sagemaker: error:")]
    assert len(lines) == 1, stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert counter.count == 0, f"{counter.count} AWS calls were made"
