"""`ade-mlflow cost`: what a job cost (or is costing), by job name, MLflow run id or whole experiment.

Figures come from DescribeTrainingJob (BillableTimeInSeconds, TrainingTimeInSeconds) and the price
lookup of cost.py, so they match what the follower logged as ``cost_usd``, also for jobs followed by
nobody (``"wait": false``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable

import click

from ade_mlflow_plugin.backend.commands import Target, resolve_target

# aws.py and errors.py import mlflow and boto3, cost.py botocore (~2 s together): they are imported
# where used, so that `ade-mlflow cost --help` and its usage errors stay fast.
if TYPE_CHECKING:
    from ade_mlflow_plugin.backend.aws import AwsClients
    from ade_mlflow_plugin.backend.cost import PriceBook

HEADER = ("JOB", "INSTANCE", "SPOT", "BILLABLE", "COST", "SAVINGS")
_NOT_FOUND = {"ValidationException", "ResourceNotFound"}


@dataclass
class Row:
    """One job's line in the table; cost None when unknown."""

    job: str
    instance: str
    spot: bool
    billable_s: float | None
    cost_usd: float | None
    savings_pct: float | None = None
    savings_usd: float = 0.0
    note: str = ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _money(usd: float | None) -> str:
    return "n/a" if usd is None else f"${usd:,.3f}"


def _cells(row: Row) -> tuple[str, ...]:
    savings = "-" if row.savings_pct is None else f"{row.savings_pct:.1f}% ({_money(row.savings_usd)})"
    money = _money(row.cost_usd) + (f" {row.note}" if row.note else "")
    return (row.job, row.instance, "yes" if row.spot else "no", _duration(row.billable_s), money, savings)


def render(rows: list[Row]) -> str:
    """The table, with a totals line over the jobs whose cost is known."""
    known = [r for r in rows if r.cost_usd is not None]
    billable = [r.billable_s for r in rows if r.billable_s is not None]
    total = ("TOTAL", f"{len(rows)} job{'s' if len(rows) != 1 else ''}", "",
             _duration(sum(billable)) if billable else "-",
             _money(sum(r.cost_usd for r in known)) + ("" if len(known) == len(rows) else " (known costs)"),
             _money(sum(r.savings_usd for r in rows)))
    lines = [HEADER, *(_cells(r) for r in rows), total]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(len(text) - 1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


class CostReport:
    """Turns targets into rows; one AwsClients per region, one price book, each warning printed once."""

    def __init__(self, region: str | None, price_book: PriceBook | None = None) -> None:
        from ade_mlflow_plugin.backend import cost

        self.region = region
        self.book = price_book or cost.default_price_book()
        self._clients: dict[str | None, AwsClients] = {}
        self._warned: set[str] = set()

    def clients(self, region: str | None) -> AwsClients:
        if region not in self._clients:
            from ade_mlflow_plugin.backend.aws import AwsClients

            self._clients[region] = AwsClients(region=region, interactive=True)
        return self._clients[region]

    def row(self, target: Target, strict: bool = True) -> Row:
        if target.mode == "local":
            return Row(target.job_name, "local", False, None, 0.0)
        description = self._describe(target, strict)
        if description is None:
            return Row(target.job_name, "-", False, None, None, note="(job not found)")
        return self._row_of(description, target)

    def _describe(self, target: Target, strict: bool) -> dict[str, Any] | None:
        from ade_mlflow_plugin.backend.aws import AWS_ERRORS

        from ade_mlflow_plugin.errors import ConfigError, aws_error, aws_error_code

        try:
            return self.clients(target.region).sagemaker.describe_training_job(TrainingJobName=target.job_name)
        except AWS_ERRORS as exc:
            if aws_error_code(exc) not in _NOT_FOUND:
                raise aws_error("DescribeTrainingJob", exc) from exc
            if not strict:
                return None
            where = target.region or self.clients(None).session.region_name
            raise ConfigError(f"no training job '{target.job_name}' in {where}: check the job name, the run "
                              "id or --region") from exc

    def _row_of(self, description: dict[str, Any], target: Target) -> Row:
        from ade_mlflow_plugin.backend import cost

        instance, count = cost.instances(description)
        spot = bool(description.get("EnableManagedSpotTraining"))
        row = Row(description["TrainingJobName"], f"{instance or 'mixed'} x{count}", spot,
                  description.get("BillableTimeInSeconds"), None)
        region = description.get("TrainingJobArn", "").split(":")[3:4] or [target.region or "us-east-1"]
        quote = self.book.quote(self.clients(target.region), instance or "?", region[0])
        if quote.warning and quote.warning not in self._warned:
            self._warned.add(quote.warning)
            click.echo(f"WARNING: {quote.warning}", err=True)
        if not quote.known:
            return row
        row.cost_usd = cost.exact_cost(description, quote.usd_per_hour)
        if row.cost_usd is None:
            row.cost_usd = cost.running_cost(description, quote.usd_per_hour, datetime.now(timezone.utc))
            row.note = f"({description['TrainingJobStatus']}, so far)" if row.cost_usd is not None else ""
        row.savings_pct = cost.spot_savings_pct(description)
        row.savings_usd = cost.spot_savings_usd(description, quote.usd_per_hour)
        return row


def experiment_targets(name: str, region: str | None) -> Iterable[Target]:
    """Every run of the experiment submitted through the ade-sagemaker backend, newest first."""
    import mlflow

    from ade_mlflow_plugin.errors import ConfigError

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ConfigError(f"experiment '{name}' not found on {mlflow.get_tracking_uri()}: check the name "
                          "(mlflow experiments search) and MLFLOW_TRACKING_URI")
    token = None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if "sagemaker.job_name" in tags:
                yield Target(tags["sagemaker.job_name"], region or tags.get("sagemaker.region"),
                             tags.get("sagemaker.mode", "sagemaker"), run.info.run_id)
        token = page.token
        if not token:
            return


@click.command("cost")
@click.argument("ref", required=False)
@click.option("--experiment", "-e", default=None, metavar="NAME",
              help="Every ade-sagemaker run of this MLflow experiment.")
@click.option("--region", default=None, help="AWS region (default: the run's sagemaker.region tag).")
def cost_command(ref: str | None, experiment: str | None, region: str | None) -> None:
    """Cost of a training job by SageMaker JOB name or MLflow RUN_ID, or of a whole --experiment.

    Prints job, instance, spot, billable time, cost and spot savings, with totals.
    """
    if bool(ref) == bool(experiment):
        raise click.UsageError("give a JOB name or RUN_ID, or --experiment NAME (one of them)")
    report = CostReport(region)
    if ref:
        rows = [report.row(resolve_target(ref, region))]
    else:
        rows = [report.row(target, strict=False) for target in experiment_targets(experiment, region)]
        if not rows:
            click.echo(f"No ade-sagemaker runs in experiment '{experiment}'.", err=True)
            return
    click.echo(render(rows))
    sys.stdout.flush()
