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
import queue
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ade_mlflow_plugin.job import bootstrap, contract
from ade_mlflow_plugin.job.deps import install_missing_requirements
from ade_mlflow_plugin.job.procs import group_members, kill_tree, wait_for_group

EXIT_STOPPED = 143
FAILURE_TAIL_LINES = 40
#: A stop of the launcher's own (the budget) allows the entry what SageMaker allows on its stops (120 s),
#: less a margin for the launcher's last words.
STOP_GRACE_S = 110.0
BUDGET_INTERVAL_S = 15.0
BUDGET_ALERTS = (0.5, 0.8)
STOP_REASON_TAG = "ade.stop_reason"


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
    nproc = int(os.environ.get(contract.ENV_NPROC_PER_NODE) or max(num_gpus, 1))
    if nproc <= 1 and len(hosts) <= 1:
        return command
    parts = shlex.split(command)
    if not parts or Path(parts[0]).name not in {"python", "python3"}:
        print(f"launcher: entry command does not start with python; running it once per host: {command}")
        return command
    current = resource.get("current_host", hosts[0])
    master = hosts[0] if len(hosts) > 1 else "127.0.0.1"
    port = os.environ.get(contract.ENV_MASTER_PORT, "29500")
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(hosts)}",
                f"--node_rank={hosts.index(current)}", f"--nproc_per_node={nproc}",
                f"--master_addr={master}", f"--master_port={port}"]
    return shlex.join(torchrun + parts[1:])


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


def _end_run(env: dict[str, str], status: str, resource: dict[str, Any],
             tags: dict[str, str] | None = None) -> None:
    """Mark the run ended (tags first); only node rank 0 does, so a multi-host job ends its run exactly once."""
    run_id = env.get(contract.ENV_RUN_ID)
    if not run_id or not contract.is_lead_host(resource):
        return
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=env.get(contract.ENV_TRACKING_URI))
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status)
    except Exception as exc:  # the job's outcome must not depend on the tracking server being up
        print(f"launcher: could not mark MLflow run {run_id} {status}: {exc}; the relay keeps it for "
              "`ade-mlflow sync-run`", file=sys.stderr)
        _relay_end(env, status, tags or {})


def _relay_end(env: dict[str, str], status: str, tags: dict[str, str]) -> None:
    from ade_mlflow_plugin.job import relay

    try:
        job_relay = relay.Relay(relay.relay_home(env))
        if tags:
            job_relay.append(relay.TAGS, tags=tags)
        job_relay.append(relay.END, status=status)
    except OSError as exc:
        print(f"launcher: cannot write the relay either: {exc}", file=sys.stderr)


def failure_text(tail: list[str], code: int) -> str:
    """The failure file: the entry's last words first, then the output tail they came from.

    SageMaker returns the start of this file (its first 1024 characters) as the job's FailureReason,
    so the line that says what went wrong (an entry's one-line error, a traceback's exception) leads.
    """
    lines = [line for line in tail if line.strip()]
    if not lines:
        return f"entry exited with code {code}"
    return lines[-1].strip() + "\n\n" + "\n".join(tail)


def _write_failure(paths: contract.ContainerPaths, text: str) -> None:
    try:
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        paths.failure_file.write_text(text[-20000:] + "\n")
    except OSError as exc:
        print(f"launcher: cannot write {paths.failure_file}: {exc}", file=sys.stderr)


# ---------------------------------------------------------------- budget
def budget_clock(env: dict[str, str] | None = None) -> Callable[[], float]:
    """Seconds the job has been billed, about: since this call (the launcher starts as the container
    does), or what ENV_BUDGET_CLOCK_FILE says (tests drive the guard through it, not the wall clock)."""
    clock_file = (os.environ if env is None else env).get(contract.ENV_BUDGET_CLOCK_FILE)
    if clock_file:
        def from_file() -> float:
            try:
                return float(Path(clock_file).read_text().strip() or 0)
            except (OSError, ValueError):
                return 0.0  # not written yet
        return from_file
    start = time.monotonic()
    return lambda: time.monotonic() - start


