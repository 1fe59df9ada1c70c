"""State walks through botocore's Stubber (moto's jobs never change state): status table, cancel, spot."""
from __future__ import annotations

import io
from datetime import datetime, timezone

import boto3
import mlflow
import pytest
from botocore.stub import Stubber

from ade_mlflow_plugin.backend.submitted_run import AdeSubmittedRun, JobFollower, SageMakerJob

JOB = "ade-walk-20261129-000000-abcd"
T0 = datetime(2026, 11, 29, tzinfo=timezone.utc)


def _describe(status: str, secondary: str, transitions: list[tuple[str, str]] = (), **extra) -> dict:
    answer = {
        "TrainingJobName": JOB,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{JOB}",
        "TrainingJobStatus": status, "SecondaryStatus": secondary,
        "AlgorithmSpecification": {"TrainingImage": "img", "TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": T0, "ModelArtifacts": {"S3ModelArtifacts": ""},
        "SecondaryStatusTransitions": [
            {"Status": s, "StartTime": T0, "StatusMessage": m} for s, m in transitions
        ],
    }
    answer.update(extra)
    return answer


def _walk(answers: list[dict], stop: bool = False):
    client = boto3.client("sagemaker", region_name="us-east-1")
    stubber = Stubber(client)
    for i, answer in enumerate(answers):
        if stop and i == 1:
            stubber.add_response("stop_training_job", {}, {"TrainingJobName": JOB})
        stubber.add_response("describe_training_job", answer, {"TrainingJobName": JOB})
    stubber.activate()
    return client, stubber


def _follower(client, run_id: str, console: io.StringIO) -> JobFollower:
    return JobFollower(job=SageMakerJob(client, JOB), run_id=run_id, mlflow_client=mlflow.MlflowClient(),
                       console=console, poll_interval_s=1, sleep=lambda s: None)


@pytest.mark.parametrize("final,reason,run_status", [
    ("Completed", None, "FINISHED"),
    ("Failed", "AlgorithmError: ExitCode 1", "FAILED"),
    ("Stopped", None, "KILLED"),
])
def test_status_table_drives_the_run(sqlite_tracking, final, reason, run_status):
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    extra = {"FailureReason": reason} if reason else {}
    answers = [
        _describe("InProgress", "Starting", [("Starting", "Preparing the instances for training")]),
        _describe("InProgress", "Training", [("Starting", ""), ("Downloading", "Downloading input data"),
                                              ("Training", "Training image download completed")]),
        _describe(final, final if final != "Completed" else "Completed",
                  [("Starting", ""), ("Downloading", ""), ("Training", ""), ("Uploading", "Uploading output")],
                  **extra),
    ]
    client, stubber = _walk(answers)
    console = io.StringIO()
    submitted = AdeSubmittedRun(run_id, JOB, _follower(client, run_id, console))
    assert submitted.wait() is (final == "Completed")
    stubber.assert_no_pending_responses()
    run = mlflow.get_run(run_id)
    assert run.info.status == run_status and submitted.get_status() == run_status
    text = console.getvalue()
    for status in ("Starting", "Downloading", "Training", "Uploading"):
        assert f"{JOB}: {status}" in text
    assert text.count(f"{JOB}: Downloading") == 1  # each transition printed once
    if reason:
        assert run.data.tags["sagemaker.failure_reason"] == reason and reason in text


def test_spot_interruption_then_resume_is_reported(sqlite_tracking):
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    answers = [
        _describe("InProgress", "Training", [("Training", "")]),
        _describe("InProgress", "Interrupted", [("Training", ""), ("Interrupted", "Spot capacity reclaimed")]),
        _describe("InProgress", "Training", [("Training", ""), ("Interrupted", ""),
                                              ("Training", "Resuming from checkpoint")]),
        _describe("Completed", "Completed", [("Training", ""), ("Interrupted", ""), ("Training", ""),
                                             ("Completed", "")]),
    ]
    client, stubber = _walk(answers)
    console = io.StringIO()
    assert AdeSubmittedRun(run_id, JOB, _follower(client, run_id, console)).wait()
    assert "Interrupted - Spot capacity reclaimed" in console.getvalue()
    assert "Resuming from checkpoint" in console.getvalue()
    assert mlflow.get_run(run_id).info.status == "FINISHED"


def test_cancel_stops_the_job_and_kills_the_run(sqlite_tracking):
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    answers = [_describe("InProgress", "Training"), _describe("Stopping", "Stopping"),
               _describe("Stopped", "Stopped")]
    client, stubber = _walk(answers, stop=True)
    submitted = AdeSubmittedRun(run_id, JOB, _follower(client, run_id, io.StringIO()))
    assert submitted.get_status() == "RUNNING"
    submitted.cancel()
    stubber.assert_no_pending_responses()
    assert mlflow.get_run(run_id).info.status == "KILLED" and submitted.get_status() == "KILLED"


def test_ctrl_c_while_following_stops_the_job(sqlite_tracking):
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    answers = [_describe("InProgress", "Training"), _describe("Stopped", "Stopped")]
    client, stubber = _walk(answers, stop=True)
    follower = _follower(client, run_id, io.StringIO())

    def interrupt(_seconds):
        raise KeyboardInterrupt

    follower.sleep = interrupt
    submitted = AdeSubmittedRun(run_id, JOB, follower)
    assert submitted.wait() is False
    stubber.assert_no_pending_responses()
    assert mlflow.get_run(run_id).info.status == "KILLED"
