"""SageMaker training prices and cost arithmetic.

Prices (USD per instance-hour, on demand) come from, in order:
1. a disk cache of earlier Price List API answers, fresh for ``ttl_s`` (7 days: list prices change rarely);
2. the AWS Price List API (``pricing:GetProducts``, service AmazonSageMaker, ``<REGION>-Train:<instance>``);
3. a cache entry past its TTL (an old API answer beats a bundled figure);
4. :data:`FALLBACK_PRICES`, a bundled table of common training instances dated :data:`FALLBACK_AS_OF`.
A lookup never raises: an unknown instance type or region yields a :class:`PriceQuote` without a price
and with a warning, and callers then omit cost figures.

Cost arithmetic follows SageMaker's billing: exact cost = BillableTimeInSeconds x instances x price
(BillableTimeInSeconds is per instance); managed spot savings = 1 - billable / training time.
"""
from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import filelock

from ade_mlflow_plugin.backend.aws import AWS_ERRORS, TRANSPORT_ERRORS
from ade_mlflow_plugin.errors import ConfigError, aws_reason
from ade_mlflow_plugin.job.contract import Cost

HOUR_S = 3600.0
SERVICE_CODE = "AmazonSageMaker"
DEFAULT_TTL_S = 7 * 24 * 3600
FAILURE_TTL_S = 600
API_SOURCE = "AWS Price List API"
TABLE_SOURCE = "bundled price table"
#: The smallest budget a SageMaker job may have, in minutes of its instances: SageMaker bills the start
#: (image pull, code, data and wheel downloads: several minutes for a 20 GB training image), and a LoRA run
#: needs a few minutes more to load its model and write a first checkpoint. A job capped below this would
#: spend its whole budget before it had learnt anything worth keeping.
MIN_BUDGET_S = 600

#: When the bundled figures were taken (us-east-1 list prices; us-east-2 and us-west-2 charge the same).
FALLBACK_AS_OF = "2024-06"
_US_TRAINING = {
    "ml.g4dn.xlarge": 0.736, "ml.g4dn.2xlarge": 0.94, "ml.g4dn.4xlarge": 1.505, "ml.g4dn.8xlarge": 2.72,
    "ml.g4dn.12xlarge": 4.89, "ml.g4dn.16xlarge": 5.44,
    "ml.g5.xlarge": 1.408, "ml.g5.2xlarge": 1.515, "ml.g5.4xlarge": 2.03, "ml.g5.8xlarge": 3.06,
    "ml.g5.12xlarge": 7.09, "ml.g5.16xlarge": 4.096, "ml.g5.24xlarge": 10.18, "ml.g5.48xlarge": 20.36,
    "ml.g6.xlarge": 1.006, "ml.g6.2xlarge": 1.222, "ml.g6.4xlarge": 1.654, "ml.g6.8xlarge": 2.518,
    "ml.g6.12xlarge": 5.752, "ml.g6.16xlarge": 4.246, "ml.g6.24xlarge": 8.344, "ml.g6.48xlarge": 16.688,
    "ml.p3.2xlarge": 3.825, "ml.p3.8xlarge": 14.688, "ml.p3.16xlarge": 28.152,
    "ml.p4d.24xlarge": 37.688, "ml.p5.48xlarge": 113.07,
    "ml.trn1.2xlarge": 1.5484, "ml.trn1.32xlarge": 24.7737,
}
#: region -> instance type -> USD per hour, SageMaker training, on demand.
FALLBACK_PRICES: dict[str, dict[str, float]] = {
    "us-east-1": _US_TRAINING, "us-east-2": _US_TRAINING, "us-west-2": _US_TRAINING,
}


@dataclass(frozen=True)
class PriceQuote:
    """The hourly price of one instance type in one region, and where it came from."""

    instance_type: str
    region: str
    usd_per_hour: float | None
    source: str = ""
    as_of: str = ""
    warning: str | None = None

    @property
    def known(self) -> bool:
        return self.usd_per_hour is not None

    @property
    def label(self) -> str:
        """e.g. "AWS Price List API, 2026-11-29" (the run's price-source tag)."""
        return f"{self.source}, {self.as_of}" if self.as_of else self.source

    def describe(self) -> str:
        if not self.known:
            return f"no price for {self.instance_type} in {self.region}"
        return f"{self.instance_type} in {self.region} at ${self.usd_per_hour:g}/h ({self.label})"


