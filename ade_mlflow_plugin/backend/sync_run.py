"""`ade-mlflow sync-run RUN_ID|JOB`: replay what a job kept in its relay (no tracking server) into its run.

Idempotent (backend/replay.py compares with what the run has), so it is safe to run any number of times,
and the follower runs the same replay when a followed job ends.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import click

# mlflow, boto3 and the backend modules are imported inside the command: `--help` stays fast.


def run_id_of(description: dict[str, Any]) -> str:
    """The MLflow run a SageMaker job logs to: its Environment, else the contract's hyperparameter."""
    from ade_mlflow_plugin.errors import ConfigError
    from ade_mlflow_plugin.job import contract

    hyper = {k: contract.decode_value(v) for k, v in (description.get("HyperParameters") or {}).items()}
    run_id = (description.get("Environment") or {}).get(contract.ENV_RUN_ID) or \
        contract.decode_hyperparameters(hyper).run.run_id
    if not run_id:
        raise ConfigError(f"job {description['TrainingJobName']} names no MLflow run (no {contract.ENV_RUN_ID}): "
                          "it was not submitted with the ade-sagemaker backend")
    return run_id


def sync_local(client: Any, run_id: str, job_root: Path) -> str:
    """A local-mode job: its relay is in the job root; the run ends with the job's status (its job root's
    state), or as the relay recorded it when the job root has no end state."""
    from mlflow.entities import RunStatus

    from ade_mlflow_plugin.backend.local import JobRoot
    from ade_mlflow_plugin.backend.replay import local_relay_dir, replay
    from ade_mlflow_plugin.backend.submitted_run import RUN_STATUS, TERMINAL

    relay = local_relay_dir(job_root)
    if not relay.is_dir():
        return f"no relay in {job_root}: the job logged straight to MLflow; nothing to replay"
    job_status = JobRoot(job_root).describe()["TrainingJobStatus"]
    end = RunStatus.to_string(RUN_STATUS[job_status]) if job_status in TERMINAL else None
    return replay(client, run_id, relay, end).line()


def sync_sagemaker(client: Any, clients: Any, job_name: str, run_id: str | None) -> str:
    """A SageMaker job: the relay comes from its output archive once the job has ended."""
    from mlflow.entities import RunStatus

    from ade_mlflow_plugin.backend.reconcile import describe_job
    from ade_mlflow_plugin.backend.replay import fetch_sagemaker_relay, replay
    from ade_mlflow_plugin.backend.submitted_run import RUN_STATUS, TERMINAL, SageMakerJob

    description = describe_job(SageMakerJob(clients.sagemaker, job_name), job_name, clients.region)
    run_id = run_id or run_id_of(description)
    status = description["TrainingJobStatus"]
    if status not in TERMINAL:
        return (f"job {job_name} is {status}: SageMaker uploads its relay when it ends; run sync-run "
                "again then")
    with tempfile.TemporaryDirectory(prefix="ade-relay-") as tmp:
        relay = fetch_sagemaker_relay(clients.s3, description, Path(tmp))
        if relay is None:
            return f"no relay in the output of {job_name}: the job logged straight to MLflow; nothing to replay"
        return replay(client, run_id, relay, RunStatus.to_string(RUN_STATUS[status])).line()


@click.command("sync-run")
@click.argument("ref")
@click.option("--region", default=None, help="AWS region (default: the run's sagemaker.region tag).")
@click.option("--job-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Local mode, by JOB name: the backend config's job_root (default: .ade).")
def sync_run_command(ref: str, region: str | None, job_root: Path | None) -> None:
    """Replay a job's relay (what it logged while MLflow was out of reach) into its run, by RUN_ID or JOB.

    Safe to repeat: nothing the run already has is written again."""
    import mlflow

    from ade_mlflow_plugin.backend.commands import resolve_target
    from ade_mlflow_plugin.backend.local import JobRoot
    from ade_mlflow_plugin.backend.reconcile import find_local_root

    client = mlflow.MlflowClient()
    root = None if re.fullmatch(r"[0-9a-f]{32}", ref) else find_local_root(ref, job_root)
    if root is not None:  # a local job by name: its root names the run it logs to
        click.echo(sync_local(client, run_id_of(JobRoot(root).describe()), root))
        return
    target = resolve_target(ref, region)
    if target.mode == "local":
        from ade_mlflow_plugin.errors import ConfigError

        if target.local_log is None or target.run_id is None:
            raise ConfigError(f"run {ref} has no ade.local_log tag: pass the run id of a local-mode job")
        click.echo(sync_local(client, target.run_id, target.local_log.parent))
        return
    from ade_mlflow_plugin.backend.aws import AwsClients

    clients = AwsClients(region=target.region, interactive=True)
    click.echo(sync_sagemaker(client, clients, target.job_name, target.run_id))