class RunWriter:
    """The launcher's few writes to the MLflow run (cost_usd, budget tags), made by a thread of their own
    so that a slow or absent tracking server never delays a budget check. When the server cannot be
    reached (at the first write, or when a write fails) they go to the job's relay (job/relay.py), which
    `ade-mlflow sync-run` replays into the run."""

    def __init__(self, env: dict[str, str]) -> None:
        self.run_id = env.get(contract.ENV_RUN_ID, "")
        self.uri = env.get(contract.ENV_TRACKING_URI)
        self.env = env
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._client: Any = None
        self._relay: Any = None
        self._thread = threading.Thread(target=self._drain, daemon=True, name="run-writer")
        self._thread.start()

    def metric(self, key: str, value: float, step: int) -> None:
        self._queue.put(("metric", {"key": key, "value": value, "step": step,
                                    "timestamp": int(time.time() * 1000)}))

    def tag(self, key: str, value: str) -> None:
        self._queue.put(("tag", {key: value}))

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued (the final cost before the run ends), for timeout_s at most."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.run_id:
                self._write(*item)

    def _write(self, kind: str, payload: Any) -> None:
        if self._relay is None:
            try:
                self._to_mlflow(kind, payload)
                return
            except Exception as exc:  # noqa: BLE001 - the budget is kept whether or not MLflow answers
                self._start_relay(f"{type(exc).__name__}: {str(exc)[:200]}")
        from ade_mlflow_plugin.job import relay

        if kind == "metric":
            self._relay.metrics([payload])
        else:
            self._relay.append(relay.TAGS, tags=payload)

    def _to_mlflow(self, kind: str, payload: Any) -> None:
        if self._client is None:
            from ade_mlflow_plugin.job import relay

            reason = relay.unreachable_reason(self.uri, self.env)
            if reason:
                raise ConnectionError(reason)
            import mlflow  # after the install step: mlflow is one of the job's requirements

            self._client = mlflow.MlflowClient(tracking_uri=self.uri)
        if kind == "metric":
            self._client.log_metric(self.run_id, payload["key"], payload["value"], timestamp=payload["timestamp"],
                                    step=payload["step"])
        else:
            for key, value in payload.items():
                self._client.set_tag(self.run_id, key, value)

    def _start_relay(self, why: str) -> None:
        from ade_mlflow_plugin.job import relay

        self._relay = relay.Relay(relay.relay_home(self.env))
        print(f"launcher: MLflow run {self.run_id} cannot be written ({why}): cost and budget records go to "
              f"the relay in {self._relay.dir}; the budget is still kept", file=sys.stderr, flush=True)


@dataclass
class BudgetGuard:
    """The job keeps its own budget, followed or not: cost_usd (step = elapsed seconds) to the run and to
    the log (SageMaker's cost_usd metric), tags at 50 and 80 %, and at 100 % (on_budget "stop") the
    entry stopped as SageMaker stops it. Every host stops its own entry; only the lead host writes."""

    cost: contract.Cost
    instance_count: int
    clock: Callable[[], float]
    stop_entry: Callable[[str, str], None]
    writer: RunWriter | None = None
    fired: set[float] = field(default_factory=set)
    stopped: bool = False
    last_step: int = -1

    def tick(self) -> None:
        elapsed = max(0.0, self.clock())
        usd = self.cost.usd(elapsed, self.instance_count)
        step = int(elapsed)
        if step > self.last_step:
            self.last_step = step
            print(f"{contract.METRIC_LINE_PREFIX} step={step} cost_usd={usd:.6f}", flush=True)
            if self.writer is not None:  # queued: written by the writer's thread
                self.writer.metric("cost_usd", round(usd, 6), step)
        if self.cost.max_cost_usd is not None:
            self._check(usd, step, usd / self.cost.max_cost_usd)

    def _check(self, usd: float, step: int, fraction: float) -> None:
        budget = self.cost.max_cost_usd
        for threshold in (*BUDGET_ALERTS, 1.0):
            if fraction >= threshold and threshold not in self.fired:
                self.fired.add(threshold)
                said = f"estimated cost ${usd:.2f} is {fraction:.0%} of max_cost_usd ${budget:.2f} after {step} s"
                print(f"launcher: budget: {said}", flush=True)
                if self.writer is not None:
                    self.writer.tag(f"ade.budget_alert_{round(threshold * 100)}", said)
        if fraction >= 1.0 and self.cost.on_budget == "stop" and not self.stopped:
            self.stopped = True
            detail = (f"budget: estimated cost ${usd:.2f} reached max_cost_usd ${budget:.2f} after {step} s "
                      f"at ${self.cost.usd_per_hour:g}/h x {self.instance_count} (on_budget=stop)")
            print(f"launcher: {detail}; stopping the entry (SIGTERM, checkpoint, exit)", flush=True)
            self.stop_entry("budget", detail)

    def run(self, done: threading.Event, interval_s: float) -> None:
        while not done.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - a broken tick must not take the job down
                print(f"launcher: budget check failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            done.wait(interval_s)


@dataclass
class RunningGuard:
    """A guard's thread and writer, ended together once the entry is over."""

    done: threading.Event
    thread: threading.Thread
    writer: RunWriter | None

    def finish(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)
        if self.writer is not None:
            self.writer.close()  # the last cost_usd and tags land before the run is ended


def start_budget_guard(launch: Launch, entry: EntryProcess,
                       clock: Callable[[], float] | None = None) -> RunningGuard | None:
    """The guard thread for this job (None without a price)."""
    if launch.job.cost is None:
        return None
    writer = RunWriter(launch.env) if contract.is_lead_host(launch.resource) else None
    guard = BudgetGuard(launch.job.cost, len(launch.resource.get("hosts") or ["algo-1"]),
                        clock or budget_clock(launch.env), entry.stop, writer)
    interval = float(launch.env.get(contract.ENV_BUDGET_INTERVAL_S) or BUDGET_INTERVAL_S)
    done = threading.Event()
    thread = threading.Thread(target=guard.run, args=(done, interval), daemon=True, name="budget")
    thread.start()
    return RunningGuard(done, thread, writer)


class Stopped(Exception):
    """SIGTERM/SIGINT arrived before the entry started (while fetching code or installing)."""


class SignalRouter:
    """SIGTERM/SIGINT: before the entry exists, abort the preparation; afterwards, forward to the entry.

    One handler for the whole life of the launcher, so no signal falls between two handlers.
    """

    def __init__(self) -> None:
        self.entry: EntryProcess | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)

    def __call__(self, signum: int, _frame: Any = None) -> None:
        if self.entry is None:
            raise Stopped(signal.Signals(signum).name)
        self.entry.forward(signum)


