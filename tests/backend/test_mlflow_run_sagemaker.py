"""`mlflow run -b ade-sagemaker` against the moto server: submit, follow, mirror, exit code = job outcome."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import boto3
import mlflow
import pytest

from ade_mlflow_plugin.job import contract

from tests.backend.conftest import write_config

# A whole job, a subprocess `mlflow run` or a training entry: not in `make test-fast`.
pytestmark = pytest.mark.slow

LOG_GROUP = "/aws/sagemaker/TrainingJobs"


def _start(project, data_dir, tmp_path, tracking, **overrides):
    boto3.client("s3").create_bucket(Bucket="ade-backend-test")
    config = write_config(tmp_path, **overrides)
    cmd = [sys.executable, "-m", "mlflow", "run", str(project), "-b", "ade-sagemaker",
           "--backend-config", str(config), "-P", f"data={data_dir}", "-P", "lr=0.5"]
    scratch = tmp_path / "tmp"  # the command's own temp dir, to see what it leaves behind
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "TMPDIR": str(scratch)}
    return subprocess.Popen(cmd, env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _put_logs(job_name: str, lines: list[str]) -> None:
    logs = boto3.client("logs")
    try:
        logs.create_log_group(logGroupName=LOG_GROUP)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    stream = f"{job_name}/algo-1-1700000000"
    try:
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream,
                        logEvents=[{"timestamp": now + i, "message": line} for i, line in enumerate(lines)])


@pytest.fixture
def tracking(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_completed_job_finishes_the_run_with_tags_and_logs(project, data_dir, tmp_path, moto_jobs, tracking):
    proc = _start(project, data_dir, tmp_path, tracking)
    job = moto_jobs.wait_for_job()
    _put_logs(job.training_job_name, ["epoch 1 loss 0.9", "epoch 2 loss 0.5"])
    time.sleep(2)
    moto_jobs.finish(job, "Completed")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "[algo-1-1700000000] epoch 2 loss 0.5" in out
    assert "which a SageMaker job cannot reach" in err  # a sqlite store is local to this machine
    assert "Worst-case cost:" in err

    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=job.training_job_name)
    hp = {k: json.loads(v) for k, v in described["HyperParameters"].items()}
    assert hp[contract.HP_ENTRY_POINT] == "main" and json.loads(hp[contract.HP_PARAMS])["lr"] == "0.5"
    code_uri = hp[contract.HP_SUBMIT_DIRECTORY]
    bucket, key = code_uri[5:].split("/", 1)
    assert boto3.client("s3").head_object(Bucket=bucket, Key=key)["ContentLength"] > 0
    data_channel = described["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=data_channel[5:].split("/", 1)[1])
    assert {o["Key"].rsplit("/", 1)[-1] for o in listed["Contents"]} >= {"a.txt", "b.txt"}

    mlflow.set_tracking_uri(tracking)
    run = mlflow.get_run(hp[contract.HP_RUN_ID])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["sagemaker.job_name"] == job.training_job_name
    assert tags["sagemaker.job_arn"].startswith("arn:aws:sagemaker:us-east-1:")
    assert tags["sagemaker.region"] == "us-east-1" and tags["sagemaker.instance_type"] == "ml.g5.2xlarge"
    assert tags["sagemaker.spot"] == "false" and "console.aws.amazon.com" in tags["sagemaker.console_url"]
    assert tags["mlflow.project.backend"] == "ade-sagemaker"
    assert tags["ade.checkpoint_uri"] == described["CheckpointConfig"]["S3Uri"]  # the checkpoints listing's home
    assert run.data.params["lr"] == "0.5"
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "logs")]
    assert artifacts, "the CloudWatch log was not mirrored into logs/"
    assert not list((tmp_path / "tmp").glob("ade-logs-*")), "the local copy of the job's log outlived the command"
    mlflow.set_tracking_uri(None)


def test_failed_job_fails_the_run_and_the_command(project, data_dir, tmp_path, moto_jobs, tracking):
    proc = _start(project, data_dir, tmp_path, tracking, use_spot=True)
    job = moto_jobs.wait_for_job()
    time.sleep(1)
    moto_jobs.finish(job, "Failed", "AlgorithmError: CUDA out of memory")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    assert "CUDA out of memory" in err and "Traceback" not in err
    mlflow.set_tracking_uri(tracking)
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["sagemaker.failure_reason"] == "AlgorithmError: CUDA out of memory"
    assert run.data.tags["sagemaker.spot"] == "true"
    mlflow.set_tracking_uri(None)


def test_zipped_project_is_fetched_by_mlflow_and_submitted(project, data_dir, tmp_path, aws, sqlite_tracking):
    """A non-directory project URI goes through MLflow's public fetch_and_validate_project."""
    import io
    import shutil

    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend
    from ade_mlflow_plugin.errors import ConfigError
    from tests.backend.conftest import ROLE

    archive = shutil.make_archive(str(tmp_path / "tiny-backend"), "zip", project)
    boto3.client("s3").create_bucket(Bucket="ade-zip-project")
    config = {"role_arn": ROLE, "bucket": "ade-zip-project", "region": "us-east-1", "wait": False,
              "SYNCHRONOUS": False}
    experiment = mlflow.get_experiment_by_name("Default").experiment_id
    backend = AdeSageMakerBackend(console=io.StringIO())
    submitted = backend.run(archive, "main", {"data": str(data_dir)}, None, dict(config), sqlite_tracking,
                            experiment)
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=submitted.job_name)
    assert json.loads(described["HyperParameters"][contract.HP_ENTRY_POINT]) == "main"
    with pytest.raises(ConfigError) as caught:  # MLflow's own check of required params, in one line
        backend.run(archive, "main", {}, None, dict(config), sqlite_tracking, experiment)
    message = caught.value.message
    assert message.startswith(f"fetching project {archive} failed:") and "'data'" in message and "\n" not in message
