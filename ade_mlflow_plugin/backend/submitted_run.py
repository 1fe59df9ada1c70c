"""Follow a training job and mirror it into its MLflow run: wait / get_status / cancel.

One table maps SageMaker's job status to MLflow's run status, for SageMaker jobs and local jobs
alike (both answer DescribeTrainingJob-shaped dicts).
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, TextIO

from mlflow.entities import RunStatus
from mlflow.projects.submitted_run import SubmittedRun

from ade_mlflow_plugin.backend.aws import aws_call
from ade_mlflow_plugin.errors import describe, first_line, warning_key
from ade_mlflow_plugin.job.launcher import STOP_REASON_TAG

#: THE status table: SageMaker TrainingJobStatus -> MLflow run status.
RUN_STATUS = {
    "InProgress": RunStatus.RUNNING,
    "Stopping": RunStatus.RUNNING,
    "Completed": RunStatus.FINISHED,
    "Failed": RunStatus.FAILED,
    "Stopped": RunStatus.KILLED,
}
TERMINAL = {"Completed", "Failed", "Stopped"}


def kept_end(run_status: str | None, tags: Mapping[str, str]) -> bool:
    """Whether a run's end is the job's own word, which no job status may overwrite: KILLED with an
    ade.stop_reason. The launcher ends a run so when it stops the entry on purpose (budget, stop, spot
    reclaim) and then exits 143, which SageMaker reports as Failed: the table alone would say FAILED."""
    return run_status == "KILLED" and bool(tags.get(STOP_REASON_TAG))


def run_end_status(job_status: str, run_status: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """THE rule for the status a run gets when its job has ended (follower, status, reconcile, replay):
    the table's word for the job status, unless the run already ended KILLED with a stop reason."""
    if kept_end(run_status, tags or {}):
        return "KILLED"
    return RunStatus.to_string(RUN_STATUS[job_status])


#: SageMaker keeps the first 1024 characters of output/failure as FailureReason: its cause line fits.
FAILURE_CAUSE_CHARS = 1024


