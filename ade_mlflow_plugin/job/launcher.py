"""The job's entry: container contract -> MLflow run -> the MLproject entry command.

Started through the `ade_entry.py` shim with the code already unpacked next to it (by bootstrap.py,
which keeps the launcher at PID 1 so SageMaker's SIGTERM reaches it, or by AWS's toolkit), or by the
local runner as `python -m ade_mlflow_plugin.job.launcher` (code fetched from
`sagemaker_submit_directory` and unpacked safely). It ends the MLflow run itself (FINISHED, FAILED,
KILLED), so the run is right even when nobody follows the job, and writes output/failure on error.
What the client sent is read only through contract.decode(); the launcher imports nothing from backend/.
"""
from __future__ import annotations

import collections
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ade_mlflow_plugin.job import bootstrap, contract, gpus
from ade_mlflow_plugin.job.budget import budget_clock, start_budget_guard
from ade_mlflow_plugin.job.deps import install_missing_requirements
from ade_mlflow_plugin.job.procs import group_members, kill_tree, stops_held, wait_for_group
from ade_mlflow_plugin.job.run_state import (SIGTERM_DETAIL, end_run, record_stop, recorded_stop, reopen_run,
                                            sigterm_reason)

EXIT_STOPPED = 143
FAILURE_TAIL_LINES = 40
#: A stop of the launcher's own (the budget) allows the entry what SageMaker allows on its stops (120 s),
#: less a margin for the launcher's last words.
STOP_GRACE_S = 110.0
STOP_REASON_TAG = contract.STOP_REASON_TAG  # where submitted_run.py reads it from
#: torch's own default for the static rendezvous: a host whose peers never come fails after this long.
RENDEZVOUS_TIMEOUT_S = 600
#: What torchrun prints when its hosts did not all meet: the store timed out waiting for clients (on the
#: first host) or could not be reached (on the others).
_RENDEZVOUS_FAILED = re.compile(r"(DistStoreError|DistNetworkError): (.*(waiting for clients|while trying to "
                                r"connect|Connection refused).*)")
#: A torchrun worker's exception line, e.g. "[rank1]: ValueError: ...".
_WORKER_ERROR = re.compile(r"^\[rank\d+\]: (\w+(\.\w+)*(Error|Exception|Interrupt)\b.*)")
#: torchrun's summary of a failed worker: "  exitcode  : 143 (pid: 4242)".
_WORKER_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
#: A worker that stopped on SIGTERM: it exited 143 after its checkpoint, or the signal ended it (-15).
_STOPPED_EXITS = (EXIT_STOPPED, -15)


class LaunchError(Exception):
    """A problem with the job's inputs: one line, written to output/failure."""


@dataclass
class Launch:
    """Everything the launcher resolved before starting the entry."""

    paths: contract.ContainerPaths
    job: contract.JobContract
    resource: dict[str, Any]
    project_dir: Path = Path(".")
    command: str = ""
    env: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- code
def _check_member(member: tarfile.TarInfo) -> None:
    # The "data" filter would quietly strip a leading "/"; an archive that asks for one is refused.
    if member.name.startswith("/") or ".." in Path(member.name).parts:
        raise LaunchError(f"refusing the code archive: member '{member.name}' points outside the code dir; "
                          "rebuild it from the project directory")


