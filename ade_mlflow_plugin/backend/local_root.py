"""A local job's root seen from outside the process running it: the file names it keeps (job.json, the
runner's pid, a detached job's request and output, each host's log) and JobRoot, which answers describe()
from them, so `status`, `reconcile`, `logs` and a detached job's submitter follow a job they did not start."""
from __future__ import annotations

import json
import os
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.errors import ConfigError

#: In the job root: the last describe() answer (`ade-mlflow status` reads it with nobody following),
#: the pid of the process supervising the job, the request of a detached job, and that runner's output.
STATE_FILE, RUNNER_PID_FILE, REQUEST_FILE, RUNNER_LOG = "job.json", "runner.pid", "request.json", "runner.log"
ENDED = ("Completed", "Failed", "Stopped")
#: In a multi-host job's root: each host's own log, logs/algo-N.log (local_hosts.py).
HOST_LOGS_DIR = "logs"
_TIMES = ("CreationTime", "TrainingStartTime", "TrainingEndTime")


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def read_state(root: Path) -> dict[str, Any] | None:
    """The job's last saved describe() answer (times as datetimes again), or None before the first save."""
    try:
        state = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    for key in _TIMES:
        if state.get(key):
            state[key] = datetime.fromisoformat(state[key])
    for transition in state.get("SecondaryStatusTransitions", []):
        for key in ("StartTime", "EndTime"):
            if transition.get(key):
                transition[key] = datetime.fromisoformat(transition[key])
    return state


class JobRoot:
    """A local job seen from its job root only (`status`, `reconcile`, a detached job's submitter):
    answers describe() like LocalJob. A job whose supervising process is gone without an end state
    reads Failed, so no run waits for ever on a job nobody runs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.name = self.root.name
        self.log_path = self.root / "job.log"

    @property
    def log_files(self) -> list[Path]:
        """As LocalJob.log_files: job.log, and each host's own log of a multi-host job (logs/)."""
        hosts = self.root / HOST_LOGS_DIR
        return [self.log_path, hosts] if hosts.is_dir() else [self.log_path]

    def runner_pid(self) -> int | None:
        try:
            return int((self.root / RUNNER_PID_FILE).read_text())
        except (OSError, ValueError):
            return None

    def describe(self) -> dict[str, Any]:
        state = read_state(self.root)
        if state is None:
            if not self.root.is_dir():
                raise ConfigError(f"local job root {self.root} does not exist: check \"job_root\" (--job-root)")
            return {"TrainingJobName": self.name, "TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting",
                    "SecondaryStatusTransitions": []}
        if state["TrainingJobStatus"] in ("InProgress", "Stopping"):
            pid = self.runner_pid()
            if pid is not None and not _pid_alive(pid):
                state.update(TrainingJobStatus="Failed", SecondaryStatus="Failed",
                             FailureReason=f"ClientError: the process running the local job (pid {pid}) ended "
                                           f"before the job did; see {self.root / RUNNER_LOG} and {self.log_path}")
        return state

    def stop(self) -> None:
        """SIGTERM to the runner, which stops the job as SageMaker does (LocalJob.stop)."""
        pid = self.runner_pid()
        if pid is not None and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
