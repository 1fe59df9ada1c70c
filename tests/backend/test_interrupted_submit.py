"""Ctrl-C while a SageMaker job is being created: CreateTrainingJob's round trip may reach SageMaker though its
answer never comes back. The backend asks SageMaker whether the job exists; if it does, the job is stopped and
followed to Stopped, its run tagged (status and reconcile find it) and KILLED, and the Ctrl-C goes on. The
SageMaker state walk is botocore's Stubber (moto marks a job Completed at creation); S3 and MLflow are real.
The Ctrl-C is raised from botocore's own event hooks, where a SIGINT lands between request and answer."""
from __future__ import annotations

import io
import uuid
from datetime import datetime, timezone

import boto3
import mlflow
import pytest
from botocore.stub import Stubber

from ade_mlflow_plugin.backend.aws import AwsClients
from ade_mlflow_plugin.backend.project_backend import INTERRUPTED_BEFORE_JOB, AdeSageMakerBackend
from tests.backend.conftest import ROLE
from tests.conftest import FIXTURES

T0 = datetime(2026, 12, 6, tzinfo=timezone.utc)


def _describe(job: str, status: str, secondary: str) -> dict:
    return {"TrainingJobName": job, "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{job}",
            "TrainingJobStatus": status, "SecondaryStatus": secondary,
            "AlgorithmSpecification": {"TrainingImage": "img", "TrainingInputMode": "File"},
            "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600}, "CreationTime": T0,
            "ModelArtifacts": {"S3ModelArtifacts": ""}}


def _interrupt(**_: object) -> None:
    raise KeyboardInterrupt


class _Submitter:
    """The backend with a Stubber-wrapped SageMaker client; `script(job_name)` queues its answers."""

    def __init__(self, script, hook: str) -> None:
        self.sagemaker = boto3.client("sagemaker", region_name="us-east-1")
        self.stubber = Stubber(self.sagemaker)
        self.script, self.hook = script, hook
        self.console = io.StringIO()

    def factory(self, region: str | None = None, profile: str | None = None) -> AwsClients:
        clients = AwsClients(region=region, profile=profile)
        clients.set_client("sagemaker", self.sagemaker)
        return clients

    def run(self, bucket: str) -> None:
        backend = AdeSageMakerBackend(clients_factory=self.factory, console=self.console)
        original = backend._submit

        def submit(config, clients, tarball, entry_point, resolved, job_name, *rest):  # noqa: ANN001, ANN202
            self.script(self.stubber, job_name)  # the job name is made just before: script its answers now
            self.stubber.activate()
            self.sagemaker.meta.events.register(self.hook, _interrupt)
            return original(config, clients, tarball, entry_point, resolved, job_name, *rest)

        backend._submit = submit
        make_follower = backend._follower

        def follower(*args):  # noqa: ANN002, ANN202 - polls and the final log drain without real sleeps
            made = make_follower(*args)
            made.sleep = lambda seconds: None
            return made

        backend._follower = follower
        config = {"role_arn": ROLE, "bucket": bucket, "region": "us-east-1", "instance_type": "ml.g5.2xlarge",
                  "poll_interval_s": 1, "wait": False, "SYNCHRONOUS": False}
        self.experiment = mlflow.create_experiment(f"interrupted-{uuid.uuid4().hex[:8]}")
        backend.run(str(FIXTURES / "backend_project"), "main", {"data": str(FIXTURES / "backend_project_data")},
                    None, config, mlflow.get_tracking_uri(), self.experiment)


def _only_run(submitter: _Submitter):
    [run] = mlflow.search_runs([submitter.experiment], output_format="list")
    return run


def _created(stubber: Stubber, job: str) -> None:
    """CreateTrainingJob reached SageMaker, and the backend's "does it exist?" finds the job starting."""
    stubber.add_response("create_training_job", {"TrainingJobArn": f"arn:aws:sagemaker:::training-job/{job}"})
    stubber.add_response("describe_training_job", _describe(job, "InProgress", "Starting"), {"TrainingJobName": job})