def _safe_extract(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                _check_member(member)
            # The "data" filter also refuses links leaving dest, device files and odd modes.
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise LaunchError(f"refusing the code archive: {exc}; rebuild it from the project directory") from None
    except (tarfile.ReadError, EOFError, OSError) as exc:
        raise LaunchError(f"the code archive {archive} is not a readable tar.gz ({type(exc).__name__}); "
                          "resubmit the job") from None


def _download(uri: str, region: str | None, tmp: str) -> Path:
    if not uri.startswith("s3://"):  # a local runner's archive, its file:// URI decoded (a space in its path)
        return contract.local_path(uri)
    try:
        return Path(bootstrap.download_archive(uri, region, tmp))  # the job's one code fetcher (boto3)
    except Exception as exc:  # botocore raises several types; errors.py says which in one line
        # errors.py (which needs mlflow) only on this path: the local runner's, where mlflow is installed.
        from ade_mlflow_plugin.errors import describe

        raise LaunchError(f"cannot download the code archive {uri}: {describe(exc)}; check the job role's "
                          "s3:GetObject permission or resubmit the job") from None


def _fetch_code(uri: str, dest: Path, region: str | None = None) -> None:
    """Download (s3://) or locate (file://, path) the code archive and unpack it into dest."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download(uri, region, tmp)
        if not archive.is_file():
            raise LaunchError(f"the code archive {uri} does not exist; resubmit the job")
        dest.mkdir(parents=True, exist_ok=True)
        _safe_extract(archive, dest)


def locate_project(paths: contract.ContainerPaths, job: contract.JobContract) -> Path:
    shim_dir = Path(sys.argv[0]).resolve().parent
    for candidate in (shim_dir, Path.cwd(), paths.code_dir):
        if (candidate / "MLproject").is_file():
            return candidate
    if not job.code_uri:
        raise LaunchError(f"no MLproject in the code dir and no {contract.HP_SUBMIT_DIRECTORY} hyperparameter")
    _fetch_code(job.code_uri, paths.code_dir, job.region)
    if not (paths.code_dir / "MLproject").is_file():
        raise LaunchError(f"the code archive {job.code_uri} holds no MLproject at its root")
    return paths.code_dir


# ---------------------------------------------------------------- command
def build_command(launch: Launch) -> str:
    with stops_held():  # a stop mid-import would leave a half-imported mlflow that cannot end the run
        from mlflow.projects.utils import load_project

        from ade_mlflow_plugin.errors import first_line  # needs mlflow, like load_project: not before install

    entry_point = launch.job.entry_point
    values = contract.param_values(launch.job, launch.paths)  # a missing channel says so itself
    try:
        project = load_project(str(launch.project_dir))
        entry = project.get_entry_point(entry_point)
        with tempfile.TemporaryDirectory() as storage:
            return entry.compute_command(values, storage)
    except Exception as exc:  # MLflow's ExecutionException for unknown entry points and missing params
        raise LaunchError(f"cannot build the command of entry point '{entry_point}': {first_line(exc)}") from None


def distributed(command: str, resource: dict[str, Any], num_gpus: int) -> str:
    """Wrap a `python script.py ...` command in torchrun for >1 GPU/process or >1 host."""
    hosts = resource.get("hosts", ["algo-1"])
    nproc = _knob(contract.ENV_NPROC_PER_NODE, max(num_gpus, 1))
    if nproc <= 1 and len(hosts) <= 1:
        return command
    parts = shlex.split(command)
    if not parts or Path(parts[0]).name not in {"python", "python3"}:
        print(f"launcher: entry command does not start with python; running it once per host: {command}")
        return command
    current = resource.get("current_host", hosts[0])
    master, port = rendezvous_address(hosts)
    timeout = _knob(contract.ENV_RENDEZVOUS_TIMEOUT_S, RENDEZVOUS_TIMEOUT_S)
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(hosts)}",
                f"--node_rank={hosts.index(current)}", f"--nproc_per_node={nproc}",
                f"--master_addr={master}", f"--master_port={port}",
                # The static rendezvous waits this long for every host, then fails: never for ever.
                f"--rdzv_conf=timeout={timeout}"]
    return shlex.join(torchrun + parts[1:])


def _knob(name: str, default: int) -> int:
    """A whole number > 0 from the environment (the backend checks the config's; the shell's reaches a local job
    unchecked): a bad one is one line naming the variable, not int()'s "invalid literal"."""
    value = os.environ.get(name)
    if not value:
        return default
    if not value.strip().isdigit() or int(value) < 1:
        raise LaunchError(f"{name}={value!r} is not a whole number > 0: fix or unset it (backend config "
                          "\"environment\", or this machine's environment in local mode)")
    return int(value)


def rendezvous_address(hosts: list[str]) -> tuple[str, str]:
    """(address, port) where torchrun's hosts meet: ADE_MASTER_ADDR when set (the local runner's loopback),
    else the first host's name (SageMaker resolves algo-1), or loopback for one host."""
    master = os.environ.get(contract.ENV_MASTER_ADDR) or (hosts[0] if len(hosts) > 1 else "127.0.0.1")
    return master, os.environ.get(contract.ENV_MASTER_PORT, "29500")


def rendezvous_failure(tail: list[str], resource: dict[str, Any]) -> str | None:
    """One line for a host whose torchrun could not meet the other hosts (None when that was not the cause)."""
    hosts = resource.get("hosts") or ["algo-1"]
    found = next((m for m in map(_RENDEZVOUS_FAILED.search, reversed(tail)) if m), None)
    if found is None or len(hosts) < 2:
        return None
    master, port = rendezvous_address(hosts)
    return (f"host {resource.get('current_host', hosts[0])} could not rendezvous with the other "
            f"{len(hosts) - 1} host(s) at {master}:{port} ({found.group(2).strip()}); check that all {len(hosts)} "
            f"hosts started and reach that port, or raise {contract.ENV_RENDEZVOUS_TIMEOUT_S}")


def child_env(launch: Launch, num_gpus: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(contract.sm_environment(launch.paths, launch.resource, num_gpus))
    run = launch.job.run
    for var, value in ((contract.ENV_RUN_ID, run.run_id), (contract.ENV_EXPERIMENT_ID, run.experiment_id),
                       (contract.ENV_TRACKING_URI, run.tracking_uri)):
        if not env.get(var) and value:  # the request's Environment wins; hyperparameters fill the gaps
            env[var] = value
    # torchrun gives its workers 30 s after a SIGTERM before it SIGKILLs them; SageMaker allows 120 s.
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "110")
    # `python` in the entry command means this interpreter (the image's, or the local venv's).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    bundle = launch.project_dir / contract.BUNDLE_DIR
    if bundle.is_dir():  # the entry scripts import this package from the bundle when the image lacks it
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(bundle), env.get("PYTHONPATH")]))
    return env