class Job(Protocol):
    """What the follower needs from a job: SageMaker's (via boto3) or a local one."""

    def describe(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...


class Observer(Protocol):
    """Extra work at each poll (log tailer, cost ticker, CloudWatch metrics mirror, budget); see
    logs.py and monitor.py. ``on_end`` runs in list order before the run is ended, so the log
    tailer comes first: its final drain lands in the log files uploaded with the run."""

    def on_poll(self, job: dict[str, Any]) -> None: ...

    def on_end(self, job: dict[str, Any]) -> None: ...


@dataclass
class SageMakerJob:
    sagemaker: Any
    name: str

    @aws_call("DescribeTrainingJob")
    def describe(self) -> dict[str, Any]:
        return self.sagemaker.describe_training_job(TrainingJobName=self.name)

    @aws_call("StopTrainingJob")
    def stop(self) -> None:
        self.sagemaker.stop_training_job(TrainingJobName=self.name)


@dataclass
class Guarded:
    """Runs an observer so that its failure is one warning line, not the end of following the job."""

    observer: Any
    console: TextIO
    what: str
    _warned: set[tuple[str, str]] = field(default_factory=set)

    def on_poll(self, description: dict[str, Any]) -> None:
        self._call(self.observer.on_poll, description)

    def on_end(self, description: dict[str, Any]) -> None:
        self._call(self.observer.on_end, description)

    def _call(self, method: Callable[[dict[str, Any]], None], description: dict[str, Any]) -> None:
        try:
            method(description)
        except Exception as exc:  # noqa: BLE001 - any failure here is reported, never fatal
            key = warning_key(exc)
            if key not in self._warned:
                self._warned.add(key)
                self.console.write(f"WARNING: {self.what}: {describe(exc)} (following the job continues)\n")


@dataclass
class JobFollower:
    """Polls a job, prints status changes, feeds observers (logs, cost, metrics), ends the MLflow run."""

    job: Job
    run_id: str
    mlflow_client: Any
    console: TextIO = sys.stderr
    poll_interval_s: float = 15.0
    observers: list[Observer] = field(default_factory=list)
    log_files: list[Path] = field(default_factory=list)
    scratch_dirs: list[Path] = field(default_factory=list)  # ours: removed once their logs are in the run
    sleep: Callable[[float], None] = time.sleep
    ended_as: str | None = None  # the run's status once finish() has ended it
    _last: tuple[str, str] | None = None
    _transitions_seen: int = 0

    def poll(self) -> dict[str, Any]:
        description = self.job.describe()
        self._report(description)
        for observer in self.observers:
            observer.on_poll(description)
        return description

    def follow(self) -> dict[str, Any]:
        """Poll until the job ends; the delay grows from 1 s to poll_interval_s (quick first feedback)."""
        delay = 1.0
        while True:
            description = self.poll()
            if description["TrainingJobStatus"] in TERMINAL:
                return self.finish(description)
            self.sleep(delay)
            delay = min(delay * 2, self.poll_interval_s)

    def finish(self, description: dict[str, Any]) -> dict[str, Any]:
        for observer in self.observers:
            observer.on_end(description)
        self._mirror_end(description)
        return description

    def _report(self, description: dict[str, Any]) -> None:
        transitions = description.get("SecondaryStatusTransitions") or []
        for transition in transitions[self._transitions_seen:]:
            message = first_line(transition.get("StatusMessage", ""))
            self.console.write(f"{description['TrainingJobName']}: {transition['Status']}"
                               f"{' - ' + message if message else ''}\n")
        self._transitions_seen = max(self._transitions_seen, len(transitions))
        state = (description["TrainingJobStatus"], description.get("SecondaryStatus", ""))
        if state != self._last and not transitions:
            self.console.write(f"{description['TrainingJobName']}: {state[0]} ({state[1]})\n")
        self._last = state
        self.console.flush()

    def _mirror_end(self, description: dict[str, Any]) -> None:
        status = description["TrainingJobStatus"]
        tags = {"sagemaker.status": status}
        if description.get("FailureReason"):
            tags["sagemaker.failure_reason"] = description["FailureReason"][:5000]
        artifacts = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        if artifacts:
            tags["sagemaker.model_artifacts"] = artifacts
        for key, value in tags.items():
            self.mlflow_client.set_tag(self.run_id, key, value)
        for path in map(Path, self.log_files):
            if path.is_file():
                self.mlflow_client.log_artifact(self.run_id, str(path), "logs")
            elif path.is_dir() and any(path.iterdir()):
                self.mlflow_client.log_artifacts(self.run_id, str(path), "logs")
        for scratch in self.scratch_dirs:
            shutil.rmtree(scratch, ignore_errors=True)
        self._replay_relay(description, run_end_status(status))
        # Read after the replay: the launcher (or its relay) may have ended the run KILLED with a reason.
        run = self.mlflow_client.get_run(self.run_id)
        self.ended_as = run_end_status(status, run.info.status, run.data.tags)
        self._say_end(description, run.data.tags)
        if run.info.status != self.ended_as:
            self.mlflow_client.set_terminated(self.run_id, self.ended_as)

    def _say_end(self, description: dict[str, Any], tags: Mapping[str, str]) -> None:
        """One line for a job that did not complete: its stop reason, else its failure's cause."""
        name = description["TrainingJobName"]
        if self.ended_as == "KILLED" and tags.get(STOP_REASON_TAG):
            detail = first_line(tags.get("ade.stop_detail", ""), FAILURE_CAUSE_CHARS)
            self.console.write(f"{name} stopped ({STOP_REASON_TAG}={tags[STOP_REASON_TAG]})"
                               f"{': ' + detail if detail else ''}\n")
        elif description.get("FailureReason"):
            # The cause leads the reason (the launcher writes it first); the rest (the output tail) is
            # in the tag and the job's log, not on the console.
            self.console.write(f"{name} failed: {first_line(description['FailureReason'], FAILURE_CAUSE_CHARS)}\n")

    def _replay_relay(self, description: dict[str, Any], run_status: str) -> None:
        """What the job kept in its relay (it could not reach MLflow) goes into the run before it ends; a
        failure here is one warning that names the command that retries it."""
        from ade_mlflow_plugin.backend.replay import relay_of_job, replay

        try:
            with relay_of_job(self.job, description) as relay:
                if relay is not None:
                    self.console.write(replay(self.mlflow_client, self.run_id, relay, run_status).line() + "\n")
        except Exception as exc:  # noqa: BLE001 - the job has ended; its run must still be ended below
            self.console.write(f"WARNING: the job's relay was not replayed: {describe(exc)}; retry with "
                               f"`ade-mlflow sync-run {self.run_id}`\n")


class AdeSubmittedRun(SubmittedRun):
    """MLflow's handle on a submitted job."""

    def __init__(self, run_id: str, job_name: str, follower: JobFollower) -> None:
        self._run_id = run_id
        self.job_name = job_name
        self.follower = follower
        self.final: dict[str, Any] | None = None

    @property
    def run_id(self) -> str:
        return self._run_id

    def wait(self) -> bool:
        """Follow the job to its end (Ctrl-C stops it); True when it completed."""
        if self.final is None:
            try:
                self.final = self.follower.follow()
            except KeyboardInterrupt:
                self.follower.console.write(f"\nInterrupted: stopping {self.job_name} ...\n")
                self.cancel()
        return self.final is not None and self.final["TrainingJobStatus"] == "Completed"

    def get_status(self) -> str:
        if self.final is not None:
            return self.follower.ended_as or run_end_status(self.final["TrainingJobStatus"])
        return run_end_status(self.follower.job.describe()["TrainingJobStatus"])

    def cancel(self) -> None:
        """StopTrainingJob, then wait until the job reports Stopped (or another end state)."""
        if self.final is not None:
            return
        self.follower.job.stop()
        self.wait_stopped()

    def wait_stopped(self) -> None:
        """Poll a job already told to stop until it reports an end state; its run then ends as the job did."""
        while self.final is None:
            description = self.follower.poll()
            if description["TrainingJobStatus"] in TERMINAL:
                self.final = self.follower.finish(description)
                return
            self.follower.sleep(min(5.0, self.follower.poll_interval_s))

