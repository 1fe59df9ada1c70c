"""Observers the job follower feeds at each poll (see submitted_run.JobFollower): cost, budget, system metrics.

- :class:`CostTicker`: metric ``cost_usd`` at each poll (running estimate, step = seconds since
  TrainingStartTime), the exact cost at the end, tags ``sagemaker.billable_seconds``,
  ``sagemaker.spot_savings_pct``, ``sagemaker.price_source``, ``sagemaker.price_usd_per_hour``.
- :class:`BudgetGuard`: ``max_cost_usd``: the ``ade_cost_alert`` hook once at each of 50/80/100 % of the
  budget. The job holds its budget without us (job/budget.py's guard, told its price and budget at
  submission, and MaxRuntime capped by the budget): when it was told, this guard only alerts (the hook lives
  on this side) and leaves the stop to the job. A job told no price (submitted without one) is stopped from
  here instead: StopTrainingJob at 100 % when ``on_budget`` is "stop", the run tagged ``ade.stop_reason=budget``.
- :class:`CloudWatchMirror`: SageMaker's per-host system metrics (namespace /aws/sagemaker/TrainingJobs)
  into the run as ``system/sagemaker/<host>/<metric>`` with CloudWatch's timestamps, each datapoint once.
- :class:`JobCompletion`: the ``ade_job_completed`` hook when the job completes; the registry's built-in
  ``ade-output-dir`` plugin lands the model versions the run registered in ``<output_dir>/registry/<name>-v<N>/``
  (the backend imports no other wing); the run is tagged ``ade.output_dir`` at once, so ``status``/``reconcile``
  land it if nobody follows the job.

An observer failing (AWS, MLflow, a plugin) prints one warning (once per kind of failure, see
:func:`ade_mlflow_plugin.errors.warning_key`) and never stops the follower (submitted_run.Guarded);
the CloudWatch log tailer (logs.py) is guarded the same way.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, TextIO

from mlflow.entities import Metric

from ade_mlflow_plugin.backend import cost
from ade_mlflow_plugin.backend.aws import TRANSPORT_ERRORS, aws_call
from ade_mlflow_plugin.backend.cost import PriceBook, PriceQuote
from ade_mlflow_plugin.backend.submitted_run import Guarded
from ade_mlflow_plugin.errors import describe
from ade_mlflow_plugin.job import contract

Clock = Callable[[], datetime]
ENDED = {"Completed", "Failed", "Stopped"}
THRESHOLDS = (0.5, 0.8, 1.0)
NAMESPACE = "/aws/sagemaker/TrainingJobs"
SYSTEM_METRICS = ("CPUUtilization", "MemoryUtilization", "GPUUtilization", "GPUMemoryUtilization",
                  "DiskUtilization")
PERIOD_S = 60  # SageMaker publishes these once a minute
LOOKBACK_S = 300  # re-read a few minutes back: CloudWatch datapoints can arrive late
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch


def job_logs_its_cost(description: dict[str, Any]) -> bool:
    """Whether the job was told its price: its launcher then logs the running cost_usd itself (one curve,
    not two interleaved), and the follower only adds the exact figure at the end."""
    return contract.HP_USD_PER_HOUR in (description.get("HyperParameters") or {})


def job_keeps_its_budget(description: dict[str, Any]) -> bool:
    """Whether the job stops itself at max_cost_usd (job/budget.py): it was told its price, a budget and
    on_budget "stop" at submission (hyperparameters, job/contract.py)."""
    hyper = description.get("HyperParameters") or {}
    told = {key: contract.decode_value(hyper[key]) for key in
            (contract.HP_USD_PER_HOUR, contract.HP_MAX_COST_USD, contract.HP_ON_BUDGET) if key in hyper}
    return (told.get(contract.HP_USD_PER_HOUR) not in (None, "") and told.get(contract.HP_MAX_COST_USD)
            not in (None, "") and (told.get(contract.HP_ON_BUDGET) or "stop") == "stop")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass
class BudgetGuard:
    """Alerts at 50/80/100 % of ``max_cost_usd`` (once each) and stops the job at 100 % if asked to."""

    budget_usd: float
    on_budget: str
    job: Any
    run_id: str
    mlflow_client: Any
    console: TextIO
    hook: Callable[..., Any] | None = None
    fired: set[float] = field(default_factory=set)
    stopped: bool = False

    def check(self, cost_usd: float, description: dict[str, Any], ended: bool = False) -> None:
        fraction = cost_usd / self.budget_usd
        may_stop = self.on_budget == "stop" and not ended and description["TrainingJobStatus"] == "InProgress"
        for threshold in THRESHOLDS:
            if fraction >= threshold and threshold not in self.fired:
                self.fired.add(threshold)
                action = "stop" if threshold >= 1.0 and may_stop else "warn"
                self._alert(description["TrainingJobName"], cost_usd, fraction, action)
        if fraction >= 1.0 and may_stop and not self.stopped:
            if job_keeps_its_budget(description):
                # Its own guard stops it (SIGTERM, checkpoint, run KILLED with ade.stop_reason=budget): a
                # second stop from here would race it for the same tags.
                self.stopped = True
                self.console.write(f"{description['TrainingJobName']}: the job's own budget guard stops it\n")
            else:
                self._stop(description["TrainingJobName"], cost_usd)

    def _alert(self, job_name: str, cost_usd: float, fraction: float, action: str) -> None:
        self.console.write(f"BUDGET: {job_name} cost ${cost_usd:.2f} is {fraction:.0%} of max_cost_usd "
                           f"${self.budget_usd:.2f}{'; stopping the job' if action == 'stop' else ''}\n")
        if self.hook is None:
            return
        try:
            self.hook(run_id=self.run_id, job_name=job_name, cost_usd=cost_usd, budget_usd=self.budget_usd,
                      fraction=fraction, action=action)
        except Exception as exc:  # a third-party plugin must not end the follow loop
            self.console.write(f"WARNING: an ade_cost_alert plugin failed: {describe(exc)}\n")

    def _stop(self, job_name: str, cost_usd: float) -> None:
        self.job.stop()  # raises on failure: the next poll tries again
        self.stopped = True
        reason = (f"budget: estimated cost ${cost_usd:.2f} reached max_cost_usd ${self.budget_usd:.2f} "
                  "(on_budget=stop)")
        # The reason's name is what users compare runs by (DESIGN); the figures go in the detail.
        self.mlflow_client.set_tag(self.run_id, contract.STOP_REASON_TAG, "budget")
        self.mlflow_client.set_tag(self.run_id, "ade.stop_detail", reason)
        self.console.write(f"{job_name}: StopTrainingJob sent: {reason}\n")


@dataclass
class CostTicker:
    """Running and final cost of the job in the MLflow run; feeds the budget guard."""

    quote: PriceQuote
    run_id: str
    mlflow_client: Any
    console: TextIO
    clock: Clock = utcnow
    budget: BudgetGuard | None = None
    last_step: int = -1
    _started: bool = False

    def on_poll(self, description: dict[str, Any]) -> None:
        self._start()
        if not self.quote.known or description["TrainingJobStatus"] in ENDED:
            return  # the end is on_end's: the exact cost, not an estimate
        now = self.clock()
        running = cost.running_cost(description, self.quote.usd_per_hour, now)
        if running is None:
            return  # not training yet: nothing billed
        if not job_logs_its_cost(description):  # else the job's own launcher logs the running cost_usd
            self._log(running, int(cost.elapsed_s(description, now) or 0), now)
        if self.budget is not None:
            self.budget.check(running, description)

    def on_end(self, description: dict[str, Any]) -> None:
        self._start()
        self._tag_billing(description)
        if not self.quote.known:
            return
        now = self.clock()
        final = cost.exact_cost(description, self.quote.usd_per_hour)
        if final is None:  # e.g. ended before training started, or an answer without billing fields
            final = cost.running_cost(description, self.quote.usd_per_hour, now) or 0.0
        # The final figure must be the run's latest cost_usd, so its step never goes back.
        step = max(self.last_step, int(cost.elapsed_s(description, now) or 0))
        self._log(final, step, now)
        savings = cost.spot_savings_pct(description)
        self.console.write(f"{description['TrainingJobName']}: cost ${final:.4f}"
                           f"{f' (spot saved {savings:.1f}%)' if savings is not None else ''}\n")
        if self.budget is not None:
            self.budget.check(final, description, ended=True)

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if not self.quote.known:
            self.console.write(f"WARNING: {self.quote.warning}\n")
            return
        if self.quote.warning:
            self.console.write(f"WARNING: {self.quote.warning}\n")
        self.console.write(f"Cost: {self.quote.describe()}\n")
        self.mlflow_client.set_tag(self.run_id, "sagemaker.price_source", self.quote.label)
        self.mlflow_client.set_tag(self.run_id, "sagemaker.price_usd_per_hour", f"{self.quote.usd_per_hour:g}")

    def _log(self, value: float, step: int, now: datetime) -> None:
        self.mlflow_client.log_metric(self.run_id, "cost_usd", round(value, 6), timestamp=_ms(now), step=step)
        self.last_step = max(self.last_step, step)

    def _tag_billing(self, description: dict[str, Any]) -> None:
        billable = description.get("BillableTimeInSeconds")
        if billable is not None:
            self.mlflow_client.set_tag(self.run_id, "sagemaker.billable_seconds", str(int(billable)))
        savings = cost.spot_savings_pct(description)
        if savings is not None:
            self.mlflow_client.set_tag(self.run_id, "sagemaker.spot_savings_pct", f"{savings:.1f}")


@dataclass
class CloudWatchMirror:
    """Copies each host's SageMaker system metrics into the run, every datapoint exactly once."""

    clients: Any
    run_id: str
    mlflow_client: Any
    clock: Clock = utcnow
    min_interval_s: float = PERIOD_S
    seen: set[tuple[str, int]] = field(default_factory=set)
    _newest: datetime | None = None
    _last_fetch: datetime | None = None

    def on_poll(self, description: dict[str, Any]) -> None:
        now = self.clock()
        if self._last_fetch is None or (now - self._last_fetch).total_seconds() >= self.min_interval_s:
            self.mirror(description, now)

    def on_end(self, description: dict[str, Any]) -> None:
        self.mirror(description, self.clock())

    def mirror(self, description: dict[str, Any], now: datetime) -> int:
        """Fetch new datapoints and log them; returns how many were new."""
        origin = description.get("TrainingStartTime") or description["CreationTime"]
        queries = self._queries(description)
        metrics = [m for m in self._fetch(queries, self._start_time(origin), now, origin)
                   if (m.key, m.timestamp) not in self.seen]
        for chunk in range(0, len(metrics), MAX_BATCH):
            self.mlflow_client.log_batch(self.run_id, metrics=metrics[chunk:chunk + MAX_BATCH])
        self.seen.update((m.key, m.timestamp) for m in metrics)
        self._last_fetch = now
        return len(metrics)

    def _queries(self, description: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
        """query id -> (host, metric, GetMetricData query); hosts are <job>/algo-1..N."""
        job = description["TrainingJobName"]
        queries = {}
        for n in range(1, cost.instances(description)[1] + 1):
            for i, metric in enumerate(SYSTEM_METRICS):
                stat = {"Metric": {"Namespace": NAMESPACE, "MetricName": metric,
                                   "Dimensions": [{"Name": "Host", "Value": f"{job}/algo-{n}"}]},
                        "Period": PERIOD_S, "Stat": "Average"}
                queries[f"h{n}m{i}"] = (f"algo-{n}", metric, {"Id": f"h{n}m{i}", "MetricStat": stat,
                                                             "ReturnData": True})
        return queries

    def _start_time(self, origin: datetime) -> datetime:
        start = origin if self._newest is None else max(origin, self._newest - timedelta(seconds=LOOKBACK_S))
        # Period-aligned windows give the same bucket timestamps on every poll (the dedup key).
        return start - timedelta(seconds=start.timestamp() % PERIOD_S, microseconds=start.microsecond)

    @aws_call("GetMetricData", permission="cloudwatch:GetMetricData")
    def _fetch(self, queries: dict[str, tuple[str, str, dict[str, Any]]], start: datetime, now: datetime,
               origin: datetime) -> list[Metric]:
        end = now - timedelta(seconds=now.timestamp() % PERIOD_S) + timedelta(seconds=PERIOD_S)
        paginator = self.clients.cloudwatch.get_paginator("get_metric_data")
        found: list[Metric] = []
        for page in paginator.paginate(MetricDataQueries=[q for _, _, q in queries.values()],
                                       StartTime=start, EndTime=end, ScanBy="TimestampAscending"):
            for result in page.get("MetricDataResults", []):
                host, name, _ = queries[result["Id"]]
                for stamp, value in zip(result.get("Timestamps", []), result.get("Values", [])):
                    step = max(0, int((stamp - origin).total_seconds()))
                    found.append(Metric(f"system/sagemaker/{host}/{name}", float(value), _ms(stamp), step))
                    self._newest = max(self._newest or stamp, stamp)
        return found


@dataclass
class JobCompletion:
    """At a completed job's end, the ``ade_job_completed`` hook; each plugin's line goes to the console.

    The built-in ``ade-output-dir`` plugin (the registry's) lands the run's model versions in the output_dir:
    the backend fires the hook and imports no other wing.
    """

    hook: Callable[..., list[Any]]
    run_id: str
    tracking_uri: str
    output_dir: Path | None
    console: TextIO

    def on_poll(self, description: dict[str, Any]) -> None:
        pass

    def on_end(self, description: dict[str, Any]) -> None:
        if description["TrainingJobStatus"] != "Completed":
            return  # a failed or stopped job registered nothing worth landing
        for line in job_completed(self.hook, self.run_id, description["TrainingJobName"], self.tracking_uri,
                                  self.output_dir):
            self.console.write(f"{description['TrainingJobName']}: {line}\n")


def job_completed(hook: Callable[..., list[Any]], run_id: str, job_name: str, tracking_uri: str,
                  output_dir: Path | None) -> list[str]:
    """Fire ``ade_job_completed`` (``hook`` is ``plugin_manager.hook.ade_job_completed``); the plugins' lines."""
    results = hook(run_id=run_id, job_name=job_name, tracking_uri=tracking_uri, output_dir=output_dir)
    return [str(line) for line in results if line]


def backend_plugins(console: TextIO) -> Any:
    """The backend's plugin manager: the installed plugins and the built-in landing (no sync on promotion:
    nothing is promoted here). A plugin that fails to load costs one warning: the built-ins still run."""
    from ade_mlflow_plugin.hooks import get_plugin_manager

    try:
        return get_plugin_manager(builtin_sync=False, builtin_landing=True)
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the job being followed
        console.write(f"WARNING: installed ade plugins are not loaded: {describe(exc)} (budget alerts go "
                      "to the console only)\n")
        return get_plugin_manager(builtin_sync=False, builtin_landing=True, load_entry_points=False)


def completion_observer(config: Any, run_id: str, mlflow_client: Any, console: TextIO,
                        plugin_manager: Any) -> list[Any]:
    """[the guarded JobCompletion] when anyone listens (an output_dir to land in, or an installed plugin's
    ``ade_job_completed``), else []. With an output_dir the run is tagged at once, so ``status``/``reconcile``
    land the model if nobody follows the job to its end."""
    from ade_mlflow_plugin.config.cloud import OUTPUT_DIR_TAG
    from ade_mlflow_plugin.hooks import BUILTIN_LANDING_NAME

    output_dir = Path(config.output_dir) if getattr(config, "output_dir", None) else None
    hook = plugin_manager.hook.ade_job_completed
    if output_dir is None and all(i.plugin_name == BUILTIN_LANDING_NAME for i in hook.get_hookimpls()):
        return []
    if output_dir is not None:
        try:
            mlflow_client.set_tag(run_id, OUTPUT_DIR_TAG, str(output_dir))
        except Exception as exc:  # noqa: BLE001 - as any observer's failure: one warning, the job goes on
            console.write(f"WARNING: model landing: {describe(exc)} (only this follower will land "
                          "the model, at the job's end)\n")
    completion = JobCompletion(hook, run_id, mlflow_client.tracking_uri, output_dir, console)
    return [Guarded(completion, console, "job completed")]


def _region(config: Any, clients: Any) -> str:
    if config.region:
        return config.region
    try:
        return getattr(clients, "region", None) or clients.session.region_name or "us-east-1"
    except (AttributeError, *TRANSPORT_ERRORS):
        return "us-east-1"


def build_observers(*, config: Any, clients: Any, mlflow_client: Any, run_id: str, job: Any,
                    console: TextIO | None = None, price_book: PriceBook | None = None,
                    plugin_manager: Any = None, clock: Clock = utcnow) -> list[Any]:
    """The observers for one job (called by project_backend). Local jobs cost nothing and have no
    CloudWatch: only the checkpoint sync and the model landing then (when the config asks for them)."""
    from ade_mlflow_plugin.backend.checkpoint_sync import checkpoint_sync_observer

    console = console or sys.stderr
    if plugin_manager is None:
        plugin_manager = backend_plugins(console)
    # Checkpoints before the landing: at the end, the kept checkpoints are copied first (they are small
    # next to a merged model, and what a user resumes or compares from).
    landing = [*checkpoint_sync_observer(config, console, clients),
               *completion_observer(config, run_id, mlflow_client, console, plugin_manager)]
    if config.mode == "local":
        return landing
    quote = (price_book or cost.default_price_book()).quote(clients, config.instance_type, _region(config, clients))
    budget = None
    if config.max_cost_usd is not None:
        if quote.known:
            budget = BudgetGuard(config.max_cost_usd, config.on_budget, job, run_id, mlflow_client, console,
                                 hook=plugin_manager.hook.ade_cost_alert)
        else:
            console.write(f"WARNING: max_cost_usd ${config.max_cost_usd:g} cannot be enforced without a "
                          f"price for {config.instance_type}; watch the job's cost yourself\n")
    ticker = CostTicker(quote, run_id, mlflow_client, console, clock=clock, budget=budget)
    mirror = CloudWatchMirror(clients, run_id, mlflow_client, clock=clock)
    return [Guarded(ticker, console, "cost"), Guarded(mirror, console, "CloudWatch metrics"), *landing]
