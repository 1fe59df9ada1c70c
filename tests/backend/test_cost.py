"""Prices (Price List API through botocore's Stubber, moto's HTTP 500, disk cache, bundled table) and cost
arithmetic on DescribeTrainingJob answers."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from botocore.stub import Stubber

from ade_mlflow_plugin.backend import cost
from ade_mlflow_plugin.backend.aws import AwsClients
from ade_mlflow_plugin.backend.cost import PriceBook
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.job.contract import Cost

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def price_item(instance: str, usage: str, usd: str, region: str = "us-east-1", component: str = "Training",
               unit: str = "Hrs") -> str:
    """One PriceList entry as GetProducts returns it: a JSON document in a string."""
    sku, term, rate = "7KYW9A3B2EXAMPLE", "JRTCKXETXF", "6YS6EN2CT7"
    return json.dumps({
        "product": {
            "productFamily": "ML Instance",
            "attributes": {
                "regionCode": region, "servicecode": "AmazonSageMaker", "usagetype": usage,
                "locationType": "AWS Region", "location": "US East (N. Virginia)",
                "servicename": "Amazon SageMaker", "instanceName": instance, "operation": "RunInstance",
                "component": component, "vCpu": "8", "memory": "32 GiB", "gpu": "1", "gpuMemory": "24",
            },
            "sku": sku,
        },
        "serviceCode": "AmazonSageMaker",
        "terms": {"OnDemand": {f"{sku}.{term}": {
            "priceDimensions": {f"{sku}.{term}.{rate}": {
                "unit": unit, "endRange": "Inf", "beginRange": "0", "appliesTo": [],
                "description": f"${usd} per hour for {usage}", "rateCode": f"{sku}.{term}.{rate}",
                "pricePerUnit": {"USD": usd},
            }},
            "sku": sku, "effectiveDate": "2026-11-01T00:00:00Z", "offerTermCode": term, "termAttributes": {},
        }}},
        "version": "20261101000000",
        "publicationDate": "2026-11-01T00:00:00Z",
    })


def g5_answer(usd: str = "1.2120000000") -> dict:
    """A training row plus the hosting, notebook and processing rows the same instance name also matches."""
    return {"FormatVersion": "aws_v1", "PriceList": [
        price_item("ml.g5.2xlarge", "USE1-Host:ml.g5.2xlarge", "1.5150000000", component="Hosting"),
        price_item("ml.g5.2xlarge", "USE1-Train:ml.g5.2xlarge", usd),
        price_item("ml.g5.2xlarge", "USE1-Notebk:ml.g5.2xlarge", "1.4100000000", component="Notebook"),
        price_item("ml.g5.2xlarge", "USE1-Processing:ml.g5.2xlarge", "1.3000000000", component="Processing"),
    ]}


def expected(instance: str = "ml.g5.2xlarge", region: str = "us-east-1") -> dict:
    return {"ServiceCode": "AmazonSageMaker", "FormatVersion": "aws_v1", "Filters": [
        {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
        {"Type": "TERM_MATCH", "Field": "instanceName", "Value": instance}]}


def stubbed_pricing(*answers: dict | Exception) -> tuple[AwsClients, Stubber]:
    client = boto3.client("pricing", region_name="us-east-1")
    stubber = Stubber(client)
    for answer in answers:
        if isinstance(answer, Exception):
            stubber.add_client_error("get_products", "ServiceUnavailableException", "Rate exceeded", 503)
        else:
            stubber.add_response("get_products", answer, expected())
    stubber.activate()
    clients = AwsClients(region="us-east-1")
    clients.set_client("pricing", client)
    return clients, stubber


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_price_list_training_row_is_used_and_cached_until_the_ttl(tmp_path):
    path, clock = tmp_path / "prices.json", Clock(T0.timestamp())
    clients, stubber = stubbed_pricing(g5_answer())
    quote = PriceBook(path, clock=clock).quote(clients, "ml.g5.2xlarge", "us-east-1")
    stubber.assert_no_pending_responses()
    assert (quote.usd_per_hour, quote.source, quote.as_of, quote.warning) == (
        1.212, "AWS Price List API", "2026-11-29", None)
    assert json.loads(path.read_text())["us-east-1/ml.g5.2xlarge"]["usd_per_hour"] == 1.212

    # A new process (new PriceBook) within the TTL reads the cache: a call would hit the empty Stubber.
    clients, stubber = stubbed_pricing()
    clock.now += 6 * 86400
    assert PriceBook(path, clock=clock).quote(clients, "ml.g5.2xlarge", "us-east-1").usd_per_hour == 1.212

    clock.now += 2 * 86400  # past 7 days: asked again, the new answer replaces the cached one
    clients, stubber = stubbed_pricing(g5_answer("1.3000000000"))
    quote = PriceBook(path, clock=clock).quote(clients, "ml.g5.2xlarge", "us-east-1")
    stubber.assert_no_pending_responses()
    assert quote.usd_per_hour == 1.3 and quote.as_of == "2026-12-07"


def test_paginated_answer_is_read_to_the_end(tmp_path):
    client = boto3.client("pricing", region_name="us-east-1")
    stubber = Stubber(client)
    first = {"FormatVersion": "aws_v1", "NextToken": "page2",
             "PriceList": [price_item("ml.g5.2xlarge", "USE1-Host:ml.g5.2xlarge", "1.51", component="Hosting")]}
    stubber.add_response("get_products", first, expected())
    stubber.add_response("get_products", g5_answer(), {**expected(), "NextToken": "page2"})
    stubber.activate()
    clients = AwsClients(region="us-east-1")
    clients.set_client("pricing", client)
    assert PriceBook(tmp_path / "p.json").quote(clients, "ml.g5.2xlarge", "us-east-1").usd_per_hour == 1.212
    stubber.assert_no_pending_responses()


def test_moto_price_list_500_falls_back_to_the_bundled_table_with_a_warning(aws, tmp_path):
    clock = Clock(T0.timestamp())
    book = PriceBook(tmp_path / "prices.json", clock=clock)
    quote = book.quote(AwsClients(region="us-east-1"), "ml.g5.2xlarge", "us-east-1")
    assert quote.usd_per_hour == cost.FALLBACK_PRICES["us-east-1"]["ml.g5.2xlarge"]
    assert quote.label == f"bundled price table, {cost.FALLBACK_AS_OF}"
    assert "Price List API failed" in quote.warning and "bundled price table of" in quote.warning
    assert "\n" not in quote.warning
    assert not (tmp_path / "prices.json").exists()  # fallback figures are never cached as API answers
    # The failure is remembered for this process: the next lookup does not wait on the API again.
    assert book.quote(None, "ml.g5.2xlarge", "us-east-1").usd_per_hour == quote.usd_per_hour
    clock.now += cost.FAILURE_TTL_S  # ... for a while; then it asks again
    clients, stubber = stubbed_pricing(g5_answer())
    assert book.quote(clients, "ml.g5.2xlarge", "us-east-1").usd_per_hour == 1.212
    stubber.assert_no_pending_responses()


def test_stale_cache_is_preferred_over_the_table_when_the_api_fails(tmp_path):
    path, clock = tmp_path / "prices.json", Clock(T0.timestamp())
    PriceBook(path, clock=clock).quote(stubbed_pricing(g5_answer())[0], "ml.g5.2xlarge", "us-east-1")
    clock.now += 30 * 86400
    clients, stubber = stubbed_pricing(RuntimeError("throttled"))
    quote = PriceBook(path, clock=clock).quote(clients, "ml.g5.2xlarge", "us-east-1")
    stubber.assert_no_pending_responses()
    assert quote.usd_per_hour == 1.212 and quote.as_of == "2026-11-29"
    assert "ServiceUnavailableException" in quote.warning and "cached price of 2026-11-29" in quote.warning


@pytest.mark.parametrize("instance,region", [("ml.x9.4xlarge", "us-east-1"), ("ml.g5.2xlarge", "ap-south-2")])
def test_unknown_instance_or_region_gives_no_price_and_a_warning(tmp_path, instance, region):
    client = boto3.client("pricing", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": []}, expected(instance, region))
    stubber.activate()
    clients = AwsClients(region="us-east-1")
    clients.set_client("pricing", client)
    quote = PriceBook(tmp_path / "p.json").quote(clients, instance, region)
    assert not quote.known and quote.usd_per_hour is None
    assert f"no training price for {instance} in {region}" in quote.warning
    assert "cost figures are omitted" in quote.warning


def test_unparseable_cache_file_is_ignored(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text("{not json")
    clients, _ = stubbed_pricing(g5_answer())
    assert PriceBook(path).quote(clients, "ml.g5.2xlarge", "us-east-1").usd_per_hour == 1.212
    assert "us-east-1/ml.g5.2xlarge" in json.loads(path.read_text())


def _job(**extra) -> dict:
    answer = {"TrainingJobName": "j", "TrainingJobStatus": "Completed",
              "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 50},
              "EnableManagedSpotTraining": True, "TrainingTimeInSeconds": 3600, "BillableTimeInSeconds": 1200,
              "TrainingStartTime": T0, "TrainingEndTime": T0 + timedelta(seconds=3600)}
    answer.update(extra)
    return answer


def test_exact_cost_and_spot_savings_of_two_spot_instances():
    job = _job()
    assert cost.exact_cost(job, 1.212) == pytest.approx(0.808)
    assert cost.spot_savings_pct(job) == 66.7
    assert cost.spot_savings_usd(job, 1.212) == pytest.approx(1.616)
    on_demand = _job(EnableManagedSpotTraining=False, BillableTimeInSeconds=3600)
    assert cost.exact_cost(on_demand, 1.212) == pytest.approx(2.424)
    assert cost.spot_savings_pct(on_demand) is None and cost.spot_savings_usd(on_demand, 1.212) == 0.0
    assert cost.exact_cost(_job(BillableTimeInSeconds=None), 1.212) is None


def test_running_estimate_uses_wall_time_since_training_start():
    running = _job(TrainingJobStatus="InProgress", TrainingEndTime=None)
    del running["BillableTimeInSeconds"], running["TrainingTimeInSeconds"]
    assert cost.running_cost(running, 1.212, T0 + timedelta(seconds=600)) == pytest.approx(0.404)
    assert cost.elapsed_s(running, T0 + timedelta(seconds=600)) == 600
    assert cost.running_cost({**running, "TrainingStartTime": None}, 1.212, T0) is None
    # Once ended, the end time bounds the estimate whatever the clock says.
    assert cost.running_cost(_job(), 1.212, T0 + timedelta(days=3)) == pytest.approx(2.424)


def test_instance_groups_count_every_instance():
    groups = {"InstanceGroups": [{"InstanceType": "ml.g5.2xlarge", "InstanceCount": 2, "InstanceGroupName": "a"},
                                 {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "InstanceGroupName": "b"}]}
    assert cost.instances({"ResourceConfig": groups}) == ("ml.g5.2xlarge", 3)
    groups["InstanceGroups"][1]["InstanceType"] = "ml.p4d.24xlarge"
    assert cost.instances({"ResourceConfig": groups}) == (None, 3)


def _config(**overrides) -> CloudTrainingConfig:
    base = {"role_arn": "arn:aws:iam::123456789012:role/SageMakerRole", "bucket": "ade-cost-test",
            "region": "us-east-1", "instance_type": "ml.g5.2xlarge", "instance_count": 2, "max_runtime_s": 86400}
    return CloudTrainingConfig.from_backend_config({**base, **overrides})


def test_worst_case_estimate_line(tmp_path):
    clients, _ = stubbed_pricing(g5_answer())
    line = cost.worst_case_estimate(_config(use_spot=True), clients, PriceBook(tmp_path / "p.json"))
    assert line == ("Worst-case cost: 24 h max runtime x 2 x ml.g5.2xlarge at $1.212/h = $58.18 "
                    f"(price: AWS Price List API, {datetime.now(timezone.utc):%Y-%m-%d}; spot usually bills less)")
    assert cost.worst_case_estimate(_config(mode="local", role_arn=None, bucket=None), None) is None


def test_worst_case_estimate_without_a_price_says_so_on_one_line(tmp_path, aws):
    line = cost.worst_case_estimate(_config(instance_type="ml.x9.4xlarge"), AwsClients(region="us-east-1"),
                                    PriceBook(tmp_path / "p.json"))
    assert line.startswith("Worst-case cost: unknown; WARNING: the AWS Price List API failed")
    assert "ml.x9.4xlarge" in line and "\n" not in line


def test_a_budget_caps_max_runtime_and_the_line_says_so(tmp_path):
    clients, _ = stubbed_pricing(g5_answer())
    plan = cost.plan_cost(_config(max_cost_usd=10.0), clients, PriceBook(tmp_path / "p.json"))
    capped = int(10.0 / (2 * 1.212) * 3600)  # 14851 s: budget / (count x price) x 3600
    assert plan.cost == Cost(1.212, plan.cost.price_source, 10.0, "stop")
    assert plan.cost.affordable_s(2) == capped
    assert plan.line.startswith(f"Worst-case cost: {capped / 3600:.4g} h max runtime (capped by max_cost_usd $10: "
                                "SageMaker stops the job there; its launcher stops the job at the budget) x 2 x "
                                "ml.g5.2xlarge at $1.212/h = $10.00 (price: AWS Price List API")


def test_a_budget_too_small_for_a_useful_run_is_refused_with_the_figure(tmp_path):
    clients, _ = stubbed_pricing(g5_answer())
    with pytest.raises(ConfigError) as caught:
        cost.plan_cost(_config(max_cost_usd=0.30), clients, PriceBook(tmp_path / "p.json"))
    # $0.30 buys 445 s of 2 x $1.212/h; ten minutes cost $0.40.
    assert caught.value.exit_code == 2 and "\n" not in caught.value.message
    assert caught.value.message.startswith("backend config 'max_cost_usd' $0.3 buys only 445 s of 2 x ml.g5.2xlarge")
    assert caught.value.message.endswith("at least 10 minutes: set max_cost_usd to $0.40 or more")


def test_local_mode_rehearses_the_budget_at_the_bundled_price_without_asking_aws():
    config = _config(mode="local", role_arn=None, bucket=None, instance_type="ml.g5.xlarge", instance_count=1,
                     max_cost_usd=0.01)  # far below the floor: a local job costs nothing
    plan = cost.plan_cost(config, None)
    assert plan.cost == Cost(1.408, f"bundled price table, {cost.FALLBACK_AS_OF}", 0.01, "stop")
    assert plan.line == ("Budget: max_cost_usd $0.01 = 25 s of 1 x ml.g5.xlarge at $1.408/h (bundled price table, "
                         f"{cost.FALLBACK_AS_OF}); this local job costs nothing, its launcher stops the job at the "
                         "budget")
    assert cost.plan_cost(_config(mode="local", role_arn=None, bucket=None), None) == cost.CostPlan(None, None)


def _submit(bucket: str, tracking: str, **config):
    import io

    import mlflow

    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend
    from tests.conftest import FIXTURES

    boto3.client("s3").create_bucket(Bucket=bucket)
    backend_config = {"role_arn": "arn:aws:iam::123456789012:role/SageMakerRole", "bucket": bucket,
                      "region": "us-east-1", "wait": False, "SYNCHRONOUS": False, "instance_type": "ml.g5.xlarge",
                      "instance_count": 2, **config}
    console = io.StringIO()
    backend = AdeSageMakerBackend(console=console)
    backend.run(str(FIXTURES / "backend_project"), "main", {"data": str(FIXTURES / "backend_project_data")}, None,
                backend_config, tracking, mlflow.get_experiment_by_name("Default").experiment_id)
    return backend.last_submission.request, console.getvalue()


def test_submission_prints_the_capped_worst_case_and_aws_holds_the_budget(aws, sqlite_tracking, monkeypatch,
                                                                           tmp_path):
    monkeypatch.setenv("ADE_MLFLOW_CACHE_DIR", str(tmp_path / "cache"))  # moto's Price List answers 500
    request, console = _submit("ade-budget-cap", sqlite_tracking, max_cost_usd=5.0)
    limit = 5.0 / (2 * 1.408) * 3600  # the bundled price of ml.g5.xlarge: budget / (count x price) x 3600
    assert request["StoppingCondition"]["MaxRuntimeInSeconds"] == int(limit)
    hyper = request["HyperParameters"]
    assert (json.loads(hyper["ade_max_cost_usd"]), json.loads(hyper["ade_usd_per_hour"])) == ("5.0", "1.408")
    line = next(line for line in console.splitlines() if line.startswith("Worst-case cost:"))
    assert f"{int(limit) / 3600:.4g} h max runtime (capped by max_cost_usd $5" in line and "= $5.00" in line


def test_a_budget_below_the_floor_is_refused_before_any_run_exists(aws, sqlite_tracking, monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setenv("ADE_MLFLOW_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"buys only 383 s .* set max_cost_usd to \$0\.47 or more"):
        _submit("ade-budget-floor", sqlite_tracking, max_cost_usd=0.30)
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
