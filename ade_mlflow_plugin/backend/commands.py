"""`ade-mlflow status` and `ade-mlflow logs`: attach later to a job by MLflow run id or job name."""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

# aws.py, submitted_run.py and errors.py import mlflow and boto3 (~2 s together): they are imported
# inside the commands, so that `--help` and usage errors of status/logs (and cost) stay fast.

_RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Target:
    """A job found from a run id or a job name."""

    job_name: str
    region: str | None
    mode: str
    run_id: str | None = None
    local_log: Path | None = None


def resolve_target(ref: str, region: str | None) -> Target:
    """A 32-hex MLflow run id (looked up on the tracking server) or a SageMaker job name."""
    if not _RUN_ID.fullmatch(ref):
        return Target(ref, region, "sagemaker")
    import mlflow

    from ade_mlflow_plugin.errors import ConfigError, is_missing, mlflow_error

    try:
        tags = mlflow.MlflowClient().get_run(ref).data.tags
    except mlflow.exceptions.MlflowException as exc:
        if not is_missing(exc):  # the server, not the id: say so instead of "not found"
            raise mlflow_error(f"looking up run '{ref}' on {mlflow.get_tracking_uri()}", exc) from exc
        raise ConfigError(f"run '{ref}' not found on {mlflow.get_tracking_uri()}: check the run id and "
                          "MLFLOW_TRACKING_URI") from exc
    if "sagemaker.job_name" not in tags:
        raise ConfigError(f"run '{ref}' was not submitted with the ade-sagemaker backend (no sagemaker.job_name tag)")
    log = tags.get("ade.local_log")
    return Target(tags["sagemaker.job_name"], region or tags.get("sagemaker.region"),
                  tags.get("sagemaker.mode", "sagemaker"), ref, Path(log) if log else None)


def _local_status(target: Target) -> dict[str, Any]:
    import mlflow

    run = mlflow.MlflowClient().get_run(target.run_id)
    return {"TrainingJobName": target.job_name, "RunStatus": run.info.status, "Log": str(target.local_log)}


@click.command("status")
@click.argument("ref")
@click.option("--region", default=None, help="AWS region (default: the run's sagemaker.region tag).")
def status_command(ref: str, region: str | None) -> None:
    """Show a job's status by MLflow RUN_ID or SageMaker JOB name."""
    from ade_mlflow_plugin.backend.aws import AwsClients
    from ade_mlflow_plugin.backend.submitted_run import SageMakerJob

    target = resolve_target(ref, region)
    if target.mode == "local":
        for key, value in _local_status(target).items():
            click.echo(f"{key}: {value}")
        return
    description = SageMakerJob(AwsClients(region=target.region).sagemaker, target.job_name).describe()
    status = description["TrainingJobStatus"]
    click.echo(f"job:       {target.job_name}")
    click.echo(f"status:    {status} ({description.get('SecondaryStatus', '')}) -> MLflow "
               f"{_run_status(status)}")
    for key, label in (("FailureReason", "failure"), ("TrainingTimeInSeconds", "training s"),
                       ("BillableTimeInSeconds", "billable s")):
        if description.get(key) is not None:
            click.echo(f"{label + ':':<10} {description[key]}")
    artifacts = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if artifacts:
        click.echo(f"model:     {artifacts}")
    if status == "Failed":
        sys.exit(1)


def _run_status(status: str) -> str:
    from mlflow.entities import RunStatus

    from ade_mlflow_plugin.backend.submitted_run import RUN_STATUS

    return RunStatus.to_string(RUN_STATUS[status])


@click.command("logs")
@click.argument("ref")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("--region", default=None, help="AWS region (default: the run's sagemaker.region tag).")
@click.option("--poll-interval", default=5.0, show_default=True, help="Seconds between polls with --follow.")
def logs_command(ref: str, follow: bool, region: str | None, poll_interval: float) -> None:
    """Print a job's logs (all hosts) by MLflow RUN_ID or SageMaker JOB name."""
    target = resolve_target(ref, region)
    if target.mode == "local":
        _local_logs(target, follow, poll_interval)
        return
    from ade_mlflow_plugin.backend.aws import AwsClients
    from ade_mlflow_plugin.backend.logs import LogTailer
    from ade_mlflow_plugin.backend.submitted_run import TERMINAL, SageMakerJob

    clients = AwsClients(region=target.region)
    tailer = LogTailer(clients.logs, target.job_name, console=sys.stdout)
    job = SageMakerJob(clients.sagemaker, target.job_name)
    tailer.poll()
    while follow and job.describe()["TrainingJobStatus"] not in TERMINAL:
        time.sleep(poll_interval)
        tailer.poll()
    if follow:
        tailer.drain()


def _local_logs(target: Target, follow: bool, poll_interval: float) -> None:
    if target.local_log is None or not target.local_log.is_file():
        from ade_mlflow_plugin.errors import ConfigError

        raise ConfigError(f"the local log of {target.job_name} is not on this machine ({target.local_log})")
    with open(target.local_log, encoding="utf-8", errors="replace") as handle:
        while True:
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            if not follow or _local_status(target)["RunStatus"] not in {"RUNNING", "SCHEDULED"}:
                sys.stdout.write(handle.read())
                return
            time.sleep(poll_interval)
