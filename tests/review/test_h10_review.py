"""Review of issue 16 / 17 item 1 / 19 items 1-3 (H10): each xfail(strict) test demonstrates a bug found in
review; it starts passing (and then fails as XPASS, so the marker is removed) once the bug is fixed."""
from __future__ import annotations

import io
import threading
from pathlib import Path

import mlflow
import pytest

from ade_mlflow_plugin.config.cloud import CloudTrainingConfig
from ade_mlflow_plugin.config.registry import ModelRegistryConfig
from ade_mlflow_plugin.job import budget, contract, run_state
from ade_mlflow_plugin.launch import build_launch

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


# ---------------------------------------------------------------- issue 17 item 1: output_dir s3://
def test_an_s3_output_dir_sets_the_prefix_when_cloud_config_is_a_config_object(tmp_path):
    config = CloudTrainingConfig(instance_type="ml.g4dn.xlarge", max_runtime=86400, role_arn=ROLE)
    _, backend_config = build_launch(str(tmp_path), "s3://out-bucket/team/exp1", "m", config,
                                     ModelRegistryConfig(), 10, 0.3, {})
    assert (backend_config["bucket"], backend_config["prefix"]) == ("out-bucket", "team/exp1")


def test_an_s3_output_dir_that_contradicts_the_config_bucket_is_refused(tmp_path):
    from ade_mlflow_plugin.errors import ConfigError

    config = CloudTrainingConfig(instance_type="ml.g4dn.xlarge", role_arn=ROLE, bucket="config-bucket")
    with pytest.raises(ConfigError, match="output_dir"):
        build_launch(str(tmp_path), "s3://out-bucket/team/exp1", "m", config, ModelRegistryConfig(), 10, 0.3, {})


# ---------------------------------------------------------------- issue 16 item 1: billed seconds
def _tick_once(job: contract.JobContract, env: dict[str, str], checkpoint_dir: Path, elapsed_s: float) -> list:
    """Start the job's budget guard with a clock at ``elapsed_s``; return its stops after its first full tick.

    Waits on the guard's own calls (its second clock read comes after the first tick ended), not on time.
    """
    stops: list = []
    calls = threading.Semaphore(0)

    def clock() -> float:
        calls.release()
        return elapsed_s

    guard = budget.start_budget_guard(job, {"hosts": ["algo-1"], "current_host": "algo-1"},
                                      {**env, contract.ENV_BUDGET_INTERVAL_S: "0.01"}, checkpoint_dir,
                                      lambda reason, detail: stops.append(reason), clock)
    assert guard is not None
    for _ in range(2):
        assert calls.acquire(timeout=60), "the budget guard never ticked"
    guard.finish()
    return stops


def test_a_new_job_sharing_a_checkpoint_dir_does_not_inherit_the_earlier_jobs_bill(tmp_path):
    cost = contract.Cost(3.6, "test", max_cost_usd=1.0)  # 1000 s of one instance
    shared = tmp_path / "checkpoints"

    def job(run_id: str) -> contract.JobContract:
        return contract.JobContract(code_uri="s3://b/code.tgz", region="us-east-1", entry_point="main",
                                    run=contract.RunInfo(run_id, "0", ""), cost=cost)

    assert _tick_once(job("run-a"), {contract.ENV_JOB_NAME: "job-a"}, shared, 900.0) == []
    # Job B is a new job (its own run, its own MaxRuntime cap of 1000 s): 100 s in, it has spent $0.10.
    assert _tick_once(job("run-b"), {contract.ENV_JOB_NAME: "job-b"}, shared, 100.0) == []


# ---------------------------------------------------------------- issue 16 item 4: stop reason
def _moto_job_status(name: str, status: str) -> None:
    from moto.sagemaker import models

    for account in models.sagemaker_backends.values():
        job = account["us-east-1"].training_jobs.get(name)
        if job is not None:
            job.training_job_status = status
            return
    raise AssertionError(f"moto did not keep {name}")


