"""The CloudWatch log tailer is one of the follower's guarded observers: a refused CloudWatch Logs call is
one warning, the job is still followed to its end, and the run ends with the job's real status."""
from __future__ import annotations

import io
import time
import uuid

import boto3
import mlflow
import pytest
from botocore.exceptions import ClientError

from ade_mlflow_plugin.backend.aws import AwsClients
from ade_mlflow_plugin.backend.logs import LOG_GROUP, LogTailer
from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend
from ade_mlflow_plugin.errors import AwsError
from tests.backend.conftest import ROLE

BUCKET = "ade-logs-denied"


class RefusingLogs:
    """A clients factory whose CloudWatch Logs client is refused every call (as with an IAM policy
    without logs:*); after ``finish_after`` refusals the moto job completes, so the follower has
    polled the running job several times before it ends."""

    def __init__(self, moto_jobs, finish_after: int = 3) -> None:
        self.moto_jobs = moto_jobs
        self.finish_after = finish_after
        self.calls: list[str] = []

    def __call__(self, **kwargs) -> AwsClients:
        clients = AwsClients(**kwargs)
        clients.logs.meta.events.register("before-call.cloudwatch-logs", self._refuse)
        return clients

    def _refuse(self, model, **_kwargs) -> None:
        self.calls.append(model.name)
        if len(self.calls) == self.finish_after:
            self.moto_jobs.finish(self.moto_jobs.wait_for_job(), "Completed")
        raise ClientError({"Error": {"Code": "AccessDeniedException",
                                     "Message": f"User: arn:aws:iam::123456789012:user/ci is not authorized "
                                                f"to perform: logs:{model.name} (request {len(self.calls)})"}},
                          model.name)


def test_refused_cloudwatch_logs_is_one_warning_and_the_followed_run_finishes(project, data_dir, moto_jobs,
                                                                              sqlite_tracking):
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    config = {"role_arn": ROLE, "bucket": BUCKET, "region": "us-east-1", "poll_interval_s": 1,
              "SYNCHRONOUS": False}  # what `mlflow run` passes: the backend follows the job itself
    experiment = mlflow.get_experiment_by_name("Default").experiment_id
    console = io.StringIO()
    factory = RefusingLogs(moto_jobs)
    submitted = AdeSageMakerBackend(clients_factory=factory, console=console).run(
        str(project), "main", {"data": str(data_dir)}, None, config, sqlite_tracking, experiment)

    text = console.getvalue()
    assert mlflow.get_run(submitted.run_id).info.status == "FINISHED", text
    assert submitted.get_status() == "FINISHED" and f"{submitted.job_name} completed" in text
    # Polled while running (3 refusals), then the final drain was tried too: the follow went on.
    assert len(factory.calls) >= 4 and set(factory.calls) == {"DescribeLogStreams"}
    warnings = [line for line in text.splitlines() if line.startswith("WARNING: CloudWatch logs:")]
    assert len(warnings) == 1, text  # once, although each refusal names another request
    assert "AccessDeniedException" in warnings[0] and "logs:DescribeLogStreams and logs:GetLogEvents" in warnings[0]
    assert "Traceback" not in text


def test_refused_logs_command_is_one_line_naming_the_permission(aws):
    logs = boto3.client("logs", region_name="us-east-1")
    logs.meta.events.register("before-call.cloudwatch-logs", RefusingLogs(None, finish_after=0)._refuse)
    with pytest.raises(AwsError) as caught:
        LogTailer(logs, "ade-some-job", console=io.StringIO()).poll()
    message = caught.value.message
    assert message.startswith("DescribeLogStreams failed: AccessDeniedException") and "\n" not in message
    assert "grant logs:DescribeLogStreams and logs:GetLogEvents" in message


def test_poll_prints_only_new_lines_of_every_host(aws):
    logs = boto3.client("logs", region_name="us-east-1")
    job = f"ade-tail-{uuid.uuid4().hex[:8]}"
    try:
        logs.create_log_group(logGroupName=LOG_GROUP)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    for host in ("algo-1-1", "algo-2-1"):
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=f"{job}/{host}")

    def put(host: str, lines: list[str], t0: int) -> None:
        logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=f"{job}/{host}",
                            logEvents=[{"timestamp": t0 + i, "message": m} for i, m in enumerate(lines)])

    now = int(time.time() * 1000)  # CloudWatch (and moto) drop events older than 14 days
    put("algo-1-1", ["a1", "a2"], now)
    put("algo-2-1", ["b1"], now)
    console = io.StringIO()
    tailer = LogTailer(logs, job, console=console)
    assert tailer.poll() == 3
    put("algo-1-1", ["a3"], now + 10)
    assert tailer.poll() == 1 and tailer.poll() == 0
    assert console.getvalue().splitlines() == ["[algo-1-1] a1", "[algo-1-1] a2", "[algo-2-1] b1", "[algo-1-1] a3"]
