"""`"wait": false` in local mode: the job runs in a process of its own session (the runner), which outlives
`mlflow run`; the submitter only prepares the job root, so bad input still fails at submission."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ade_mlflow_plugin.backend.aws import AwsClients
from ade_mlflow_plugin.backend.interrupts import sigint_deferred
from ade_mlflow_plugin.backend.local_root import ENDED, REQUEST_FILE, RUNNER_LOG, RUNNER_PID_FILE, JobRoot

if TYPE_CHECKING:
    from ade_mlflow_plugin.backend.local import LocalJob


def _local_job(request: dict[str, Any], **kwargs: Any) -> "LocalJob":
    # local.py re-exports this module's functions: importing it at call time keeps the two free of a cycle.
    from ade_mlflow_plugin.backend.local import LocalJob

    return LocalJob(request, **kwargs)


def start_detached(request: dict[str, Any], root: Path, clients: AwsClients | None = None) -> JobRoot:
    """Prepare the job here (bad input fails now, in the submitter), then run it in a process of its own
    session, its output in the job root and no pipe back: it survives the submitter's exit."""
    job = _local_job(request, job_root=root, clients=clients, stream=None)
    job.prepare()
    region, profile = (clients.region, clients.profile) if clients else (None, None)
    (job.root / REQUEST_FILE).write_text(json.dumps({"request": request, "region": region, "profile": profile}))
    code = "from ade_mlflow_plugin.backend.local_detached import runner_main; runner_main()"
    # A Ctrl-C between the runner's start and its pid file would leave a runner nobody knows of.
    with sigint_deferred(), open(job.root / RUNNER_LOG, "ab") as log:
        runner = subprocess.Popen([sys.executable, "-c", code, str(job.root)], cwd=job.root, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (job.root / RUNNER_PID_FILE).write_text(f"{runner.pid}\n")  # until the runner writes its own
    return JobRoot(job.root)


def runner_main(argv: list[str] | None = None) -> int:
    """The detached runner: run a prepared job root to its end; SIGTERM stops the job (grace, then KILL)."""
    root = Path((argv or sys.argv[1:])[0])
    saved = json.loads((root / REQUEST_FILE).read_text())
    job = _local_job(saved["request"], job_root=root, stream=None,
                   clients=AwsClients(region=saved.get("region"), profile=saved.get("profile")))
    job.restore()
    signal.signal(signal.SIGTERM, lambda *_: job.stop())
    job.launch()
    while job.wait(1.0)["TrainingJobStatus"] not in ENDED:  # a timed wait lets the SIGTERM handler run
        pass
    return 0
