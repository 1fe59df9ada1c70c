"""`"instance_count": N` in local mode: N hosts on this machine, as SageMaker runs a job on N instances.

Each host is a LocalJob of its own under the job root (`algo-1/` ... `algo-N/`: its resourceconfig.json
naming it current_host, its channels, checkpoints and output) with its own launcher. Their torchruns meet
over loopback (ADE_MASTER_ADDR=127.0.0.1, a free port), with a rendezvous timeout, so a host whose peers
never come fails with one line instead of waiting. Only the lead host (algo-1, node rank 0) talks to MLflow
and only its model is uploaded, as the job's model.

The job root keeps what a single-host job keeps (job.json, runner.pid, job.log), for the job as a whole:
job.log merges every host's lines prefixed `[algo-N] ` (as the follower prints CloudWatch's streams), and
logs/algo-N.log keeps each host's own. The job's status aggregates the hosts: a stop stops every host; the
first host to end without completing decides the end: Failed (with that host's reason; the others are
stopped and their launchers end nothing but their entry) or Stopped (its reason passed on to the others).
"""
from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from ade_mlflow_plugin.backend.aws import AwsClients
from ade_mlflow_plugin.backend.interrupts import sigint_deferred
from ade_mlflow_plugin.backend.local import STOP_DETAIL, STOP_REASONS, LocalJob, _instance_count, _now
from ade_mlflow_plugin.backend.local_root import ENDED, HOST_LOGS_DIR, RUNNER_PID_FILE
from ade_mlflow_plugin.errors import AdeError, ConfigError, describe, first_line
from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.job.gpus import gpu_count, visible_device_count

#: Hosts of one machine start together: a peer missing this long is not coming (SageMaker keeps torch's 600 s).
LOCAL_RENDEZVOUS_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def visible_gpus(request: dict[str, Any]) -> list[str]:
    """The GPUs this machine lends its jobs: CUDA_VISIBLE_DEVICES when set (empty: none), read as CUDA reads it,
    up to its first invalid entry ("0,-1,1" lends one GPU, as gpu_count and the fit check count), else
    nvidia-smi's."""
    given = {**os.environ, **(request.get("Environment") or {})}.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",")][:visible_device_count(given)]
    return [str(i) for i in range(gpu_count())]


def host_devices(count: int, gpus: list[str]) -> list[dict[str, str]]:
    """Each host's share of this machine's GPUs, as its own instance would have them: without it every
    host would see, and its rank 0 would train on, the same first GPU. No GPUs (or fewer than hosts): the
    hosts share what there is, as before."""
    if not gpus or len(gpus) < count:
        return [{} for _ in range(count)]
    each = len(gpus) // count
    return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * each:(i + 1) * each]), contract.ENV_NUM_GPUS: str(each)}
            for i in range(count)]


class HostStream:
    """One host's output, line by line, prefixed with its name: to the job's merged log and the console."""

    def __init__(self, host: str, merged_log: Path, console: TextIO | None, lock: threading.Lock) -> None:
        self.host, self.merged_log, self.console, self.lock = host, merged_log, console, lock

    def write(self, line: str) -> None:
        text = f"[{self.host}] {line if line.endswith(chr(10)) else line + chr(10)}"
        with self.lock:  # two hosts' lines never interleave mid-line
            with open(self.merged_log, "a", encoding="utf-8") as log:
                log.write(text)
            if self.console is not None:
                self.console.write(text)

    def flush(self) -> None:
        if self.console is not None:
            self.console.flush()