def test_a_followed_job_stopped_at_its_budget_keeps_stop_reason_budget(aws, tracking_uri, tmp_path):
    import boto3
    from botocore.stub import Stubber

    from ade_mlflow_plugin.backend import spec
    from ade_mlflow_plugin.backend.monitor import BudgetGuard
    from ade_mlflow_plugin.backend.submitted_run import SageMakerJob

    client = mlflow.MlflowClient()
    run_id = client.create_run("0").info.run_id
    config = CloudTrainingConfig.from_backend_config({"role_arn": ROLE, "bucket": "ade-bucket",
                                                      "instance_type": "ml.g5.xlarge"})
    inputs = spec.JobInputs(job_name="budget-followed", entry_point="main", image_uri="img",
                            code_uri="s3://b/code.tgz", output_uri="s3://b/out", checkpoint_uri="s3://b/ckpt",
                            run=spec.RunInfo(run_id, "0", tracking_uri))
    boto3.client("sagemaker", region_name="us-east-1").create_training_job(
        **spec.build_training_job_request(config, inputs, "us-east-1"))
    _moto_job_status("budget-followed", "InProgress")
    # moto has no StopTrainingJob: the follower's client is stubbed for that call (DESIGN: state walks).
    followers_client = boto3.client("sagemaker", region_name="us-east-1")
    description = followers_client.describe_training_job(TrainingJobName="budget-followed")
    stub = Stubber(followers_client)
    stub.add_response("stop_training_job", {}, {"TrainingJobName": "budget-followed"})
    stub.activate()

    # The follower (backend/monitor.py) at 101 % of the budget: StopTrainingJob, ade.stop_reason=budget.
    follower = BudgetGuard(1.0, "stop", SageMakerJob(followers_client, "budget-followed"), run_id, client,
                           io.StringIO())
    follower.check(1.01, description)
    stub.assert_no_pending_responses()
    assert client.get_run(run_id).data.tags[contract.STOP_REASON_TAG] == "budget"
    _moto_job_status("budget-followed", "Stopping")  # what DescribeTrainingJob says after StopTrainingJob

    # SageMaker then SIGTERMs the launcher, which asks why and ends the run (launcher._stopped).
    env = {contract.ENV_JOB_NAME: "budget-followed", contract.ENV_RUN_ID: run_id,
           contract.ENV_TRACKING_URI: tracking_uri, contract.ENV_OUTPUT_DATA_DIR: str(tmp_path)}
    reason, detail = run_state.sigterm_reason(contract.ContainerPaths(tmp_path), env, "us-east-1")
    run_state.end_run(env, "KILLED", {"hosts": ["algo-1"], "current_host": "algo-1"},
                      {contract.STOP_REASON_TAG: reason, contract.STOP_DETAIL_TAG: detail})
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags[contract.STOP_REASON_TAG]) == ("KILLED", "budget")


# ---------------------------------------------------------------- issue 19 item 1: links inside the project
def test_a_link_does_not_ship_what_gitignore_or_adeignore_keep_out(tmp_path):
    from ade_mlflow_plugin.backend.packaging import collect_files

    project = tmp_path / "project"
    (project / "secrets").mkdir(parents=True)
    (project / "private").mkdir()
    (project / "conf").mkdir()
    (project / "MLproject").write_text("name: x\nentry_points:\n  main:\n    command: python a.py\n")
    (project / ".gitignore").write_text("secrets/\n")
    (project / ".adeignore").write_text("private/\n")
    (project / "secrets" / "prod.yaml").write_text("db_host: prod-db.internal\n")
    (project / "private" / "notes.txt").write_text("not for the job\n")
    (project / "conf" / "current.yaml").symlink_to("../secrets/prod.yaml")
    (project / "pub").symlink_to("private")
    shipped = {f.arcname for f in collect_files(project)}
    assert not shipped & {"conf/current.yaml", "pub/notes.txt"}, shipped


# ---------------------------------------------------------------- issue 19 item 2: environment by name
@pytest.mark.parametrize("name, value", [("TOKENIZERS_PARALLELISM", "false"), ("MAX_TOKENS", "2048")])
def test_everyday_training_variables_are_not_refused_as_credentials(name, value):
    config = CloudTrainingConfig.from_backend_config({"mode": "local", "environment": {name: value}})
    assert config.environment == {name: value}