def default_cache_path() -> Path:
    """$ADE_MLFLOW_CACHE_DIR, else $XDG_CACHE_HOME/ade-mlflow, else ~/.cache/ade-mlflow; file prices.json."""
    root = os.environ.get("ADE_MLFLOW_CACHE_DIR")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ade-mlflow")
    return Path(root) / "prices.json"


@functools.lru_cache(maxsize=None)
def _shared_book(cache_path: Path) -> "PriceBook":
    return PriceBook(cache_path)


def default_price_book() -> "PriceBook":
    """One PriceBook per cache file and process, so the pre-submission estimate, the follower and the
    cost command share what they learnt (including that the API is unreachable)."""
    return _shared_book(default_cache_path())


def parse_price_list(price_list: list[str], instance_type: str) -> float | None:
    """The on-demand hourly training price in a GetProducts PriceList (entries are JSON strings).

    A query by instance name also returns hosting, processing, notebook... rows of the same instance:
    only rows whose usage type ends in ``Train:<instance>`` count. Several prices: the highest (budgets
    should err on the side of caution).
    """
    prices: set[float] = set()
    for raw in price_list:
        product = json.loads(raw) if isinstance(raw, str) else raw
        attributes = product.get("product", {}).get("attributes", {})
        if not attributes.get("usagetype", "").endswith(f"Train:{instance_type}"):
            continue
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = float(dimension.get("pricePerUnit", {}).get("USD", 0) or 0)
                if usd > 0 and dimension.get("unit", "Hrs").lower().startswith("hr"):
                    prices.add(usd)
    return max(prices) if prices else None


