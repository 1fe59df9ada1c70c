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
    run: Any = None  # the MLflow run, when it was looked up


def resolve_target(ref: str, region: str | None) -> Target:
    """A 32-hex MLflow run id (looked up on the tracking server) or a SageMaker job name."""
    if not _RUN_ID.fullmatch(ref):
        return Target(ref, region, "sagemaker")
    import mlflow

    from ade_mlflow_plugin.errors import ConfigError, is_missing, mlflow_error

    try:
        run = mlflow.MlflowClient().get_run(ref)
    except mlflow.exceptions.MlflowException as exc:
        if not is_missing(exc):  # the server, not the id: say so instead of "not found"
            raise mlflow_error(f"looking up run '{ref}' on {mlflow.get_tracking_uri()}", exc) from exc
        raise ConfigError(f"run '{ref}' not found on {mlflow.get_tracking_uri()}: check the run id and "
                          "MLFLOW_TRACKING_URI") from exc
    return _target_of_run(run, region)


def _target_of_run(run: Any, region: str | None) -> Target:
    from ade_mlflow_plugin.errors import ConfigError

    tags, ref = run.data.tags, run.info.run_id
    if "sagemaker.job_name" not in tags:
        raise ConfigError(f"run '{ref}' was not submitted with the ade-sagemaker backend (no sagemaker.job_name tag)")
    log = tags.get("ade.local_log")
    return Target(tags["sagemaker.job_name"], region or tags.get("sagemaker.region"),
                  tags.get("sagemaker.mode", "sagemaker"), ref, Path(log) if log else None, run)


class _Offline(Exception):
    """The tracking server did not answer: status goes on with the job alone."""


def _get_run(run_id: str) -> Any | None:
    """The run, None when the server says there is none; _Offline when the server cannot be reached."""
    import mlflow

    from ade_mlflow_plugin.errors import first_line, is_missing

    try:
        return mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        if is_missing(exc):
            return None
        raise _Offline(f"WARNING: tracking server {mlflow.get_tracking_uri()} cannot be reached "
                       f"({first_line(exc, 160)}); showing the job only") from exc


def _status_target(ref: str, region: str | None, job_root: Path | None) -> Target:
    """Where the job is (and its run, when the tracking server answers); one warning line when it does not."""
    from ade_mlflow_plugin.backend.reconcile import find_local_root, local_root
    from ade_mlflow_plugin.errors import ConfigError

    if not _RUN_ID.fullmatch(ref):
        root = find_local_root(ref, job_root)
        return Target(ref, region, "local", local_log=root / "job.log") if root else Target(ref, region, "sagemaker")
    try:
        run = _get_run(ref)
    except _Offline as offline:
        click.echo(str(offline), err=True)
        root = find_local_root(ref, job_root)  # a local job's root names the run it logs to
        if root is None:
            raise ConfigError(f"run '{ref}': the tracking server cannot be reached and no local job under "
                              f"{(job_root or Path('.ade')).resolve()} logs to it; give the SageMaker job name "
                              "(its sagemaker.job_name) or --job-root") from None
        return Target(root.name, region, "local", ref, root / "job.log")
    if run is None:
        raise ConfigError(f"run '{ref}' not found: check the run id and MLFLOW_TRACKING_URI")
    target = _target_of_run(run, region)
    if target.mode == "local":
        target.local_log = local_root(run.data.tags, target.job_name, job_root) / "job.log"
    return target


def _run_for(target: Target, description: dict[str, Any]) -> Any | None:
    """The target's run, looked up by the run id the job carries when only the job name was given."""
    from ade_mlflow_plugin.backend.sync_run import run_id_of
    from ade_mlflow_plugin.errors import ConfigError

    if target.run is not None or target.run_id is not None:
        return target.run
    try:
        return _get_run(run_id_of(description))
    except ConfigError:  # a job of someone else's: no run to bring level
        return None
    except _Offline as offline:
        click.echo(str(offline), err=True)
        return None


