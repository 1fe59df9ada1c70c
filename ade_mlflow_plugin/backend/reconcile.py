"""Bring an MLflow run level with its job when nobody followed it (`status`, `reconcile`).

What the follower would have done at the job's end, done later and only once: the run status from the
job's end state (submitted_run.run_end_status: the one table, and a stop reason kept), the sagemaker.*
end tags, the final cost (SageMaker jobs), the job's logs as run artifacts when the run has none, the
relay replay of `sync-run` (what the job kept while the tracking server was out of its reach), and, for a
completed job, the ``ade_job_completed`` hook (the registry's built-in plugin lands the run's registered
model in its local output_dir, tag ``ade.output_dir``). A run
already ended by its job (the launcher ends it when it can reach the tracking server) keeps its status:
the launcher knows the stop reason better than the job status does.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ade_mlflow_plugin.backend.aws import AwsClients
from ade_mlflow_plugin.backend.local import JobRoot, read_state
from ade_mlflow_plugin.backend.submitted_run import TERMINAL, Guarded, SageMakerJob, run_end_status
from ade_mlflow_plugin.errors import describe
from ade_mlflow_plugin.job import contract

#: What the follower (or an earlier reconcile) sets at the job's end: its presence means "done already".
END_TAG = "sagemaker.status"
DEFAULT_JOB_ROOT = Path(".ade")


@dataclass
class Outcome:
    """One run's reconciliation, as `reconcile` prints it (one line)."""

    run_id: str
    job_name: str
    job_status: str
    before: str
    after: str
    replay: str | None = None  # the relay replay's line, when it wrote something
    landed: str | None = None  # the output_dir landing's line, when it copied something

    def line(self) -> str:
        change = f"{self.before} -> {self.after}" if self.before != self.after else f"{self.after} (unchanged)"
        extra = "".join(f"  ({text})" for text in (self.replay, self.landed) if text)
        return f"{self.run_id}  {self.job_name}  job {self.job_status}  run {change}{extra}"


def local_root(tags: dict[str, str], job_name: str, job_root: Path | None) -> Path:
    """A local job's root: beside its log (the ade.local_log tag), else under --job-root."""
    if tags.get("ade.local_log"):
        return Path(tags["ade.local_log"]).parent
    return (job_root or DEFAULT_JOB_ROOT).resolve() / "jobs" / job_name


def find_local_root(ref: str, job_root: Path | None) -> Path | None:
    """The root of the local job named ``ref``, or of the one that logs to run ``ref``; None if not here."""
    jobs = (job_root or DEFAULT_JOB_ROOT).resolve() / "jobs"
    if (jobs / ref).is_dir():
        return jobs / ref
    for root in sorted(jobs.glob("*/")) if jobs.is_dir() else []:
        environment = (read_state(root) or {}).get("Environment") or {}
        if environment.get(contract.ENV_RUN_ID) == ref:
            return root
    return None


def open_job(mode: str, job_name: str, region: str | None, root: Path | None) -> Any:
    """Something with describe() for the job: its SageMaker record or its local job root. status and
    reconcile are verbs someone waits on: an unreachable endpoint fails in seconds (aws.INTERACTIVE_CONFIG)."""
    if mode == "local":
        return JobRoot(root or DEFAULT_JOB_ROOT.resolve() / "jobs" / job_name)
    return SageMakerJob(AwsClients(region=region, interactive=True).sagemaker, job_name)


#: DescribeTrainingJob's answer for a name it does not know (a real endpoint: "Requested resource not found.").
JOB_NOT_FOUND = frozenset({"ValidationException", "ResourceNotFound"})


def describe_job(job: Any, job_name: str, region: str | None) -> dict[str, Any]:
    """``job.describe()``; a job SageMaker does not know is bad input (ConfigError, exit 2) and any other
    AWS failure one line (status, sync-run and reconcile word it alike, as cost does)."""
    from ade_mlflow_plugin.backend.aws import AWS_ERRORS
    from ade_mlflow_plugin.errors import AwsError, ConfigError, aws_error, aws_error_code

    try:
        return job.describe()
    except (AwsError, *AWS_ERRORS) as exc:  # SageMakerJob.describe translates already; keep its code
        code = exc.code if isinstance(exc, AwsError) else aws_error_code(exc)
        if code in JOB_NOT_FOUND:
            where = region or "the default region"
            raise ConfigError(f"no training job '{job_name}' in {where}: check the job name, the run id or "
                              "--region") from exc
        raise exc if isinstance(exc, AwsError) else aws_error("DescribeTrainingJob", exc) from exc


