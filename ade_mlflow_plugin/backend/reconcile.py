"""Bring an MLflow run level with its job when nobody followed it (`status`, `reconcile`).

What the follower would have done at the job's end, done later and only once: the run status from the
job's end state (submitted_run.RUN_STATUS, the one table), the sagemaker.* end tags, the final cost
(SageMaker jobs), the job's logs as run artifacts when the run has none, then the relay replay where
that verb is installed. A run already ended by its job (the launcher ends it when it can reach the
tracking server) keeps its status: the launcher knows the stop reason better than the job status does.
"""
from __future__ import annotations

import importlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mlflow.entities import RunStatus

from ade_mlflow_plugin.backend.aws import AwsClients
from ade_mlflow_plugin.backend.local import JobRoot
from ade_mlflow_plugin.backend.submitted_run import RUN_STATUS, TERMINAL, Guarded, SageMakerJob
from ade_mlflow_plugin.errors import ConfigError

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

    def line(self) -> str:
        change = f"{self.before} -> {self.after}" if self.before != self.after else f"{self.after} (unchanged)"
        return f"{self.run_id}  {self.job_name}  job {self.job_status}  run {change}"


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
        try:
            environment = JobRoot(root).describe().get("Environment") or {}
        except ConfigError:
            continue
        if environment.get("MLFLOW_RUN_ID") == ref:
            return root
    return None


def open_job(mode: str, job_name: str, region: str | None, root: Path | None) -> Any:
    """Something with describe() for the job: its SageMaker record or its local job root."""
    if mode == "local":
        return JobRoot(root or DEFAULT_JOB_ROOT.resolve() / "jobs" / job_name)
    return SageMakerJob(AwsClients(region=region).sagemaker, job_name)


def reconcile_run(client: Any, run: Any, job: Any, description: dict[str, Any], console: TextIO) -> Outcome:
    """Mirror an ended job into its run (idempotent); a job still going leaves the run as it is."""
    tags, run_id = run.data.tags, run.info.run_id
    status, before = description["TrainingJobStatus"], run.info.status
    outcome = Outcome(run_id, description["TrainingJobName"], status, before, before)
    if status not in TERMINAL:
        return outcome
    if tags.get(END_TAG) not in TERMINAL:
        if tags.get("sagemaker.mode", "sagemaker") == "sagemaker":
            _final_cost(client, run, description, console)
        _upload_logs(client, run_id, job, tags, console)
        _end_tags(client, run_id, description)
    if before in ("RUNNING", "SCHEDULED"):
        outcome.after = RunStatus.to_string(RUN_STATUS[status])
        client.set_terminated(run_id, outcome.after)
    _replay(run_id, console)
    return outcome


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
        quote = cost.default_price_book().quote(AwsClients(region=region), instance_type, region)
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
        tailer = LogTailer(AwsClients(region=region).logs, job.name, out_dir=Path(tmp), console=None)
        Guarded(tailer, console, "CloudWatch logs").on_end({})
        if any(Path(tmp).iterdir()):
            client.log_artifacts(run_id, tmp, "logs")


def _replay(run_id: str, console: TextIO) -> None:
    """The relay replay (backend/replay.py, `sync-run`) where it is installed; idempotent by design."""
    try:
        replay = importlib.import_module("ade_mlflow_plugin.backend.replay")
    except ModuleNotFoundError:
        return
    run = getattr(replay, "replay_run", None)
    if run is not None:
        Guarded(_Call(run, run_id), console, "relay replay").on_end({})


@dataclass
class _Call:
    """An observer-shaped wrapper, so a failure of the call is one guarded warning line."""

    fn: Any
    run_id: str

    def on_end(self, description: dict[str, Any]) -> None:
        self.fn(self.run_id)