class LocalCluster(LocalJob):
    """A multi-host job: one LocalJob per host, supervised and described as one job."""

    def __init__(self, request: dict[str, Any], *, job_root: Path | None = None, clients: AwsClients | None = None,
                 stream: TextIO | None = sys.stdout, **_host_only: Any) -> None:
        super().__init__(request, job_root=job_root, clients=clients, stream=stream)
        self._checkpoints = None  # each host syncs its own checkpoint dir to the job's location, as on SageMaker
        self._end_order: list[LocalJob] = []
        self._all_ended = threading.Event()
        lock = threading.Lock()
        # MaxRuntimeInSeconds is kept here, for all hosts at once (one stop, one reason).
        host_request = {key: value for key, value in request.items() if key != "StoppingCondition"}
        names = [f"algo-{i + 1}" for i in range(_instance_count(request))]
        rendezvous = self._rendezvous_env(request)  # one address for all hosts
        devices = host_devices(len(names), visible_gpus(request))
        self.hosts = [
            LocalJob(host_request, job_root=self.root / name, clients=clients, host=name,
                     stream=HostStream(name, self.log_path, stream, lock),
                     log_path=self.root / HOST_LOGS_DIR / f"{name}.log", upload_model=index == 0,
                     extra_env={**rendezvous, **devices[index]}, on_end=self._host_ended)
            for index, name in enumerate(names)]

    @staticmethod
    def _rendezvous_env(request: dict[str, Any]) -> dict[str, str]:
        """Loopback and one free port for this job's hosts; a port or timeout set by the user is kept."""
        given = {**os.environ, **(request.get("Environment") or {})}
        return {contract.ENV_MASTER_ADDR: "127.0.0.1",
                contract.ENV_MASTER_PORT: given.get(contract.ENV_MASTER_PORT) or str(free_port()),
                contract.ENV_RENDEZVOUS_TIMEOUT_S: given.get(contract.ENV_RENDEZVOUS_TIMEOUT_S)
                or str(LOCAL_RENDEZVOUS_TIMEOUT_S)}

    @property
    def log_files(self) -> list[Path]:
        return [self.log_path, self.root / HOST_LOGS_DIR]

    # ------------------------------------------------------------ lifecycle
    def prepare(self) -> None:
        self._transition("Starting", f"Preparing the job roots of {len(self.hosts)} hosts")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.log_path.touch()
        except OSError as exc:
            raise ConfigError(f"job root {self.root} is not writable ({exc.strerror}): set \"job_root\" in the "
                              "backend config to a writable directory") from None
        self._transition("Downloading", "Downloading input data and checkpoints")
        for host in self.hosts:
            try:
                host.prepare()
            except AdeError:
                self._end("Failed", self._host_failure(host))
                raise

    def launch(self) -> None:
        """Every host's launcher, then the job's supervisor: all of them or, when a host cannot start, none
        left running (a Ctrl-C meanwhile waits until they all run; the caller then stops the job whole)."""
        (self.root / RUNNER_PID_FILE).write_text(f"{os.getpid()}\n")
        self._transition("Training", f"Training in progress on {len(self.hosts)} hosts of this machine")
        with sigint_deferred():
            self._started = _now()
            for host in self.hosts:
                try:
                    host.launch()
                except Exception as exc:
                    self._abort_launch(host, exc)
                    raise
            threading.Thread(target=self._supervise, daemon=True).start()

    def _abort_launch(self, host: LocalJob, exc: Exception) -> None:
        """A host could not start: the hosts already running are stopped and waited for (nothing would
        supervise them once the caller gives up), and the job ends Failed naming that host."""
        reason = f"ClientError: {host.host}: its launcher could not start: {describe(exc)}"
        running = [h for h in self.hosts if h.launched and h is not host]
        for other in running:
            other.stop(contract.PEER_FAILED, f"host {host.host} of the job could not start")
        for other in running:
            other.wait()
        self._end("Failed", reason)

    @property
    def exited(self) -> bool:
        """Whether every host's launcher has exited."""
        return all(host.exited for host in self.hosts)

    def restore(self) -> None:
        super().restore()
        for host in self.hosts:
            host.restore()

    def _supervise(self) -> None:
        while not self._all_ended.wait(self._next_wait_s()):
            self._enforce_max_runtime()
        self._finish_job()

    def _host_ended(self, host: LocalJob) -> None:
        """A host's end (its supervisor thread): the first host to end without completing ends the others."""
        status = host.describe()["TrainingJobStatus"]
        with self._lock:
            first_bad = status != "Completed" and not self._stop_requested and all(
                h.describe()["TrainingJobStatus"] == "Completed" for h in self._end_order)
            self._end_order.append(host)
            all_ended = len(self._end_order) == len(self.hosts)
        if first_bad:
            self._stop_peers(host, status)
        if all_ended:
            self._all_ended.set()

    def _stop_peers(self, host: LocalJob, status: str) -> None:
        if status == "Stopped":  # it stopped itself (its budget): the others stop for the same reason
            reason, detail = self._stop_of(host)
        else:
            reason = contract.PEER_FAILED
            detail = f"host {host.host} of the job failed: {first_line(self._host_failure(host), 300)}"
        self._log(f"local runner: {host.host} ended {status}; stopping the other hosts ({reason})")
        for other in self.hosts:
            if other is not host:
                other.stop(reason, detail)

    @staticmethod
    def _stop_of(host: LocalJob) -> tuple[str, str]:
        detail = first_line(host.stop_message().partition(": ")[2] or "stopped")
        reason = detail.split(":", 1)[0].strip()
        return (reason if reason in STOP_REASONS else "stopped"), detail

    def _finish_job(self) -> None:
        lead = self.hosts[0].describe()
        self._model_uri = (lead.get("ModelArtifacts") or {}).get("S3ModelArtifacts", "")
        first_bad = next((h for h in self._end_order if h.describe()["TrainingJobStatus"] != "Completed"), None)
        if first_bad is None:  # every host completed: a stop that came after their entries ended changes nothing
            self._end("Completed")
        elif self._stop_requested or first_bad.describe()["TrainingJobStatus"] == "Stopped":
            self._end("Stopped")
        else:
            self._end("Failed", self._host_failure(first_bad))

    def _end(self, status: str, failure: str | None = None) -> None:
        self._failure, self._ended = failure, _now()
        secondary = self._last_secondary(status)
        self._transition(secondary, {"Completed": "Training job completed", "Stopped": self.stop_message(),
                                     "Failed": failure or ""}[status])
        with self._lock:
            self._status, self._secondary = status, secondary
        self._save_state()
        self._done.set()

    def _host_failure(self, host: LocalJob) -> str:
        """A host's FailureReason, naming the host: "AlgorithmError: algo-2: ..."."""
        failure = host.describe().get("FailureReason") or "AlgorithmError: the host failed"
        kind, sep, rest = failure.partition(": ")
        return f"{kind}: {host.host}: {rest}" if sep else f"{host.host}: {failure}"

    def stop_message(self) -> str:
        stopped = [h for h in self._end_order if h.describe()["TrainingJobStatus"] == "Stopped"]
        return (stopped or self.hosts)[0].stop_message()

    def stop(self, reason: str = "stopped", detail: str = STOP_DETAIL, secondary: str = "Stopping") -> None:
        """Every host is stopped as SageMaker stops a job: SIGTERM, its reason first, SIGKILL after the grace.
        A no-op once every host's launcher has exited (the job ends as they said)."""
        if self._started is None or self._done.is_set() or self.exited:
            return
        self._stop_requested = True
        with self._lock:
            if self._status in ENDED:  # it ended meanwhile: a Stopping now would be its last word
                return
            self._status, self._secondary = "Stopping", secondary
        self._save_state()
        for host in self.hosts:
            host.stop(reason, detail, secondary)