# ---------------------------------------------------------------- run
class EntryProcess:
    """The entry command in its own process group; SIGTERM is forwarded; output is teed and its tail kept."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=FAILURE_TAIL_LINES)
        self.terminated = False
        self.stop_reason: str | None = None  # set when the launcher itself stopped the entry (the budget)
        self.stop_detail = ""
        self._killer: threading.Timer | None = None
        self.proc = subprocess.Popen(command, shell=True, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace",
                                     start_new_session=True)
        self._pump = threading.Thread(target=self._copy_output, daemon=True)
        self._pump.start()

    def record_group(self, pgid_file: Path) -> None:
        try:
            pgid_file.write_text(str(self.proc.pid))
        except OSError as exc:  # only the local runner's last-resort SIGKILL needs it
            print(f"launcher: cannot write {pgid_file}: {exc}", file=sys.stderr)

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            self.tail.append(line.rstrip("\n"))

    def forward(self, signum: int, _frame: Any = None) -> None:
        self.terminated = True
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, reason: str, detail: str, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the entry as SageMaker would: SIGTERM to its group, SIGKILL to what is left after grace_s."""
        self.stop_reason, self.stop_detail = reason, detail
        self.forward(signal.SIGTERM)
        self._killer = threading.Timer(grace_s, self._kill)
        self._killer.daemon = True
        self._killer.start()

    def _kill(self) -> None:
        if self.proc.poll() is None or group_members(self.proc.pid):
            print(f"launcher: the entry is still running {STOP_GRACE_S:g} s after SIGTERM; SIGKILL", flush=True)
            kill_tree(self.proc.pid, (self.proc.pid,))

    def wait(self) -> int:
        code = self.proc.wait()
        if self.terminated:
            # `sh -c` dies at once on SIGTERM while the entry under it may still be writing its checkpoint:
            # the job is over only when the whole group is gone (SIGKILL after the grace period bounds it).
            wait_for_group(self.proc.pid)
        if self._killer is not None:
            self._killer.cancel()  # the group is gone: its pid may be reused
        # The output ends at EOF; a daemon that left the group and holds the pipe must not stall the job.
        self._pump.join(timeout=2)
        return code


def failure_text(tail: list[str], code: int) -> str:
    """The failure file: the entry's last words first, then the output tail they came from.

    SageMaker returns the start of this file (its first 1024 characters) as the job's FailureReason,
    so the line that says what went wrong (an entry's one-line error, a traceback's exception) leads.
    """
    lines = [line for line in tail if line.strip()]
    if not lines:
        return f"entry exited with code {code}"
    # Under torchrun the last line is its summary banner; a worker's own exception says what went wrong.
    worker_errors = [m.group(1) for m in map(_WORKER_ERROR.match, lines) if m]
    cause = worker_errors[-1] if worker_errors else lines[-1].strip()
    return cause + "\n\n" + "\n".join(tail)