#: SageMaker's secondary statuses of a stop (a transition with one of them explains a Stopped job).
_STOP_STATES = frozenset({"Stopping", "Stopped", "Interrupted", "MaxRuntimeExceeded", "MaxWaitTimeExceeded"})


def _print_job(description: dict[str, Any]) -> None:
    status = description["TrainingJobStatus"]
    click.echo(f"job:       {description['TrainingJobName']}")
    click.echo(f"status:    {status} ({description.get('SecondaryStatus', '')}) -> MLflow "
               f"{_run_status(status)}")
    last = (description.get("SecondaryStatusTransitions") or [{}])[-1]
    if status == "Stopped" and last.get("Status") in _STOP_STATES and last.get("StatusMessage"):
        from ade_mlflow_plugin.errors import first_line

        # Why it stopped (a spot reclaim, a stop asked for, the budget): the stop's own transition says it.
        click.echo(f"stopped:   {first_line(last['StatusMessage'])}")
    for key, label in (("FailureReason", "failure"), ("TrainingTimeInSeconds", "training s"),
                       ("BillableTimeInSeconds", "billable s")):
        if description.get(key) is not None:
            click.echo(f"{label + ':':<10} {description[key]}")
    artifacts = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if artifacts:
        click.echo(f"model:     {artifacts}")


_JOB_ROOT = click.option("--job-root", type=click.Path(file_okay=False, path_type=Path), default=None,
                         help="Local mode: the backend config's job_root (default: .ade).")


@click.command("status")
@click.argument("ref")
@click.option("--region", default=None, help="AWS region (default: the run's sagemaker.region tag).")
@_JOB_ROOT
def status_command(ref: str, region: str | None, job_root: Path | None) -> None:
    """Show a job's status by MLflow RUN_ID or SageMaker JOB name, and bring its run level with it.

    The job is read from SageMaker or its local job root, so this works with the tracking server down
    (one warning line). With the server up, a run whose job ended unfollowed gets its end state,
    failure reason, cost and logs, as the follower would have given them."""
    from ade_mlflow_plugin.backend.reconcile import describe_job, open_job, reconcile_run

    target = _status_target(ref, region, job_root)
    job = open_job(target.mode, target.job_name, target.region,
                   target.local_log.parent if target.local_log else None)
    description = describe_job(job, target.job_name, target.region)
    _print_job(description)
    run = _run_for(target, description)
    ended_as = None
    if run is not None:
        import mlflow

        outcome = reconcile_run(mlflow.MlflowClient(), run, job, description, sys.stderr)
        ended_as = outcome.after
        click.echo(f"run:       {outcome.run_id} {outcome.after}"
                   f"{f' (was {outcome.before})' if outcome.before != outcome.after else ''}")
        for line in (outcome.replay, outcome.landed):
            if line:
                click.echo(line)
    # A job its own launcher stopped (budget) exits 143, which SageMaker reports as Failed; its run is KILLED
    # with a stop reason: a stop asked for, not a failure (exit 0).
    if description["TrainingJobStatus"] == "Failed" and ended_as != "KILLED":
        sys.exit(1)


def _run_status(status: str) -> str:
    from mlflow.entities import RunStatus

    from ade_mlflow_plugin.backend.submitted_run import RUN_STATUS

    return RunStatus.to_string(RUN_STATUS[status])


@click.command("logs")
@click.argument("ref")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("--region", default=None, help="AWS region (default: the run's sagemaker.region tag).")
@click.option("--poll-interval", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True,
              help="Seconds between polls with --follow.")
