"""Throttling is retried with backoff by the clients AwsClients makes; other errors become one line."""
from __future__ import annotations

import http.server
import threading

import boto3
import pytest
import requests

from ade_mlflow_plugin.backend.aws import AwsClients
from ade_mlflow_plugin.backend.submitted_run import SageMakerJob
from ade_mlflow_plugin.errors import AwsError


class _ThrottlingProxy(http.server.BaseHTTPRequestHandler):
    """Answers the first N DescribeTrainingJob calls with ThrottlingException, forwards the rest to moto."""

    upstream = ""
    throttle_left = 0
    throttled = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        cls = type(self)
        if "DescribeTrainingJob" in self.headers.get("X-Amz-Target", "") and cls.throttle_left > 0:
            cls.throttle_left -= 1
            cls.throttled += 1
            payload = b'{"__type": "ThrottlingException", "message": "Rate exceeded"}'
            self.send_response(400)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}}
        answer = requests.post(cls.upstream + self.path, data=body, headers=headers, timeout=30)
        self.send_response(answer.status_code)
        for key in ("Content-Type", "x-amzn-RequestId"):
            if key in answer.headers:
                self.send_header(key, answer.headers[key])
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def throttling_endpoint(aws):
    handler = type("Proxy", (_ThrottlingProxy,), {"upstream": aws, "throttle_left": 2, "throttled": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()


def test_describe_is_retried_through_throttling(throttling_endpoint, monkeypatch):
    endpoint, handler = throttling_endpoint
    boto3.client("sagemaker").create_training_job(
        TrainingJobName="throttled-job", RoleArn="arn:aws:iam::123456789012:role/r",
        AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://b/o"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        StoppingCondition={"MaxRuntimeInSeconds": 60})
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    job = SageMakerJob(AwsClients(region="us-east-1").sagemaker, "throttled-job")
    assert job.describe()["TrainingJobName"] == "throttled-job"
    assert handler.throttled == 2


def test_missing_job_is_one_line_with_the_fix(aws):
    job = SageMakerJob(AwsClients(region="us-east-1").sagemaker, "no-such-job")
    with pytest.raises(AwsError) as caught:
        job.describe()
    message = caught.value.message
    assert "DescribeTrainingJob failed" in message and "\n" not in message


def test_bare_s3_403_names_the_likely_fix():
    from botocore.exceptions import ClientError

    from ade_mlflow_plugin.errors import aws_error

    error = ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")
    message = aws_error("Uploading the project to S3", error).message
    assert "403: Forbidden" in message and "s3:GetObject/PutObject" in message and "\n" not in message