@dataclass
class PriceBook:
    """Looks prices up (cache -> API -> stale cache -> bundled table) and remembers API failures."""

    cache_path: Path = field(default_factory=default_cache_path)
    ttl_s: float = DEFAULT_TTL_S
    clock: Callable[[], float] = time.time
    # key -> (when, why): a failed lookup is not retried for FAILURE_TTL_S (each try can take seconds).
    _unreachable: dict[str, tuple[float, str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.cache_path = Path(self.cache_path)

    def quote(self, clients: Any, instance_type: str, region: str) -> PriceQuote:
        """Never raises; see the module docstring for the order of sources."""
        key = f"{region}/{instance_type}"
        cached = self._read_cache().get(key)
        if cached and self.clock() - cached["fetched_at"] < self.ttl_s:
            return self._from_cache(instance_type, region, cached)
        when, problem = self._unreachable.get(key, (0.0, None))
        if problem is None or self.clock() - when >= FAILURE_TTL_S:
            try:
                price = self._ask_api(clients, instance_type, region)
            except AWS_ERRORS as exc:
                problem = f"the AWS Price List API failed ({aws_reason(exc)})"
            else:
                if price is not None:
                    return self._store(key, instance_type, region, price)
                problem = f"the AWS Price List API has no training price for {instance_type} in {region}"
            self._unreachable[key] = (self.clock(), problem)
        return self._fallback(instance_type, region, cached, problem)

    def _ask_api(self, clients: Any, instance_type: str, region: str) -> float | None:
        filters = [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
                   {"Type": "TERM_MATCH", "Field": "instanceName", "Value": instance_type}]
        pages = clients.pricing.get_paginator("get_products").paginate(
            ServiceCode=SERVICE_CODE, Filters=filters, FormatVersion="aws_v1")
        return parse_price_list([item for page in pages for item in page.get("PriceList", [])], instance_type)

    def _fallback(self, instance_type: str, region: str, cached: dict[str, Any] | None,
                  problem: str) -> PriceQuote:
        if cached:
            quote = self._from_cache(instance_type, region, cached)
            return PriceQuote(instance_type, region, quote.usd_per_hour, quote.source, quote.as_of,
                              f"{problem}; using the cached price of {quote.as_of} (older than "
                              f"{self.ttl_s / 86400:g} days)")
        price = FALLBACK_PRICES.get(region, {}).get(instance_type)
        if price is None:
            return PriceQuote(instance_type, region, None, warning=(
                f"{problem}, and the bundled table has no {instance_type} in {region}: cost figures are "
                "omitted (grant pricing:GetProducts or check the instance type and region)"))
        return PriceQuote(instance_type, region, price, TABLE_SOURCE, FALLBACK_AS_OF,
                          f"{problem}; using the {TABLE_SOURCE} of {FALLBACK_AS_OF} for {instance_type} in "
                          f"{region} (${price:g}/h), which may be out of date")

    def _from_cache(self, instance_type: str, region: str, entry: dict[str, Any]) -> PriceQuote:
        day = datetime.fromtimestamp(entry["fetched_at"], timezone.utc).strftime("%Y-%m-%d")
        return PriceQuote(instance_type, region, float(entry["usd_per_hour"]), API_SOURCE, day)

    def _store(self, key: str, instance_type: str, region: str, price: float) -> PriceQuote:
        entry = {"usd_per_hour": price, "fetched_at": self.clock()}
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with filelock.FileLock(f"{self.cache_path}.lock", timeout=10):
                data = self._read_cache()
                data[key] = entry
                tmp = self.cache_path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
                os.replace(tmp, self.cache_path)  # readers never see half a file
        except (OSError, filelock.Timeout):
            pass  # a cache we cannot write only costs another API call next time
        return self._from_cache(instance_type, region, entry)

    def _read_cache(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


# ---- cost arithmetic on DescribeTrainingJob answers -------------------------------------------------

def instances(description: dict[str, Any]) -> tuple[str | None, int]:
    """(instance type, instance count) of a job; type None for heterogeneous clusters."""
    resources = description.get("ResourceConfig") or {}
    groups = resources.get("InstanceGroups") or []
    if groups:
        types = {g.get("InstanceType") for g in groups}
        count = sum(int(g.get("InstanceCount", 0)) for g in groups)
        return (types.pop() if len(types) == 1 else None), count
    return resources.get("InstanceType"), int(resources.get("InstanceCount") or 1)


def exact_cost(description: dict[str, Any], usd_per_hour: float) -> float | None:
    """BillableTimeInSeconds x instances x price; None until SageMaker reports the billable time."""
    billable = description.get("BillableTimeInSeconds")
    if billable is None:
        return None
    return round(billable * instances(description)[1] * usd_per_hour / HOUR_S, 6)


def spot_savings_pct(description: dict[str, Any]) -> float | None:
    """Managed spot savings in percent (what the SageMaker console shows), or None."""
    training = description.get("TrainingTimeInSeconds")
    billable = description.get("BillableTimeInSeconds")
    if not description.get("EnableManagedSpotTraining") or not training or billable is None:
        return None
    return round(100.0 * (1 - billable / training), 1)


def spot_savings_usd(description: dict[str, Any], usd_per_hour: float) -> float:
    training = description.get("TrainingTimeInSeconds") or 0
    billable = description.get("BillableTimeInSeconds") or 0
    if not description.get("EnableManagedSpotTraining") or training <= billable:
        return 0.0
    return round((training - billable) * instances(description)[1] * usd_per_hour / HOUR_S, 6)


def elapsed_s(description: dict[str, Any], now: datetime) -> float | None:
    """Seconds since TrainingStartTime (to TrainingEndTime once ended); None before training starts."""
    start = description.get("TrainingStartTime")
    if start is None:
        return None
    end = description.get("TrainingEndTime") or now
    return max(0.0, (end - start).total_seconds())


def running_cost(description: dict[str, Any], usd_per_hour: float, now: datetime) -> float | None:
    """Wall time since the start x instances x on-demand price: exact for on-demand jobs, an upper
    bound for spot jobs (whose discount is known only at the end)."""
    elapsed = elapsed_s(description, now)
    if elapsed is None:
        return None
    return round(elapsed * instances(description)[1] * usd_per_hour / HOUR_S, 6)


def worst_case_cost(max_runtime_s: int, instance_count: int, usd_per_hour: float) -> float:
    """Spot or not, SageMaker bills at most MaxRuntimeInSeconds per instance."""
    return round(max_runtime_s * instance_count * usd_per_hour / HOUR_S, 2)


def bundled_quote(instance_type: str, region: str) -> PriceQuote:
    """The bundled table's price, with no AWS call: what a local job rehearsing a budget pays."""
    price = FALLBACK_PRICES.get(region, {}).get(instance_type)
    if price is None:
        return PriceQuote(instance_type, region, None, warning=(
            f"the bundled price table has no {instance_type} in {region}, so the job cannot keep max_cost_usd: "
            "set \"instance_type\" to the SageMaker type the job stands for"))
    return PriceQuote(instance_type, region, price, TABLE_SOURCE, FALLBACK_AS_OF)


@dataclass(frozen=True)
class CostPlan:
    """The price and budget a submission carries, and the line printed before submitting."""

    line: str | None
    cost: Cost | None


def plan_cost(config: Any, clients: Any, price_book: PriceBook | None = None) -> CostPlan:
    """Before submission: the price the job is told (and its budget), the MaxRuntime cap, the line that
    says so. A budget below :data:`MIN_BUDGET_S` of the instances is refused (ConfigError, exit 2).

    Local mode asks no API (it may have no AWS account) and carries a price only with a budget: a local
    job costs nothing, it only rehearses the stop.
    """
    region = config.region or getattr(clients, "region", None) or _session_region(clients) or "us-east-1"
    if config.mode == "local":
        return _local_plan(config, bundled_quote(config.instance_type, region))
    quote = (price_book or default_price_book()).quote(clients, config.instance_type, region)
    if not quote.known:
        unkept = (f"; WARNING: max_cost_usd ${config.max_cost_usd:g} cannot cap the job's runtime without a "
                  "price: watch its cost yourself") if config.max_cost_usd is not None else ""
        return CostPlan(f"Worst-case cost: unknown; WARNING: {quote.warning}{unkept}", None)
    cost = Cost(quote.usd_per_hour, quote.label, config.max_cost_usd, config.on_budget)
    _check_floor(config, cost)
    return CostPlan(_worst_case_line(config, quote, cost), cost)


def _local_plan(config: Any, quote: PriceQuote) -> CostPlan:
    if config.max_cost_usd is None:
        return CostPlan(None, None)
    if not quote.known:
        return CostPlan(f"Budget: WARNING: {quote.warning}", None)
    cost = Cost(quote.usd_per_hour, quote.label, config.max_cost_usd, config.on_budget)
    seconds = cost.affordable_s(config.instance_count) or 0
    return CostPlan(f"Budget: max_cost_usd ${config.max_cost_usd:g} = {seconds} s of {config.instance_count} x "
                    f"{config.instance_type} at ${quote.usd_per_hour:g}/h ({quote.label}); this local job costs "
                    f"nothing, its launcher {_action(config)} at the budget", cost)


def _action(config: Any) -> str:
    return "stops the job" if config.on_budget == "stop" else "only alerts"


def _check_floor(config: Any, cost: Cost) -> None:
    affordable = cost.affordable_s(config.instance_count)
    if affordable is None or affordable >= MIN_BUDGET_S:
        return
    least = cost.usd(MIN_BUDGET_S, config.instance_count)
    raise ConfigError(
        f"backend config 'max_cost_usd' ${config.max_cost_usd:g} buys only {affordable} s of "
        f"{config.instance_count} x {config.instance_type} at ${cost.usd_per_hour:g}/h ({cost.price_source}); "
        f"a useful run needs at least {MIN_BUDGET_S // 60} minutes: set max_cost_usd to ${least:.2f} or more")


def _worst_case_line(config: Any, quote: PriceQuote, cost: Cost) -> str:
    from ade_mlflow_plugin.backend.spec import max_runtime_s  # spec imports nothing from here

    runtime = max_runtime_s(config, cost)
    total = worst_case_cost(runtime, config.instance_count, quote.usd_per_hour)
    capped = (f" (capped by max_cost_usd ${config.max_cost_usd:g}: SageMaker stops the job there; its launcher "
              f"{_action(config)} at the budget)") if runtime < config.max_runtime_s else ""
    spot = "; spot usually bills less" if config.use_spot else ""
    warning = f"; WARNING: {quote.warning}" if quote.warning else ""
    return (f"Worst-case cost: {runtime / HOUR_S:.4g} h max runtime{capped} x {config.instance_count} x "
            f"{config.instance_type} at ${quote.usd_per_hour:g}/h = ${total:,.2f} (price: {quote.label}{spot})"
            f"{warning}")


def worst_case_estimate(config: Any, clients: Any, price_book: PriceBook | None = None) -> str | None:
    """One line printed before submission: max runtime (capped by the budget) x instances x price, with
    the price source. None in local mode without a budget (it costs nothing)."""
    return plan_cost(config, clients, price_book).line


def _session_region(clients: Any) -> str | None:
    try:
        return clients.session.region_name
    except (AttributeError, *TRANSPORT_ERRORS):
        return None
