"""`"mode": "local"`: execute a CreateTrainingJob request (or DescribeTrainingJob answer) on this machine.

The job root plays /opt/ml: the contract files are written from the request, channels are
materialised from file:// (linked in place) or s3:// (downloaded; local_location.py), the launcher runs in
a subprocess, checkpoints are synced to CheckpointConfig.S3Uri while it runs and at the end, and model/ is
packed to `<S3OutputPath>/<job>/output/model.tar.gz` as SageMaker does. `describe()` answers in
DescribeTrainingJob's shape, so the backend follows local and SageMaker jobs with the same code.

Every answer is also saved as job.json in the job root, so `status`, `reconcile` and `logs` read a
job (local_root.JobRoot) from another process. With `"wait": false` start_detached() (local_detached.py)
hands the job to a runner of its own session: the job outlives `mlflow run`. The names of those modules are
re-exported here, where callers have always found them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TextIO

from ade_mlflow_plugin.backend.aws import AwsClients
from ade_mlflow_plugin.backend.interrupts import sigint_deferred
from ade_mlflow_plugin.backend.local_detached import runner_main, start_detached
from ade_mlflow_plugin.backend.local_location import Location, materialise_channels, upload_model
from ade_mlflow_plugin.backend.local_root import (ENDED, HOST_LOGS_DIR, REQUEST_FILE, RUNNER_LOG, RUNNER_PID_FILE,
                                                  STATE_FILE, JobRoot, _iso, read_state)
from ade_mlflow_plugin.errors import AdeError, ConfigError, aws_error, describe
from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.job.contract import ContainerPaths, write_contract
from ade_mlflow_plugin.job.launcher import EXIT_STOPPED
from ade_mlflow_plugin.job.procs import kill_tree, wait_gone

__all__ = ["ENDED", "HOST_LOGS_DIR", "REQUEST_FILE", "RUNNER_LOG", "RUNNER_PID_FILE", "STATE_FILE", "STOP_DETAIL",
           "STOP_REASONS", "JobRoot", "LocalJob", "Location", "read_state", "runner_main", "start_detached"]

STOP_GRACE_S = float(os.environ.get("ADE_STOP_GRACE_S", "120"))  # SageMaker's grace on stop / spot reclaim
CHECKPOINT_SYNC_S = 30.0
#: After the grace period's SIGKILL, how long the job waits for the killed processes to be gone.
KILL_WAIT_S = 10.0
#: SageMaker returns this much of the failure file as FailureReason.
FAILURE_REASON_CHARS = 1024
#: The stop reasons (ade.stop_reason) a launcher's stop writes first in output/failure ("budget: ...").
STOP_REASONS = contract.STOP_REASONS
STOP_DETAIL = "stopped: StopTrainingJob (the local job was stopped on request)"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _instance_count(request: dict[str, Any]) -> int:
    return int((request.get("ResourceConfig") or {}).get("InstanceCount", 1) or 1)


class LocalJob:
    """One training job run on this machine under the SageMaker container contract.

    ``LocalJob(request)`` is the job the request describes: with InstanceCount > 1 it is a LocalCluster
    (local_hosts.py), one LocalJob per host; every caller (backend, detached runner, tests) gets it alike.
    The keyword-only ``host`` arguments make one host of such a cluster.
    """

    def __new__(cls, request: dict[str, Any], **kwargs: Any) -> "LocalJob":
        if cls is LocalJob and kwargs.get("host") is None and _instance_count(request) > 1:
            from ade_mlflow_plugin.backend.local_hosts import LocalCluster

            return super().__new__(LocalCluster)
        return super().__new__(cls)

    def __init__(self, request: dict[str, Any], *, job_root: Path | None = None, clients: AwsClients | None = None,
                 stream: TextIO | None = sys.stdout, host: str | None = None, log_path: Path | None = None,
                 upload_model: bool = True, extra_env: dict[str, str] | None = None,
                 on_end: Callable[["LocalJob"], None] | None = None) -> None:
        self.request = request
        self.name = request["TrainingJobName"]
        self.root = Path(job_root or Path(".ade") / "jobs" / self.name).resolve()
        self.paths = ContainerPaths(self.root)
        self.clients = clients
        self.stream = stream
        self.log_path = Path(log_path).resolve() if log_path else self.root / "job.log"
        self.host = host or "algo-1"  # SageMaker's name for this host (resourceconfig.json's current_host)
        self._upload = upload_model  # only the lead host's model is the job's model
        self._extra_env = dict(extra_env or {})
        self._on_end = on_end
        self.proc: subprocess.Popen | None = None
        self._status, self._secondary = "InProgress", "Starting"
        self._transitions: list[dict[str, Any]] = []
        self._failure: str | None = None
        self._model_uri = ""
        self._created = _now()
        self._started: datetime | None = None
        self._ended: datetime | None = None
        self._stop_requested = False
        self._max_runtime_hit = False
        self._done = threading.Event()
        self._killed = threading.Event()  # clear while a SIGKILL's processes are still dying
        self._killed.set()
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # the supervisor and a stop() may both save job.json
        self._checkpoints = Location(request["CheckpointConfig"]["S3Uri"], clients) \
            if request.get("CheckpointConfig") else None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Prepare the job root and start the launcher; returns at once."""
        self.prepare()
        self.launch()

    def prepare(self) -> None:
        """The job root, its contract files and inputs: what can fail on bad input, before the entry runs."""
        self._transition("Starting", "Preparing the job root")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_contract(self.paths, self.request, current_host=self.host)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.touch()
            # A restart must see neither the last run's entry group nor its failure.
            for stale in (self.paths.entry_pgid_file, self.paths.failure_file, self.paths.stop_reason_file,
                          self.paths.launcher_ready_file):
                stale.unlink(missing_ok=True)
        except OSError as exc:
            raise ConfigError(f"job root {self.root} is not writable ({exc.strerror}): set \"job_root\" in the "
                              "backend config to a writable directory") from None
        self._transition("Downloading", "Downloading input data and checkpoints")
        try:
            self._materialise_channels()
            if self._checkpoints is not None:  # a spot restart finds its checkpoints before the entry starts
                self._checkpoints.download_to(self.paths.checkpoint_dir)
                self._checkpoints.mark_sent(self.paths.checkpoint_dir)
        except Exception as exc:
            raise self._fail_before_start(exc) from None

    def launch(self) -> None:
        """Start the launcher in a session of its own and supervise it from threads of this process."""
        (self.root / RUNNER_PID_FILE).write_text(f"{os.getpid()}\n")  # who keeps job.json current
        self._transition("Training", "Training in progress on this machine")
        with sigint_deferred():  # a Ctrl-C here would leave a launcher running that nothing supervises
            self._started = _now()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", contract.LAUNCHER_MODULE], cwd=self.root, env=self._env(),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                start_new_session=True)
            self._pump = threading.Thread(target=self._pump_output, daemon=True)
            self._pump.start()
            threading.Thread(target=self._supervise, daemon=True).start()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.request.get("Environment", {}))
        env.update(self._extra_env)
        # What SageMaker sets in a training container; the base dir moves /opt/ml into the job root.
        env.update({contract.ENV_BASE_DIR: str(self.root), contract.ENV_JOB_NAME: self.name,
                    contract.ENV_JOB_ARN: self.arn, "PYTHONUNBUFFERED": "1"})
        return env

    def _fail_before_start(self, exc: Exception) -> AdeError:
        """The job cannot start: output/failure and a Failed status, as SageMaker reports it."""
        action = f"local job {self.name}: downloading its inputs"
        error = exc if isinstance(exc, AdeError) else aws_error(action, exc)
        reason = " ".join(str(error.message).split())
        try:
            self.paths.failure_file.write_text(reason + "\n")
            self._log(f"local runner: {reason}")
        except OSError:
            pass
        self._failure, self._ended = f"ClientError: {reason}", _now()
        self._transition("Failed", reason)
        with self._lock:
            self._status = "Failed"
        self._save_state()
        self._done.set()
        return error

    def _materialise_channels(self) -> None:
        materialise_channels(self.request, self.paths, self.clients)

    def _pump_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log_path, "a", encoding="utf-8") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                if self.stream is not None:
                    self.stream.write(line)
                    self.stream.flush()

    def _supervise(self) -> None:
        assert self.proc is not None
        while True:
            try:
                code = self.proc.wait(timeout=self._next_wait_s())
                break
            except subprocess.TimeoutExpired:
                self._sync_checkpoints()
                self._enforce_max_runtime()
        # The log is complete before anyone is told the job ended (an orphan holding the pipe: 10 s at most),
        # and a SIGKILL after the grace period has left nothing running.
        self._pump.join(timeout=10)
        self._killed.wait(KILL_WAIT_S + 1)
        self._finish(code)

    def _max_runtime_left_s(self) -> float | None:
        limit = (self.request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        if not limit or self._started is None:
            return None
        return float(limit) - (_now() - self._started).total_seconds()

    def _next_wait_s(self) -> float:
        left = self._max_runtime_left_s()
        return CHECKPOINT_SYNC_S if left is None else max(0.1, min(CHECKPOINT_SYNC_S, left))

    def _enforce_max_runtime(self) -> None:
        """MaxRuntimeInSeconds holds in local mode too (the budget caps it): the job is stopped as
        SageMaker stops it, and its run ends KILLED with ade.stop_reason=max_runtime."""
        left = self._max_runtime_left_s()
        if left is not None and left <= 0 and not self._stop_requested:
            limit = self.request["StoppingCondition"]["MaxRuntimeInSeconds"]
            self._log(f"local runner: MaxRuntimeInSeconds={limit} reached; stopping the job")
            self._max_runtime_hit = True
            self.stop("max_runtime", f"max_runtime: the job reached MaxRuntimeInSeconds={limit}",
                      secondary="MaxRuntimeExceeded")

    def _sync_checkpoints(self, everything: bool = False) -> None:
        if self._checkpoints is not None:
            try:
                # The last sync sends everything: a same-size rewrite within one mtime tick looks unchanged.
                self._checkpoints.upload_from(self.paths.checkpoint_dir, everything=everything)
            except Exception as exc:  # a failed sync must not kill the job; the final sync retries
                self._log(f"local runner: checkpoint sync failed: {describe(exc)}")

    def _finish(self, code: int) -> None:
        self._transition("Uploading", "Uploading generated training model")
        self._sync_checkpoints(everything=True)
        try:
            self._model_uri = self._upload_model() if self._upload else ""
        except Exception as exc:
            self._failure = f"ClientError: uploading the model failed: {describe(exc)}"
            code = code or 1
        if code == 0:  # the entry completed and its run ended FINISHED: a stop that came later changes nothing
            status = "Completed"
        elif self._stop_requested or self._stopped_itself(code):
            status = "Stopped"
        else:
            status = "Failed"
            self._failure = self._failure or self._failure_reason(code)
        self._ended = _now()
        secondary = self._last_secondary(status)
        self._transition(secondary, {"Completed": "Training job completed", "Stopped": self.stop_message(),
                                     "Failed": self._failure or ""}[status])
        with self._lock:
            self._status, self._secondary = status, secondary
        self._save_state()
        self._done.set()
        if self._on_end is not None:
            self._on_end(self)

    def _last_secondary(self, status: str) -> str:
        """SageMaker's last SecondaryStatus: a stop at MaxRuntimeInSeconds and a spot reclaim say so."""
        if status != "Stopped":
            return status
        if self._max_runtime_hit:
            return "MaxRuntimeExceeded"
        reason = self.stop_message().partition(": ")[2].split(":", 1)[0].strip()
        return "Interrupted" if reason == "spot_interrupted" else "Stopped"

    def _stopped_itself(self, code: int) -> bool:
        """Whether the launcher stopped on purpose without our stop(): its budget, or a SIGTERM sent to it
        directly (a spot reclaim played by hand). It then exits 143 and writes output/failure only for a
        stop of its own, led by the reason ("budget: ..."); an entry that exits 143 by itself leaves its
        last words there instead. SageMaker would say Failed (any nonzero exit); "Stopped", its word for a
        stopped job, keeps the run KILLED with its stop reason in every reader of job.json."""
        if code != EXIT_STOPPED:
            return False
        if not self.paths.failure_file.is_file():
            return True
        return self.paths.failure_file.read_text().split(":", 1)[0].strip() in STOP_REASONS

    def stop_message(self) -> str:
        detail = self.paths.failure_file.read_text().strip() if self.paths.failure_file.is_file() else ""
        return f"Training job stopped{': ' + detail.splitlines()[0] if detail else ''}"

    def _failure_reason(self, code: int) -> str:
        # As SageMaker does: the failure file's first 1024 characters (the launcher puts the cause first).
        detail = self.paths.failure_file.read_text().strip() if self.paths.failure_file.is_file() else ""
        return f"AlgorithmError: {detail[:FAILURE_REASON_CHARS].rstrip() or f'exit code {code}'}"

    def _upload_model(self) -> str:
        return upload_model(self.paths, self.request["OutputDataConfig"]["S3OutputPath"], self.name, self.clients)

    def stop(self, reason: str = "stopped", detail: str = STOP_DETAIL, secondary: str = "Stopping") -> None:
        """SIGTERM to the launcher's process group, its reason written first (a SIGTERM alone cannot say
        why: the launcher reads it to tag the run); SIGKILL after the grace period. A no-op once the launcher
        has exited: the job is over (its model may still be uploading) and ends as the launcher said."""
        if self.proc is None or self._done.is_set() or self.exited:
            return
        self._stop_requested = True
        try:
            self.paths.stop_reason_file.write_text(f"{reason}\n{detail}\n")
        except OSError as exc:  # the stop goes on; the launcher then says "stopped"
            self._log(f"local runner: cannot write {self.paths.stop_reason_file}: {exc}")
        with self._lock:
            if self._status in ENDED:  # it ended meanwhile: a Stopping now would be its last word
                return
            self._status, self._secondary = "Stopping", secondary
        self._save_state()
        threading.Thread(target=self._terminate_when_ready, daemon=True).start()
        killer = threading.Timer(STOP_GRACE_S, self._kill)
        killer.daemon = True  # must not keep `mlflow run` alive once the job has stopped
        killer.start()

    def _terminate_when_ready(self) -> None:
        """SIGTERM once the launcher can handle it: sent while its interpreter starts, it would kill the
        launcher before it could end the run. Bounded: the launcher's end, or the SIGKILL after the grace."""
        assert self.proc is not None
        while not self.paths.launcher_ready_file.is_file() and self.proc.poll() is None:
            time.sleep(0.05)
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def _kill(self) -> None:
        """The grace period is over: SIGKILL the entry's process group (its own session) and the launcher's."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._log(f"local runner: still running {STOP_GRACE_S:g} s after SIGTERM; sending SIGKILL")
        try:
            entry_group: tuple[int, ...] = (int(self.paths.entry_pgid_file.read_text()),)
        except (OSError, ValueError):  # no entry yet
            entry_group = ()
        # The launcher's tree (torchrun workers have sessions of their own) and the entry's group (whose
        # members outlive a `sh -c` parent that died at the SIGTERM). The job ends once they are gone.
        self._killed.clear()
        try:
            left = wait_gone(kill_tree(self.proc.pid, entry_group), KILL_WAIT_S)
            if left:
                self._log(f"local runner: processes {sorted(left)} still running {KILL_WAIT_S:g} s after SIGKILL")
        finally:
            self._killed.set()

    @property
    def launched(self) -> bool:
        """Whether the job's launcher was started (it then runs until stopped, whoever follows it)."""
        return self._started is not None

    @property
    def exited(self) -> bool:
        """Whether the launcher has exited (the job may still be packing and uploading its model)."""
        return self.proc is not None and self.proc.poll() is not None

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        self._done.wait(timeout)
        return self.describe()

    @property
    def log_files(self) -> list[Path]:
        """What the follower uploads to the run's logs/ (a folder: its files)."""
        return [self.log_path]

    # ------------------------------------------------------------ answers
    @property
    def arn(self) -> str:
        return f"arn:aws:sagemaker:local:000000000000:training-job/{self.name}"

    def _transition(self, status: str, message: str) -> None:
        now = _now()
        with self._lock:
            if self._transitions:
                self._transitions[-1]["EndTime"] = now
            self._transitions.append({"Status": status, "StartTime": now, "StatusMessage": message})
            self._secondary = status
        self._save_state()

    def _save_state(self) -> None:
        """job.json in the job root, replaced whole, so a reader never sees half an answer."""
        if not self.root.is_dir():
            return
        target = self.root / STATE_FILE
        tmp = target.with_name(STATE_FILE + ".tmp")
        with self._save_lock:
            tmp.write_text(json.dumps(self.describe(), default=_iso))
            os.replace(tmp, target)

    def restore(self) -> None:
        """A runner taking over a prepared job root (detached start) continues its transitions."""
        saved = read_state(self.root)
        if saved:
            self._transitions = saved.get("SecondaryStatusTransitions", [])
            self._created = saved.get("CreationTime", self._created)
        if self._checkpoints is not None:  # what prepare() downloaded need not go back up
            self._checkpoints.mark_sent(self.paths.checkpoint_dir)

    def _log(self, line: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(line + "\n")

    def describe(self) -> dict[str, Any]:
        with self._lock:
            answer = {key: self.request[key] for key in (
                "AlgorithmSpecification", "RoleArn", "HyperParameters", "InputDataConfig", "OutputDataConfig",
                "ResourceConfig", "StoppingCondition", "CheckpointConfig", "Environment",
                "EnableManagedSpotTraining") if key in self.request}
            answer.update({
                "TrainingJobName": self.name, "TrainingJobArn": self.arn, "TrainingJobStatus": self._status,
                "SecondaryStatus": self._secondary,
                "SecondaryStatusTransitions": [dict(t) for t in self._transitions],
                "CreationTime": self._created, "ModelArtifacts": {"S3ModelArtifacts": self._model_uri},
                "BillableTimeInSeconds": 0,
            })
            if self._started:
                answer["TrainingStartTime"] = self._started
                end = self._ended or _now()
                answer["TrainingTimeInSeconds"] = int((end - self._started).total_seconds())
            if self._ended:
                answer["TrainingEndTime"] = self._ended
            if self._failure and self._status == "Failed":
                answer["FailureReason"] = self._failure
        return answer