def _write_failure(paths: contract.ContainerPaths, text: str) -> None:
    try:
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        paths.failure_file.write_text(text[-20000:] + "\n")
    except OSError as exc:
        print(f"launcher: cannot write {paths.failure_file}: {exc}", file=sys.stderr)


class Stopped(BaseException):
    """SIGTERM/SIGINT arrived before the entry started (while fetching code, installing or reopening the
    run). A BaseException, like KeyboardInterrupt: the preparation's `except Exception` clauses (a failed
    download, a tracking server that does not answer) must not swallow a stop."""


class SignalRouter:
    """SIGTERM/SIGINT: before the entry exists, abort the preparation; afterwards, forward to the entry.

    One handler for the whole life of the launcher, so no signal falls between two handlers.
    """

    def __init__(self) -> None:
        self.entry: EntryProcess | None = None
        #: Called before the first forward: a host of a multi-host job records why it stops (run_entry).
        self.before_stop: Callable[[], None] | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)

    def __call__(self, signum: int, _frame: Any = None) -> None:
        if self.entry is None:
            raise Stopped(signal.Signals(signum).name)
        if self.entry.terminated:
            return  # the entry is already stopping (its grace is bounded): a second SIGTERM would cut it short
        if self.before_stop is not None:
            self.before_stop()
        self.entry.forward(signum)


def prepare(paths: contract.ContainerPaths, launch: Launch) -> None:
    launch.project_dir = locate_project(paths, launch.job)
    install_missing_requirements(launch.project_dir)
    num_gpus = gpus.gpu_count()
    launch.command = distributed(build_command(launch), launch.resource, num_gpus)
    launch.env = child_env(launch, num_gpus)


def _fail(paths: contract.ContainerPaths, launch: Launch, exc: BaseException) -> int:
    message = "ade launcher: " + " ".join(str(exc).split())  # one line, for FailureReason
    print(message, file=sys.stderr)
    _write_failure(paths, message)
    end_run(launch.env or child_env(launch, 0), "FAILED", launch.resource)
    return 1


def run_entry(paths: contract.ContainerPaths, launch: Launch, router: SignalRouter,
              clock: Callable[[], float] | None = None) -> int:
    """Run the entry to its end; SIGTERM/SIGINT are forwarded to its process group."""
    print(f"launcher: running in {launch.project_dir}: {launch.command}", flush=True)
    entry = router.entry = EntryProcess(launch.command, launch.project_dir, launch.env)
    entry.record_group(paths.entry_pgid_file)
    router.before_stop = lambda: _say_why(paths, launch, entry)

    def budget_stop(reason: str, detail: str) -> None:
        record_stop(launch.env, launch.resource, reason, detail)  # before the peers notice (multi-host)
        entry.stop(reason, detail)

    guard = start_budget_guard(launch.job, launch.resource, launch.env, paths.checkpoint_dir, budget_stop, clock)
    try:
        code = entry.wait()
    finally:
        if guard is not None:
            guard.finish()
    if entry.terminated:
        return _stopped(paths, launch, entry, code)
    if code != 0:
        cause = rendezvous_failure(list(entry.tail), launch.resource)
        elsewhere = None if cause else stopped_elsewhere(paths, launch, list(entry.tail))
        if elsewhere is not None:
            entry.stop_reason, entry.stop_detail = elsewhere
            return _stopped(paths, launch, entry, code)
        text = failure_text(list(entry.tail), code)
        _write_failure(paths, f"{cause}\n\n{text}" if cause else text)
        end_run(launch.env, "FAILED", launch.resource)
        return code if 0 < code < 256 else 1
    end_run(launch.env, "FINISHED", launch.resource)
    return 0