# ---------------------------------------------------------------- issue 16 item 3: reconcile
@pytest.mark.slow  # a whole reconcile against moto (~6 s: the Price List API retries)
def test_reconcile_completes_a_run_that_its_launcher_already_ended(aws, sqlite_tracking, tmp_path, monkeypatch):
    import uuid

    from click.testing import CliRunner

    from ade_mlflow_plugin.backend.commands import reconcile_command
    from tests.backend.test_cost_command import moto_job
    from tests.backend.test_mlflow_run_sagemaker import _put_logs

    monkeypatch.setenv("ADE_MLFLOW_CACHE_DIR", str(tmp_path / "cache"))
    client = mlflow.MlflowClient()
    name = f"ade-review-{uuid.uuid4().hex[:8]}"
    moto_job(name, 1, False, training_time_in_seconds=1800, billable_time_in_seconds=1800)  # Completed
    run_id = client.create_run(client.create_experiment("walked-away-review"), tags={
        "sagemaker.job_name": name, "sagemaker.region": "us-east-1", "sagemaker.mode": "sagemaker"}).info.run_id
    client.set_terminated(run_id, "FINISHED")  # what job/run_state.end_run does at the entry's end
    _put_logs(name, ["hello from the unfollowed job"])

    result = CliRunner().invoke(reconcile_command, ["--experiment", "walked-away-review"])
    assert result.exit_code == 0, result.output
    run = client.get_run(run_id)
    assert run.data.tags.get("sagemaker.status") == "Completed"
    assert run.data.tags.get("sagemaker.billable_seconds") == "1800"
    assert [a.path for a in client.list_artifacts(run_id, "logs")]


# ---------------------------------------------------------------- issue 19 item 1 + DESIGN: no run for bad input
def test_a_secret_scan_refusal_creates_no_run(sqlite_tracking, tmp_path, monkeypatch):
    from ade_mlflow_plugin.backend import ship_scan
    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend
    from ade_mlflow_plugin.errors import ConfigError

    monkeypatch.setenv(ship_scan.CACHE_ENV, str(tmp_path / "cache"))
    project = tmp_path / "project"
    project.mkdir()
    (project / "MLproject").write_text("name: review\nentry_points:\n  main:\n    command: python train.py\n")
    (project / "train.py").write_text('TOKEN = "ghp_' + 'a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"\n')
    experiment = mlflow.get_experiment_by_name("Default").experiment_id
    config = {"mode": "local", "job_root": str(tmp_path / "jobs"), "wait": False, "SYNCHRONOUS": False}
    with pytest.raises(ConfigError, match=r"^train\.py:1: looks like a secret"):
        AdeSageMakerBackend(console=io.StringIO()).run(str(project), "main", {}, None, config, sqlite_tracking,
                                                       experiment)
    assert mlflow.MlflowClient().search_runs([experiment]) == []


# ---------------------------------------------------------------- issue 16 items 1 + 4: a budget-capped MaxRuntime
def test_a_stop_at_the_budget_capped_max_runtime_reads_budget(aws, tmp_path):
    import boto3

    from ade_mlflow_plugin.backend import spec
    from moto.sagemaker import models

    config = CloudTrainingConfig.from_backend_config({"role_arn": ROLE, "bucket": "ade-bucket",
                                                      "instance_type": "ml.g5.xlarge", "max_cost_usd": 2.0})
    cost = contract.Cost(1.408, "test", max_cost_usd=2.0)
    inputs = spec.JobInputs(job_name="budget-capped", entry_point="main", image_uri="img", code_uri="s3://b/c.tgz",
                            output_uri="s3://b/out", checkpoint_uri="s3://b/ckpt",
                            run=spec.RunInfo("r", "0", "http://127.0.0.1:1"), cost=cost)
    request = spec.build_training_job_request(config, inputs, "us-east-1")
    assert request["StoppingCondition"]["MaxRuntimeInSeconds"] == cost.affordable_s(1) < config.max_runtime_s
    boto3.client("sagemaker", region_name="us-east-1").create_training_job(**request)
    for account in models.sagemaker_backends.values():
        job = account["us-east-1"].training_jobs.get("budget-capped")
        if job is not None:
            job.training_job_status, job.secondary_status = "InProgress", "MaxRuntimeExceeded"
    env = {contract.ENV_JOB_NAME: "budget-capped", contract.ENV_OUTPUT_DATA_DIR: str(tmp_path)}
    reason, _ = run_state.sigterm_reason(contract.ContainerPaths(tmp_path), env, "us-east-1")
    assert reason == "budget"