@_JOB_ROOT
def logs_command(ref: str, follow: bool, region: str | None, poll_interval: float, job_root: Path | None) -> None:
    """Print a job's logs (all hosts) by MLflow RUN_ID or SageMaker JOB name (or a local job's name)."""
    from ade_mlflow_plugin.backend.reconcile import find_local_root

    root = None if _RUN_ID.fullmatch(ref) else find_local_root(ref, job_root)
    target = Target(ref, region, "local", local_log=root / "job.log") if root else resolve_target(ref, region)
    if target.mode == "local":
        _local_logs(target, follow, poll_interval)
        return
    from ade_mlflow_plugin.backend.aws import AwsClients
    from ade_mlflow_plugin.backend.logs import LogTailer
    from ade_mlflow_plugin.backend.submitted_run import TERMINAL, SageMakerJob

    clients = AwsClients(region=target.region, interactive=not follow)  # --follow keeps the long retry budget
    tailer = LogTailer(clients.logs, target.job_name, console=sys.stdout)
    job = SageMakerJob(clients.sagemaker, target.job_name)
    tailer.poll()
    while follow and job.describe()["TrainingJobStatus"] not in TERMINAL:
        time.sleep(poll_interval)
        tailer.poll()
    if follow:
        tailer.drain()


def _local_logs(target: Target, follow: bool, poll_interval: float) -> None:
    from ade_mlflow_plugin.backend.local import ENDED, JobRoot

    if target.local_log is None or not target.local_log.is_file():
        from ade_mlflow_plugin.errors import ConfigError

        raise ConfigError(f"the local log of {target.job_name} is not on this machine ({target.local_log})")
    with open(target.local_log, encoding="utf-8", errors="replace") as handle:
        while True:
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            if not follow or JobRoot(target.local_log.parent).describe()["TrainingJobStatus"] in ENDED:
                sys.stdout.write(handle.read())
                return
            time.sleep(poll_interval)


@click.command("reconcile")
@click.option("--experiment", "experiment", default=None, help="Only runs of this experiment (default: all).")
@_JOB_ROOT
def reconcile_command(experiment: str | None, job_root: Path | None) -> None:
    """End every unfinished run whose job ended unfollowed: status, failure reason, cost, logs.

    Looks at each run with a sagemaker.job_name tag that is not terminated; prints one line per run."""
    import mlflow

    from ade_mlflow_plugin.backend.reconcile import describe_job, local_root, open_job, reconcile_run
    from ade_mlflow_plugin.errors import AdeError, ConfigError, describe, mlflow_error

    client = mlflow.MlflowClient()
    try:
        runs = _unfinished_runs(client, experiment)
    except AdeError:  # an MlflowException too, already one line (a missing --experiment)
        raise
    except mlflow.exceptions.MlflowException as exc:
        raise mlflow_error(f"searching runs on {mlflow.get_tracking_uri()}", exc) from exc
    failures = 0
    for run in runs:
        target = _target_of_run(run, None)
        root = local_root(run.data.tags, target.job_name, job_root) if target.mode == "local" else None
        try:
            job = open_job(target.mode, target.job_name, target.region, root)
            description = describe_job(job, target.job_name, target.region)
            click.echo(reconcile_run(client, run, job, description, sys.stderr).line())
        except (ConfigError, mlflow.exceptions.MlflowException, OSError) as exc:
            failures += 1
            click.echo(f"{run.info.run_id}  {target.job_name}  error: {describe(exc)}")
    if not runs:
        click.echo("no unfinished run with a sagemaker.job_name tag")
    if failures:
        sys.exit(1)


def _unfinished_runs(client: Any, experiment: str | None) -> list[Any]:
    from mlflow.entities import ViewType

    from ade_mlflow_plugin.errors import ConfigError

    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise ConfigError(f"experiment '{experiment}' not found: check --experiment and MLFLOW_TRACKING_URI")
        ids = [found.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not ids:
        return []
    from ade_mlflow_plugin.backend.reconcile import END_TAG
    from ade_mlflow_plugin.backend.submitted_run import TERMINAL

    # By the end tag, not only the run's status: a job's launcher ends its own run whenever it reaches the
    # server, and such a job still needs what only the follower or reconcile gives (logs, billable seconds,
    # final cost, sagemaker.status, the output_dir landing). MLflow's filter cannot ask "tag missing".
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(ids, "tags.`sagemaker.job_name` LIKE '%'", max_results=1000, page_token=token)
        runs += [run for run in page if run.data.tags.get(END_TAG) not in TERMINAL
                 or run.info.status not in ("FINISHED", "FAILED", "KILLED")]
        token = page.token
        if not token:
            return runs