def _say_why(paths: contract.ContainerPaths, launch: Launch, entry: EntryProcess) -> None:
    """A SIGTERM to a host of a multi-host job: its reason is found out now and recorded on the run before the
    entry hears of it, so that the other hosts, whose entries end with this one's, read why (stopped_elsewhere)."""
    if len(launch.resource.get("hosts") or ()) < 2:
        return  # one host: the reason is found out after the entry's end, as it always was
    try:
        entry.stop_reason, entry.stop_detail = sigterm_reason(paths, launch.env, launch.job.region)
        record_stop(launch.env, launch.resource, entry.stop_reason, entry.stop_detail)
    except Exception as exc:  # noqa: BLE001 - in a signal handler: the stop must go on whatever happens
        print(f"launcher: cannot say why the job stops: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def stopped_elsewhere(paths: contract.ContainerPaths, launch: Launch, tail: list[str]) -> tuple[str, str] | None:
    """(reason, detail) when this host's entry ended because the job was stopped on another host, None when it
    failed. A multi-host job's ranks end together: on a stop they agree to checkpoint and exit 143 at the same
    step, or a rank loses its collective's partner and raises. Neither is a failure when a stop was recorded on
    the run (record_stop, before any host signals its entry); without one, only an entry whose every failed
    worker exited as stopped (a SIGTERM sent to a training process itself) is."""
    if len(launch.resource.get("hosts") or ()) < 2:
        return None
    recorded = recorded_stop(launch.env, launch.resource)
    if recorded is not None:
        return recorded
    exits = {int(m.group(1)) for m in map(_WORKER_EXIT.match, tail) if m}
    if not exits or not exits <= set(_STOPPED_EXITS):
        return None
    reason, detail = sigterm_reason(paths, launch.env, launch.job.region)
    if detail == SIGTERM_DETAIL:
        detail = "stopped: a training process of the job got SIGTERM; every rank stopped at its checkpoint"
    return reason, detail


def _stopped(paths: contract.ContainerPaths, launch: Launch, entry: EntryProcess, code: int) -> int:
    """The entry was stopped (our budget, or a SIGTERM from SageMaker or the local runner): the run ends
    KILLED with the reason, and output/failure starts with it ("budget: ..."), which is how SageMaker's
    FailureReason and the local runner tell a stop from an entry that failed with exit code 143."""
    reason, detail = entry.stop_reason, entry.stop_detail
    if not reason:
        reason, detail = sigterm_reason(paths, launch.env, launch.job.region)
    if reason == contract.PEER_FAILED:
        return _peer_failed(paths, launch, detail)
    print(f"launcher: stopped ({detail}); the entry exited with {code}", flush=True)
    _write_failure(paths, detail)
    end_run(launch.env, "KILLED", launch.resource,
            {contract.STOP_REASON_TAG: reason, contract.STOP_DETAIL_TAG: detail})
    return EXIT_STOPPED


def _peer_failed(paths: contract.ContainerPaths, launch: Launch, detail: str) -> int:
    """Another host of the job failed and the runner stopped this one: the job failed, and so does its run."""
    print(f"launcher: stopped because {detail}", flush=True)
    _write_failure(paths, detail)
    end_run(launch.env or child_env(launch, 0), "FAILED", launch.resource)
    return 1


def main() -> int:
    router = SignalRouter()
    router.install()
    clock = budget_clock()  # the job is billed from about now
    paths = contract.ContainerPaths.from_env()
    _say_ready(paths)
    launch = Launch(paths, contract.decode_hyperparameters({}), {})
    try:
        launch.job = contract.decode(paths)
        launch.resource = contract.read_resource_config(paths)
        paths.make_dirs()
        prepare(paths, launch)
        reopen_run(launch.env, launch.resource)
    except Stopped as stop:
        print(f"launcher: {stop} before the entry started; stopping", file=sys.stderr)
        return _end_stopped_early(paths, launch)
    except Exception as exc:  # any failure before the entry starts ends the job FAILED with a reason
        return _fail(paths, launch, exc)
    try:
        return run_entry(paths, launch, router, clock)
    except Stopped:  # only if the signal beat the entry's start by a hair; nothing ran yet
        return _end_stopped_early(paths, launch)


def _say_ready(paths: contract.ContainerPaths) -> None:
    """A stop can be handled from now on (the local runner waits for this before its SIGTERM)."""
    try:
        paths.launcher_ready_file.write_text(f"{os.getpid()}\n")
    except OSError:
        pass  # a read-only base: the runner's SIGTERM then comes when it comes, as on SageMaker


def _end_stopped_early(paths: contract.ContainerPaths, launch: Launch) -> int:
    reason, detail = sigterm_reason(paths, launch.env or dict(os.environ), launch.job.region)
    if reason == contract.PEER_FAILED:
        return _peer_failed(paths, launch, detail)
    _write_failure(paths, detail)
    end_run(launch.env or child_env(launch, 0), "KILLED", launch.resource,
            {contract.STOP_REASON_TAG: reason, contract.STOP_DETAIL_TAG: detail})
    return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
