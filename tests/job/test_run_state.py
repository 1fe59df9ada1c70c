"""The launcher's word on the run: why a SIGTERM came, the end it writes, and a restart that goes on."""
from __future__ import annotations

import datetime as dt

import mlflow
import pytest

from ade_mlflow_plugin.backend.replay import replay
from ade_mlflow_plugin.job import contract, relay, run_state

STARTED = dt.datetime(2026, 12, 6, 4, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("host,ends_it", [("algo-1", True), ("algo-2", False)])
def test_only_the_first_host_ends_the_run(sqlite_tracking, host, ends_it):
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    resource = {"current_host": host, "hosts": ["algo-1", "algo-2"]}
    run_state.end_run({contract.ENV_RUN_ID: run_id, contract.ENV_TRACKING_URI: sqlite_tracking}, "FINISHED",
                      resource)
    assert mlflow.get_run(run_id).info.status == ("FINISHED" if ends_it else "RUNNING")


@pytest.mark.parametrize("description,reason", [
    ({"TrainingJobStatus": "Stopping", "SecondaryStatus": "Stopping"}, "stopped"),
    ({"TrainingJobStatus": "InProgress", "SecondaryStatus": "MaxRuntimeExceeded"}, "max_runtime"),
    ({"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training", "TrainingStartTime": STARTED,
      "StoppingCondition": {"MaxRuntimeInSeconds": 3600}}, "max_runtime"),  # 3590 s in: SageMaker's stop
    ({"TrainingJobStatus": "InProgress", "SecondaryStatus": "Interrupted"}, "spot_interrupted"),
    ({"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training", "EnableManagedSpotTraining": True,
      "TrainingStartTime": STARTED, "StoppingCondition": {"MaxRuntimeInSeconds": 3600}}, "spot_interrupted"),
    ({"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training", "TrainingStartTime": STARTED,
      "StoppingCondition": {"MaxRuntimeInSeconds": 86400}}, "stopped"),  # nothing says why: a plain stop
])
def test_a_sigterm_gets_the_reason_the_job_description_gives(description, reason):
    got, detail = run_state.reason_from_description(description, now=STARTED + dt.timedelta(seconds=3590))
    assert got == reason and detail.startswith(f"{reason}: ")


def test_the_local_runner_says_why_before_it_signals(tmp_path):
    paths = contract.ContainerPaths(tmp_path)
    paths.stop_reason_file.write_text("max_runtime\nmax_runtime: the job reached MaxRuntimeInSeconds=5\n")
    env = {contract.ENV_BASE_DIR: str(tmp_path), contract.ENV_JOB_NAME: "j"}
    assert run_state.sigterm_reason(paths, env, None) == (
        "max_runtime", "max_runtime: the job reached MaxRuntimeInSeconds=5")
    paths.stop_reason_file.write_text("nonsense\n")  # an unknown word is not trusted
    assert run_state.sigterm_reason(paths, env, None)[0] == "stopped"


def test_in_sagemaker_the_job_asks_describe_and_a_refusal_still_reads_stopped(tmp_path, monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing answers there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env = {contract.ENV_JOB_NAME: "ade-job-1"}  # a real container: no SAGEMAKER_BASE_DIR
    reason, detail = run_state.sigterm_reason(contract.ContainerPaths(tmp_path), env, "us-east-1")
    assert reason == "stopped" and "sagemaker:DescribeTrainingJob" in detail


def _moto_job(name: str, **state) -> None:
    """Set a moto training job's state (moto keeps every job Completed)."""
    from moto.sagemaker import models

    for account in models.sagemaker_backends.values():
        job = account["us-east-1"].training_jobs.get(name)
        if job is not None:
            for key, value in state.items():
                setattr(job, key, value)
            return
    raise AssertionError(f"moto did not keep {name}")


def test_in_sagemaker_the_job_asks_describe_for_the_reason(aws, tmp_path):
    import boto3

    from ade_mlflow_plugin.backend import spec
    from ade_mlflow_plugin.config import CloudTrainingConfig

    config = CloudTrainingConfig.from_backend_config({"role_arn": "arn:aws:iam::123456789012:role/ade",
                                                      "bucket": "ade-bucket", "instance_type": "ml.g5.xlarge",
                                                      "use_spot": True})
    inputs = spec.JobInputs(job_name="spot-job", entry_point="main", image_uri="img", code_uri="s3://b/code.tgz",
                            output_uri="s3://b/out", checkpoint_uri="s3://b/ckpt",
                            run=spec.RunInfo("r", "0", "http://127.0.0.1:1"))
    boto3.client("sagemaker", region_name="us-east-1").create_training_job(
        **spec.build_training_job_request(config, inputs, "us-east-1"))
    env, paths = {contract.ENV_JOB_NAME: "spot-job"}, contract.ContainerPaths(tmp_path)
    _moto_job("spot-job", training_job_status="InProgress")  # a spot job nobody stopped: the reclaim
    assert run_state.sigterm_reason(paths, env, "us-east-1")[0] == "spot_interrupted"
    _moto_job("spot-job", training_job_status="Stopping")  # StopTrainingJob
    assert run_state.sigterm_reason(paths, env, "us-east-1")[0] == "stopped"


def _killed_run(client: mlflow.MlflowClient) -> str:
    run_id = client.create_run("0").info.run_id
    client.set_tag(run_id, contract.STOP_REASON_TAG, "spot_interrupted")
    client.set_tag(run_id, contract.STOP_DETAIL_TAG, "spot_interrupted: reclaimed")
    client.set_terminated(run_id, "KILLED")
    return run_id


def test_a_restart_reopens_the_run_without_the_earlier_stop(sqlite_tracking, capsys):
    client = mlflow.MlflowClient()
    run_id = _killed_run(client)
    env = {contract.ENV_RUN_ID: run_id, contract.ENV_TRACKING_URI: sqlite_tracking}
    run_state.reopen_run(env, {"hosts": ["algo-1"]})
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags[run_state.ATTEMPT_TAG] == "2"
    assert not set(run_state.STOP_TAGS) & set(run.data.tags)
    assert "ended KILLED (spot_interrupted) in an earlier attempt" in capsys.readouterr().out
    run_state.reopen_run(env, {"hosts": ["algo-1"]})  # already RUNNING: the first attempt's case
    assert client.get_run(run_id).data.tags[run_state.ATTEMPT_TAG] == "2"


def test_a_restart_without_the_server_reopens_the_run_in_the_relay(sqlite_tracking, tmp_path):
    from tests.conftest import free_port

    client = mlflow.MlflowClient()
    run_id = _killed_run(client)  # what a replay of the first attempt left
    env = {contract.ENV_RUN_ID: run_id, contract.ENV_TRACKING_URI: f"http://127.0.0.1:{free_port()}",
           contract.ENV_OUTPUT_DATA_DIR: str(tmp_path)}
    job_relay = relay.Relay(tmp_path)
    job_relay.append(relay.TAGS, tags={contract.STOP_REASON_TAG: "spot_interrupted"})
    job_relay.append(relay.END, status="KILLED")
    run_state.reopen_run(env, {"hosts": ["algo-1"]})  # attempt 2, server down
    run_state.end_run(env, "FINISHED", {"hosts": ["algo-1"]})
    summary = replay(client, run_id, job_relay.dir, end_status="FINISHED")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and summary.status == "FINISHED"
    assert not set(run_state.STOP_TAGS) & set(run.data.tags)