def prepare(paths: contract.ContainerPaths, launch: Launch) -> None:
    launch.project_dir = locate_project(paths, launch.job)
    install_missing_requirements(launch.project_dir)
    num_gpus = contract.gpu_count()
    launch.command = distributed(build_command(launch), launch.resource, num_gpus)
    launch.env = child_env(launch, num_gpus)


def _fail(paths: contract.ContainerPaths, launch: Launch, exc: BaseException) -> int:
    message = "ade launcher: " + " ".join(str(exc).split())  # one line, for FailureReason
    print(message, file=sys.stderr)
    _write_failure(paths, message)
    _end_run(launch.env or child_env(launch, 0), "FAILED", launch.resource)
    return 1


def run_entry(paths: contract.ContainerPaths, launch: Launch, router: SignalRouter,
              clock: Callable[[], float] | None = None) -> int:
    """Run the entry to its end; SIGTERM/SIGINT are forwarded to its process group."""
    print(f"launcher: running in {launch.project_dir}: {launch.command}", flush=True)
    entry = router.entry = EntryProcess(launch.command, launch.project_dir, launch.env)
    entry.record_group(paths.entry_pgid_file)
    guard = start_budget_guard(launch, entry, clock)
    try:
        code = entry.wait()
    finally:
        if guard is not None:
            guard.finish()
    if entry.terminated:
        print(f"launcher: stopped; the entry exited with {code}", flush=True)
        tags = {}
        if entry.stop_reason:  # our own stop: SageMaker shows output/failure as the job's FailureReason
            _write_failure(paths, entry.stop_detail)
            tags = {STOP_REASON_TAG: entry.stop_reason, "ade.stop_detail": entry.stop_detail}
        _end_run(launch.env, "KILLED", launch.resource, tags)
        return EXIT_STOPPED
    if code != 0:
        _write_failure(paths, failure_text(list(entry.tail), code))
        _end_run(launch.env, "FAILED", launch.resource)
        return code if 0 < code < 256 else 1
    _end_run(launch.env, "FINISHED", launch.resource)
    return 0


def main() -> int:
    router = SignalRouter()
    router.install()
    clock = budget_clock()  # the job is billed from about now
    paths = contract.ContainerPaths.from_env()
    launch = Launch(paths, contract.decode_hyperparameters({}), {})
    try:
        launch.job = contract.decode(paths)
        launch.resource = contract.read_resource_config(paths)
        paths.make_dirs()
        prepare(paths, launch)
    except Stopped as stop:
        print(f"launcher: {stop} before the entry started; stopping", file=sys.stderr)
        _end_run(launch.env or child_env(launch, 0), "KILLED", launch.resource)
        return EXIT_STOPPED
    except Exception as exc:  # any failure before the entry starts ends the job FAILED with a reason
        return _fail(paths, launch, exc)
    try:
        return run_entry(paths, launch, router, clock)
    except Stopped:  # only if the signal beat the entry's start by a hair; nothing ran yet
        _end_run(launch.env, "KILLED", launch.resource)
        return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
