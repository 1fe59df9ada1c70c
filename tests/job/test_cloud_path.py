"""Cloud path end to end: submit to moto, then run DescribeTrainingJob's answer (and nothing else) here."""
from __future__ import annotations

import io
import tarfile

import boto3
import mlflow
import pytest

from ade_mlflow_plugin.backend.local import LocalJob
from tests.conftest import submit_to_moto

# A whole job, a subprocess `mlflow run` or a training entry: not in `make test-fast`.
pytestmark = pytest.mark.slow


def test_described_job_runs_from_moto_s3_and_uploads_its_model(aws, sqlite_tracking, tmp_path):
    submitted, described = submit_to_moto("ade-cloud-path", sqlite_tracking, {"epochs": "2"})

    job = LocalJob(described, job_root=tmp_path / "job", stream=None)
    job.start()
    final = job.wait(timeout=240)
    assert final["TrainingJobStatus"] == "Completed", (job.log_path.read_text())[-2000:]
    assert "trained on 3 lines" in job.log_path.read_text()  # the data came from the moto channel
    model_uri = final["ModelArtifacts"]["S3ModelArtifacts"]
    assert model_uri == f"s3://ade-cloud-path/ade-mlflow/output/{submitted.job_name}/output/model.tar.gz"
    body = boto3.client("s3").get_object(Bucket="ade-cloud-path", Key=model_uri.split("/", 3)[3])["Body"].read()
    assert tarfile.open(fileobj=io.BytesIO(body)).extractfile("weights.txt").read().startswith(b"lr=0.1")
    checkpoint = boto3.client("s3").get_object(
        Bucket="ade-cloud-path", Key=f"ade-mlflow/checkpoints/{submitted.job_name}/last.txt")
    assert checkpoint["Body"].read() == b"epoch=2\n"
    run = mlflow.get_run(submitted.run_id)
    assert run.info.status == "FINISHED" and run.data.params["data_lines"] == "3"