def test_ctrl_c_after_create_training_job_reached_sagemaker_stops_the_job(tracking_uri, s3_bucket):
    names = []

    def created_then_stopped(stubber: Stubber, job: str) -> None:
        names.append(job)
        _created(stubber, job)  # does it exist? yes: its answer was lost, not the call
        stubber.add_response("stop_training_job", {}, {"TrainingJobName": job})
        stubber.add_response("describe_training_job", _describe(job, "Stopping", "Stopping"),
                             {"TrainingJobName": job})  # the run's tags
        stubber.add_response("describe_training_job", _describe(job, "Stopped", "Stopped"),
                             {"TrainingJobName": job})  # followed to its end

    submitter = _Submitter(created_then_stopped, "after-call.sagemaker.CreateTrainingJob")
    with pytest.raises(KeyboardInterrupt):
        submitter.run(s3_bucket)
    submitter.stubber.assert_no_pending_responses()  # exactly one StopTrainingJob, then followed to Stopped
    run = _only_run(submitter)
    assert run.info.status == "KILLED"
    assert run.data.tags["sagemaker.job_name"] == names[0]  # status, logs and reconcile find the job
    assert run.data.tags["sagemaker.status"] == "Stopped"
    assert f"Interrupted: stopping {names[0]}" in submitter.console.getvalue()


@pytest.mark.parametrize("code,warned", [("ValidationException", False), ("AccessDeniedException", True)])
def test_ctrl_c_before_create_training_job_left_a_job_stops_nothing(tracking_uri, s3_bucket, code, warned):
    names = []

    def never_created(stubber: Stubber, job: str) -> None:
        names.append(job)
        stubber.add_client_error("describe_training_job", code, "Requested resource not found.",
                                 expected_params={"TrainingJobName": job})

    # Before the request is built: SageMaker never heard of the job (no StopTrainingJob is scripted).
    submitter = _Submitter(never_created, "provide-client-params.sagemaker.CreateTrainingJob")
    with pytest.raises(KeyboardInterrupt):
        submitter.run(s3_bucket)
    submitter.stubber.assert_no_pending_responses()
    run = _only_run(submitter)
    assert run.info.status == "KILLED" and "sagemaker.job_name" not in run.data.tags
    assert run.data.tags["ade.submit_error"] == INTERRUPTED_BEFORE_JOB
    text = submitter.console.getvalue()
    # SageMaker could not say: one line names the job and how to stop it, should it exist after all.
    assert (f"aws sagemaker stop-training-job --training-job-name {names[0]}" in text) is warned


def test_a_refused_stop_leaves_the_run_running_with_the_job_named(tracking_uri, s3_bucket):
    names = []

    def created_stop_refused(stubber: Stubber, job: str) -> None:
        names.append(job)
        _created(stubber, job)
        stubber.add_client_error("stop_training_job", "AccessDeniedException", "not allowed to sagemaker:Stop...",
                                 expected_params={"TrainingJobName": job})
        stubber.add_response("describe_training_job", _describe(job, "InProgress", "Training"),
                             {"TrainingJobName": job})  # the run's tags

    submitter = _Submitter(created_stop_refused, "after-call.sagemaker.CreateTrainingJob")
    with pytest.raises(KeyboardInterrupt):
        submitter.run(s3_bucket)
    submitter.stubber.assert_no_pending_responses()
    run = _only_run(submitter)
    # The job runs on: its run says so, tagged, for `ade-mlflow status` / reconcile to end when the job ends.
    assert run.info.status == "RUNNING" and run.data.tags["sagemaker.job_name"] == names[0]
    text = submitter.console.getvalue()
    assert "StopTrainingJob" in text and f"stop-training-job --training-job-name {names[0]}" in text
    assert f"ade-mlflow status {run.info.run_id}" in text
