"""The job keeps its own budget, followed or not (issue 16): cost_usd as it goes, the 50/80 % alert tags,
and at 100 % the entry stopped as SageMaker stops it, with ``ade.stop_reason=budget``.

The launcher starts the guard next to the entry. Billed time survives a managed-spot restart: the seconds
billed so far are kept beside the checkpoints (synced to S3 and restored with them), and a restarted job's
clock starts from there, so a job reclaimed twice cannot spend its budget three times.
"""
from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ade_mlflow_plugin.job import contract

BUDGET_INTERVAL_S = 15.0
BUDGET_ALERTS = (0.5, 0.8)
#: Beside the checkpoints: SageMaker syncs them to S3 and restores them on a spot restart.
BILLED_FILE = "ade-billed-seconds"


def budget_clock(env: dict[str, str] | None = None) -> Callable[[], float]:
    """Seconds the job has been billed in this attempt, about: since this call (the launcher starts as the
    container does), or what ENV_BUDGET_CLOCK_FILE says (tests drive the guard through it, not the wall clock).
    A relative clock file is read in this host's job root, so each host of a local multi-host job has its own
    (a budget stop on one host only, as when the hosts' clocks differ by a tick)."""
    env = os.environ if env is None else env
    clock_file = env.get(contract.ENV_BUDGET_CLOCK_FILE)
    if clock_file:
        path = Path(env.get(contract.ENV_BASE_DIR) or ".") / clock_file  # an absolute clock_file wins the join

        def from_file() -> float:
            try:
                return float(path.read_text().strip() or 0)
            except (OSError, ValueError):
                return 0.0  # not written yet
        return from_file
    start = time.monotonic()
    return lambda: time.monotonic() - start


@dataclass
class BilledSeconds:
    """Billed seconds of the earlier attempts of this job, kept in a file beside the checkpoints with the job's
    name: a managed-spot restart keeps its name and goes on from them; a new job given an earlier job's
    checkpoint location (to resume from its checkpoints) has a budget of its own and starts from 0."""

    path: Path | None
    earlier_s: float = 0.0
    job: str = ""

    @classmethod
    def load(cls, checkpoint_dir: Path | None, job: str = "") -> "BilledSeconds":
        if checkpoint_dir is None:
            return cls(None, job=job)
        path = checkpoint_dir / BILLED_FILE
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls(path, job=job)  # a first attempt (or an unreadable file: counting from 0 is all we can do)
        # A bare number comes from a job of an older version: another job, since a job keeps its code.
        if not isinstance(saved, dict) or saved.get("job") != job:
            return cls(path, job=job)
        try:
            return cls(path, max(0.0, float(saved.get("seconds") or 0)), job)
        except (TypeError, ValueError):
            return cls(path, job=job)

    def total(self, this_attempt_s: float) -> float:
        return self.earlier_s + max(0.0, this_attempt_s)

    def save(self, total_s: float) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{BILLED_FILE}.{os.getpid()}")
            tmp.write_text(json.dumps({"job": self.job, "seconds": round(total_s, 1)}) + "\n")
            os.replace(tmp, self.path)  # a restart never reads half a number
        except OSError as exc:
            print(f"launcher: cannot keep the billed seconds in {self.path}: {exc}", file=sys.stderr, flush=True)


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
    """cost_usd (step = billed seconds) to the run and to the log (SageMaker's cost_usd metric), tags at 50
    and 80 %, and at 100 % (on_budget "stop") the entry stopped as SageMaker stops it. Every host stops its
    own entry; only the lead host writes."""

    cost: contract.Cost
    instance_count: int
    clock: Callable[[], float]
    stop_entry: Callable[[str, str], None]
    writer: RunWriter | None = None
    billed: BilledSeconds = field(default_factory=lambda: BilledSeconds(None))
    fired: set[float] = field(default_factory=set)
    stopped: bool = False
    last_step: int = -1

    def tick(self) -> None:
        elapsed = self.billed.total(self.clock())
        usd = self.cost.usd(elapsed, self.instance_count)
        step = int(elapsed)
        if step > self.last_step:
            self.last_step = step
            print(f"{contract.METRIC_LINE_PREFIX} step={step} cost_usd={usd:.6f}", flush=True)
            if self.writer is not None:  # queued: written by the writer's thread
                self.writer.metric("cost_usd", round(usd, 6), step)
            self.billed.save(elapsed)
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


def start_budget_guard(job: contract.JobContract, resource: dict[str, Any], env: dict[str, str],
                       checkpoint_dir: Path | None, stop_entry: Callable[[str, str], None],
                       clock: Callable[[], float] | None = None) -> RunningGuard | None:
    """The guard thread for this job (None without a price)."""
    if job.cost is None:
        return None
    writer = RunWriter(env) if contract.is_lead_host(resource) else None
    billed = BilledSeconds.load(checkpoint_dir, env.get(contract.ENV_JOB_NAME, ""))
    if billed.earlier_s:
        print(f"launcher: budget: {billed.earlier_s:.0f} s billed by earlier attempts of this job count too",
              flush=True)
    guard = BudgetGuard(job.cost, len(resource.get("hosts") or ["algo-1"]), clock or budget_clock(env),
                        stop_entry, writer, billed)
    interval = float(env.get(contract.ENV_BUDGET_INTERVAL_S) or BUDGET_INTERVAL_S)
    done = threading.Event()
    thread = threading.Thread(target=guard.run, args=(done, interval), daemon=True, name="budget")
    thread.start()
    return RunningGuard(done, thread, writer)