def reconcile_run(client: Any, run: Any, job: Any, description: dict[str, Any], console: TextIO) -> Outcome:
    """Mirror an ended job into its run (idempotent); a job still going leaves the run as it is."""
    tags, run_id = run.data.tags, run.info.run_id
    status, before = description["TrainingJobStatus"], run.info.status
    outcome = Outcome(run_id, description["TrainingJobName"], status, before, before)
    if status not in TERMINAL:
        return outcome
    # A run the launcher ended KILLED with a stop reason keeps it (a budget stop reads Failed on SageMaker).
    end_status = run_end_status(status, before, tags)
    if tags.get(END_TAG) not in TERMINAL:
        local = tags.get("sagemaker.mode", "sagemaker") == "local"
        if not local:
            _final_cost(client, run, description, console)
        _upload_logs(client, run_id, job, tags, console)
        # A local job recorded its own end in the relay (KILLED with its stop reason, say); SageMaker's
        # status is the word for a cloud job, as sync-run has it.
        outcome.replay = _replay(client, run_id, job, description, None if local else end_status, console)
        _end_tags(client, run_id, description)  # last: a reconcile cut short is done again next time
    fresh = client.get_run(run_id)
    outcome.after = fresh.info.status
    if outcome.after in ("RUNNING", "SCHEDULED"):
        client.set_terminated(run_id, end_status)
        outcome.after = end_status
    if status == "Completed":  # after the replay: a relayed job's model version is registered by it
        outcome.landed = _land(client, fresh, description["TrainingJobName"], console)
    return outcome


def _land(client: Any, run: Any, job_name: str, console: TextIO) -> str | None:
    """The ``ade_job_completed`` hook, as the follower fires it at a completed end (backend/monitor.py): the
    registry's built-in plugin lands the run's model in its local output_dir (tag ``ade.output_dir``), once.
    The plugins' lines; a failure is one warning line: the next status/reconcile tries again."""
    from ade_mlflow_plugin.backend.monitor import backend_plugins, job_completed
    from ade_mlflow_plugin.config.cloud import OUTPUT_DIR_TAG

    target = run.data.tags.get(OUTPUT_DIR_TAG)
    try:
        hook = backend_plugins(console).hook.ade_job_completed
        lines = job_completed(hook, run.info.run_id, job_name, client.tracking_uri,
                              Path(target) if target else None)
    except Exception as exc:  # noqa: BLE001 - the run is level with its job already
        where = f" in {target}" if target else ""
        console.write(f"WARNING: job completed{where}: {describe(exc)} "
                      f"(run `ade-mlflow status {run.info.run_id}` again)\n")
        return None
    return "; ".join(lines) or None


def _end_tags(client: Any, run_id: str, description: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    tags = {END_TAG: description["TrainingJobStatus"]}
    if description.get("FailureReason"):
        tags["sagemaker.failure_reason"] = description["FailureReason"][:5000]
    artifacts = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if artifacts:
        tags["sagemaker.model_artifacts"] = artifacts
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])


def _final_cost(client: Any, run: Any, description: dict[str, Any], console: TextIO) -> None:
    """cost_usd and the billing tags, through the follower's own cost observer (same figures); a
    missing price is one warning line, as when following."""
    Guarded(_FinalCost(client, run), console, "cost").on_end(description)


@dataclass
class _FinalCost:
    client: Any
    run: Any

    def on_end(self, description: dict[str, Any]) -> None:
        from ade_mlflow_plugin.backend import cost
        from ade_mlflow_plugin.backend.monitor import CostTicker

        tags = self.run.data.tags
        region = tags.get("sagemaker.region") or "us-east-1"
        instance_type = cost.instances(description)[0] or tags.get("sagemaker.instance_type", "")
        quote = cost.default_price_book().quote(AwsClients(region=region, interactive=True), instance_type,
                                                    region)
        CostTicker(quote, self.run.info.run_id, self.client, _Quiet()).on_end(description)


class _Quiet:
    """CostTicker's console: reconcile prints one line per run, not the price banner."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _upload_logs(client: Any, run_id: str, job: Any, tags: dict[str, str], console: TextIO) -> None:
    """The job's logs into the run's logs/, unless the run has them already."""
    if client.list_artifacts(run_id, "logs"):
        return
    if isinstance(job, JobRoot):
        if job.log_path.is_file():
            client.log_artifact(run_id, str(job.log_path), "logs")
        return
    from ade_mlflow_plugin.backend.logs import LogTailer

    with tempfile.TemporaryDirectory(prefix="ade-logs-") as tmp:
        region = tags.get("sagemaker.region")
        tailer = LogTailer(AwsClients(region=region, interactive=True).logs, job.name, out_dir=Path(tmp),
                           console=None)
        Guarded(tailer, console, "CloudWatch logs").on_end({})
        if any(Path(tmp).iterdir()):
            client.log_artifacts(run_id, tmp, "logs")


def _replay(client: Any, run_id: str, job: Any, description: dict[str, Any], end_status: str | None,
            console: TextIO) -> str | None:
    """The relay replay of `sync-run` (backend/replay.py; idempotent): what the job kept while the tracking
    server was out of its reach. Its line when it wrote something; a failure is one warning line."""
    from ade_mlflow_plugin.backend.replay import relay_of_job, replay

    try:
        with relay_of_job(job, description) as relay:
            if relay is None:
                return None
            summary = replay(client, run_id, relay, end_status)
    except Exception as exc:  # noqa: BLE001 - the run still ends; `sync-run` can replay later
        console.write(f"WARNING: relay replay: {describe(exc)} (run `ade-mlflow sync-run {run_id}` later)\n")
        return None
    return summary.line() if summary.changed else None
