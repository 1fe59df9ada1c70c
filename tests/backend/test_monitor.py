"""The cost ticker, budget guard and CloudWatch mirror, driven by the real JobFollower through Stubber-scripted
DescribeTrainingJob answers, with a real MLflow store, moto CloudWatch and the real plugin manager."""
from __future__ import annotations

import io
import uuid
from datetime import datetime, timedelta, timezone

import boto3
import mlflow
import pytest
from botocore.stub import Stubber

from ade_mlflow_plugin import hookimpl
from ade_mlflow_plugin.backend.aws import AwsClients
from ade_mlflow_plugin.backend.cost import FALLBACK_AS_OF, FALLBACK_PRICES, PriceBook
from ade_mlflow_plugin.backend.monitor import SYSTEM_METRICS, build_observers
from ade_mlflow_plugin.backend.submitted_run import AdeSubmittedRun, JobFollower, SageMakerJob
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.hooks import get_plugin_manager, register_plugin
from tests.backend.test_cost import expected, g5_answer

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
STEP_S = 120  # the fake clock moves this much per follower sleep


class FakeClock:
    """The monitor's clock; the follower's sleep moves it, and can run a callback at chosen sleeps."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.sleeps = 0
        self.on_sleep: dict[int, callable] = {}

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, _seconds: float) -> None:
        self.sleeps += 1
        self.now += timedelta(seconds=STEP_S)
        if self.sleeps in self.on_sleep:
            self.on_sleep[self.sleeps]()


class AlertRecorder:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    @hookimpl
    def ade_cost_alert(self, run_id, job_name, cost_usd, budget_usd, fraction, action) -> None:
        self.calls.append({"run_id": run_id, "job_name": job_name, "cost_usd": cost_usd,
                           "budget_usd": budget_usd, "fraction": fraction, "action": action})


def describe(job: str, status: str, secondary: str, t0: datetime, start_after_s: int | None = None,
             instance: str = "ml.g5.2xlarge", **extra) -> dict:
    answer = {
        "TrainingJobName": job,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{job}",
        "TrainingJobStatus": status, "SecondaryStatus": secondary,
        "AlgorithmSpecification": {"TrainingImage": "img", "TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": instance, "InstanceCount": 2, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 172800},
        "EnableManagedSpotTraining": True, "CreationTime": t0, "ModelArtifacts": {"S3ModelArtifacts": ""},
    }
    if start_after_s is not None:
        answer["TrainingStartTime"] = t0 + timedelta(seconds=start_after_s)
    answer.update(extra)
    return answer


def ended(job: str, status: str, t0: datetime, training_s: int, billable_s: int, start_after_s: int = STEP_S,
          **extra) -> dict:
    return describe(job, status, status, t0, start_after_s=start_after_s,
                    TrainingEndTime=t0 + timedelta(seconds=start_after_s + training_s),
                    TrainingTimeInSeconds=training_s, BillableTimeInSeconds=billable_s, **extra)


def config(**overrides) -> CloudTrainingConfig:
    base = {"role_arn": ROLE, "bucket": "ade-monitor-test", "region": "us-east-1",
            "instance_type": "ml.g5.2xlarge", "instance_count": 2, "use_spot": True}
    return CloudTrainingConfig.from_backend_config({**base, **overrides})


def stubbed_clients(job: str, answers: list[dict], stop_before: int | None = None,
                    pricing: dict | None = None, instance: str = "ml.g5.2xlarge") -> tuple[AwsClients, list]:
    """SageMaker and Price List clients wrapped in Stubbers; CloudWatch stays moto's."""
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    sm_stub = Stubber(sagemaker)
    for i, answer in enumerate(answers):
        if i == stop_before:
            sm_stub.add_response("stop_training_job", {}, {"TrainingJobName": job})
        sm_stub.add_response("describe_training_job", answer, {"TrainingJobName": job})
    sm_stub.activate()
    clients = AwsClients(region="us-east-1")
    clients.set_client("sagemaker", sagemaker)
    stubs = [sm_stub]
    if pricing is not None:
        client = boto3.client("pricing", region_name="us-east-1")
        price_stub = Stubber(client)
        price_stub.add_response("get_products", pricing, expected(instance))
        price_stub.activate()
        clients.set_client("pricing", client)
        stubs.append(price_stub)
    return clients, stubs


def follow(cfg: CloudTrainingConfig, clients: AwsClients, job: str, clock: FakeClock, tmp_path,
           plugin_manager=None) -> tuple[str, io.StringIO, AdeSubmittedRun]:
    client = mlflow.MlflowClient()
    run_id = client.create_run("0").info.run_id
    console = io.StringIO()
    sm_job = SageMakerJob(clients.sagemaker, job)
    observers = build_observers(config=cfg, clients=clients, mlflow_client=client, run_id=run_id, job=sm_job,
                                console=console, price_book=PriceBook(tmp_path / "prices.json"),
                                plugin_manager=plugin_manager, clock=clock)
    follower = JobFollower(job=sm_job, run_id=run_id, mlflow_client=client, console=console,
                           poll_interval_s=1, sleep=clock.sleep, observers=observers)
    submitted = AdeSubmittedRun(run_id, job, follower)
    submitted.wait()
    return run_id, console, submitted


def new_job() -> tuple[str, datetime]:
    t0 = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(hours=2)
    return f"ade-cost-{uuid.uuid4().hex[:10]}", t0


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, key),
                                              key=lambda m: (m.step, m.timestamp))]


def test_two_spot_instances_cost_0808_and_save_667_percent_on_the_mlflow_server(tracking_uri, aws, tmp_path):
    job, t0 = new_job()
    answers = [describe(job, "InProgress", "Starting", t0),
               describe(job, "InProgress", "Training", t0, start_after_s=STEP_S),
               describe(job, "InProgress", "Training", t0, start_after_s=STEP_S),
               ended(job, "Completed", t0, training_s=3600, billable_s=1200)]
    clients, stubs = stubbed_clients(job, answers, pricing=g5_answer("1.2120000000"))
    run_id, console, submitted = follow(config(), clients, job, FakeClock(t0), tmp_path)
    for stub in stubs:
        stub.assert_no_pending_responses()
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["cost_usd"] == pytest.approx(0.808)
    assert run.data.tags["sagemaker.spot_savings_pct"] == "66.7"
    assert run.data.tags["sagemaker.billable_seconds"] == "1200"
    assert run.data.tags["sagemaker.price_source"].startswith("AWS Price List API, ")
    assert run.data.tags["sagemaker.price_usd_per_hour"] == "1.212"
    # One running estimate per poll once training started (step = seconds since start), then the exact cost.
    assert history(run_id, "cost_usd") == [(0, 0.0), (120, pytest.approx(0.0808)), (3600, pytest.approx(0.808))]
    text = console.getvalue()
    assert f"{job}: cost $0.8080 (spot saved 66.7%)" in text and "WARNING" not in text


def test_budget_of_040_alerts_once_at_50_80_100_percent_stops_the_job_and_tags_why(tracking_uri, aws, tmp_path):
    job, t0 = new_job()
    training = [describe(job, "InProgress", "Training", t0, start_after_s=STEP_S) for _ in range(6)]
    answers = [describe(job, "InProgress", "Starting", t0), *training,
               describe(job, "Stopping", "Stopping", t0, start_after_s=STEP_S),
               ended(job, "Stopped", t0, training_s=780, billable_s=260)]
    # Poll 6 (600 s of training, 2 x $1.212/h = $0.404) crosses $0.40: StopTrainingJob comes before poll 7.
    clients, stubs = stubbed_clients(job, answers, stop_before=7, pricing=g5_answer("1.2120000000"))
    recorder = AlertRecorder()
    pm = get_plugin_manager(builtin_sync=False)
    register_plugin(pm, recorder, "recorder")
    run_id, console, submitted = follow(config(max_cost_usd=0.40), clients, job, FakeClock(t0), tmp_path, pm)
    for stub in stubs:
        stub.assert_no_pending_responses()  # exactly one StopTrainingJob, at the right poll
    assert [(c["action"], round(c["fraction"], 3), round(c["cost_usd"], 4)) for c in recorder.calls] == [
        ("warn", 0.606, 0.2424), ("warn", 0.808, 0.3232), ("stop", 1.01, 0.404)]
    assert {(c["run_id"], c["job_name"], c["budget_usd"]) for c in recorder.calls} == {(run_id, job, 0.40)}
    run = mlflow.get_run(run_id)
    assert run.info.status == "KILLED" and submitted.get_status() == "KILLED"
    assert run.data.tags["ade.stop_reason"] == "budget"
    assert run.data.tags["ade.stop_detail"] == ("budget: estimated cost $0.40 reached max_cost_usd $0.40 "
                                                "(on_budget=stop)")
    # The exact (spot) cost is the run's final figure, logged at a step after every estimate.
    steps = history(run_id, "cost_usd")
    assert steps[-1] == (780, pytest.approx(260 * 2 * 1.212 / 3600, abs=1e-6))
    assert [s for s, _ in steps] == [0, 120, 240, 360, 480, 600, 720, 780]
    assert run.data.tags["sagemaker.spot_savings_pct"] == "66.7"
    text = console.getvalue()
    assert text.count("BUDGET:") == 3 and "StopTrainingJob sent" in text and "WARNING" not in text


def test_on_budget_alert_warns_at_100_percent_and_lets_the_job_run(tracking_uri, aws, tmp_path):
    job, t0 = new_job()
    training = [describe(job, "InProgress", "Training", t0, start_after_s=STEP_S) for _ in range(3)]
    answers = [describe(job, "InProgress", "Starting", t0), *training,
               ended(job, "Completed", t0, training_s=400, billable_s=400, EnableManagedSpotTraining=False)]
    clients, stubs = stubbed_clients(job, answers, pricing=g5_answer("1.2120000000"))  # no StopTrainingJob
    recorder = AlertRecorder()
    pm = get_plugin_manager(builtin_sync=False)
    register_plugin(pm, recorder, "recorder")
    run_id, console, _ = follow(config(max_cost_usd=0.20, on_budget="alert", use_spot=False), clients, job,
                                FakeClock(t0), tmp_path, pm)
    for stub in stubs:
        stub.assert_no_pending_responses()
    # 240 s of training: $0.1616 crosses 50% and 80% in one poll; the exact cost at the end, $0.2693,
    # crosses 100%: a warning only, in alert mode (and the job has ended anyway).
    assert [(c["action"], round(c["fraction"], 3)) for c in recorder.calls] == [
        ("warn", 0.808), ("warn", 0.808), ("warn", 1.347)]
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and "ade.stop_reason" not in run.data.tags
    assert "sagemaker.spot_savings_pct" not in run.data.tags  # on demand: nothing saved, no tag


def test_failing_alert_plugin_is_one_warning_and_the_stop_still_happens(tracking_uri, aws, tmp_path):
    class Broken:
        @hookimpl
        def ade_cost_alert(self, run_id, job_name, cost_usd, budget_usd, fraction, action) -> None:
            raise RuntimeError("pager unreachable")

    job, t0 = new_job()
    answers = [describe(job, "InProgress", "Training", t0, start_after_s=0),
               describe(job, "InProgress", "Training", t0, start_after_s=0),
               ended(job, "Stopped", t0, training_s=120, billable_s=120, start_after_s=0,
                     EnableManagedSpotTraining=False)]
    clients, stubs = stubbed_clients(job, answers, stop_before=2, pricing=g5_answer("1.2120000000"))
    pm = get_plugin_manager(builtin_sync=False)
    register_plugin(pm, Broken(), "broken")
    run_id, console, _ = follow(config(max_cost_usd=0.05, use_spot=False), clients, job, FakeClock(t0),
                                tmp_path, pm)
    for stub in stubs:
        stub.assert_no_pending_responses()
    text = console.getvalue()
    assert "WARNING: an ade_cost_alert plugin failed: RuntimeError: pager unreachable" in text
    assert mlflow.get_run(run_id).data.tags["ade.stop_detail"].startswith("budget: estimated cost $0.08")


def test_cloudwatch_system_metrics_appear_in_the_run_once_each(tracking_uri, aws, tmp_path):
    job, t0 = new_job()
    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")

    def put(host: str, minutes: range, offset: float = 0.0) -> None:
        data = [{"MetricName": metric, "Timestamp": t0 + timedelta(minutes=m), "Unit": "Percent",
                 "Value": offset + 10 * i + m, "Dimensions": [{"Name": "Host", "Value": host}]}
                for i, metric in enumerate(SYSTEM_METRICS) for m in minutes]
        cloudwatch.put_metric_data(Namespace="/aws/sagemaker/TrainingJobs", MetricData=data)

    for n in (1, 2):
        put(f"{job}/algo-{n}", range(1, 3), offset=100 * n)
    put(f"{job}x/algo-1", range(1, 5), offset=900)  # another job whose name starts alike: never mirrored
    clock = FakeClock(t0)
    # After the second poll the job publishes two more minutes; the next polls overlap what was read.
    clock.on_sleep[2] = lambda: [put(f"{job}/algo-{n}", range(3, 5), offset=100 * n) for n in (1, 2)]
    answers = [describe(job, "InProgress", "Training", t0, start_after_s=0) for _ in range(3)]
    answers.append(describe(job, "Completed", "Completed", t0, start_after_s=0,
                            TrainingEndTime=t0 + timedelta(seconds=330), TrainingTimeInSeconds=330,
                            BillableTimeInSeconds=330))
    clients, stubs = stubbed_clients(job, answers, pricing=g5_answer())
    run_id, console, _ = follow(config(), clients, job, clock, tmp_path)
    for stub in stubs:
        stub.assert_no_pending_responses()
    assert "WARNING" not in console.getvalue()
    client = mlflow.MlflowClient()
    keys = {k for k in mlflow.get_run(run_id).data.metrics if k.startswith("system/")}
    assert keys == {f"system/sagemaker/algo-{n}/{m}" for n in (1, 2) for m in SYSTEM_METRICS}
    for n in (1, 2):
        for i, metric in enumerate(SYSTEM_METRICS):
            points = client.get_metric_history(run_id, f"system/sagemaker/algo-{n}/{metric}")
            got = sorted((p.timestamp, p.step, p.value) for p in points)
            want = [(int((t0 + timedelta(minutes=m)).timestamp() * 1000), 60 * m, 100 * n + 10 * i + m)
                    for m in range(1, 5)]
            assert got == want, metric


def test_unknown_instance_type_warns_omits_cost_and_never_crashes(tracking_uri, aws, tmp_path):
    job, t0 = new_job()
    instance = "ml.x9.4xlarge"
    answers = [describe(job, "InProgress", "Training", t0, start_after_s=0, instance=instance),
               ended(job, "Completed", t0, training_s=600, billable_s=200, start_after_s=0, instance=instance)]
    clients, stubs = stubbed_clients(job, answers, instance=instance,
                                     pricing={"FormatVersion": "aws_v1", "PriceList": []})
    run_id, console, submitted = follow(config(instance_type=instance, max_cost_usd=1.0), clients, job,
                                        FakeClock(t0), tmp_path)
    for stub in stubs:
        stub.assert_no_pending_responses()
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and submitted.wait()
    assert "cost_usd" not in run.data.metrics and "sagemaker.price_source" not in run.data.tags
    assert run.data.tags["sagemaker.billable_seconds"] == "200"  # billing facts need no price
    text = console.getvalue()
    assert text.count(f"no training price for {instance} in us-east-1") == 1
    assert "max_cost_usd $1 cannot be enforced" in text


@pytest.mark.parametrize("region,price", [("us-west-2", FALLBACK_PRICES["us-west-2"]["ml.g5.2xlarge"]),
                                          ("ap-south-2", None)])
def test_price_list_api_down_uses_the_bundled_table_or_omits_cost(tracking_uri, aws, tmp_path, region, price):
    job, t0 = new_job()
    answers = [describe(job, "InProgress", "Training", t0, start_after_s=0),
               ended(job, "Completed", t0, training_s=3600, billable_s=3600, start_after_s=0,
                     EnableManagedSpotTraining=False)]
    clients, stubs = stubbed_clients(job, answers)  # pricing: moto's Price List API, which answers HTTP 500
    run_id, console, _ = follow(config(region=region, use_spot=False), clients, job, FakeClock(t0), tmp_path)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    text = console.getvalue()
    assert "the AWS Price List API failed (HTTP 500)" in text
    if price is None:
        assert "cost_usd" not in run.data.metrics and "cost figures are omitted" in text
    else:
        assert run.data.metrics["cost_usd"] == pytest.approx(2 * price)
        assert run.data.tags["sagemaker.price_source"] == f"bundled price table, {FALLBACK_AS_OF}"
        assert f"bundled price table of {FALLBACK_AS_OF}" in text


def test_local_mode_has_no_observers():
    cfg = CloudTrainingConfig.from_backend_config({"mode": "local"})
    assert build_observers(config=cfg, clients=None, mlflow_client=None, run_id="r", job=None) == []


def test_failed_stop_is_a_warning_and_is_retried_at_the_next_poll(tracking_uri, aws, tmp_path):
    job, t0 = new_job()
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    stub = Stubber(sagemaker)
    training = describe(job, "InProgress", "Training", t0, start_after_s=0)
    stub.add_response("describe_training_job", training, {"TrainingJobName": job})
    stub.add_response("describe_training_job", training, {"TrainingJobName": job})
    stub.add_client_error("stop_training_job", "ThrottlingException", "Rate exceeded", 400,
                          expected_params={"TrainingJobName": job})
    stub.add_response("describe_training_job", training, {"TrainingJobName": job})
    stub.add_response("stop_training_job", {}, {"TrainingJobName": job})
    stub.add_response("describe_training_job", ended(job, "Stopped", t0, 300, 300, start_after_s=0,
                                                     EnableManagedSpotTraining=False), {"TrainingJobName": job})
    stub.activate()
    clients, price_stubs = stubbed_clients(job, [], pricing=g5_answer("1.2120000000"))
    clients.set_client("sagemaker", sagemaker)
    run_id, console, _ = follow(config(max_cost_usd=0.05, use_spot=False), clients, job, FakeClock(t0), tmp_path)
    stub.assert_no_pending_responses()  # the second StopTrainingJob was sent, once
    text = console.getvalue()
    assert text.count("WARNING: cost: StopTrainingJob failed: ThrottlingException") == 1
    assert text.count("StopTrainingJob sent") == 1 and text.count("BUDGET:") == 3
    run = mlflow.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["ade.stop_reason"] == "budget"


def test_refused_cloudwatch_metrics_is_one_warning_naming_the_permission(tracking_uri, aws, tmp_path):
    from botocore.exceptions import ClientError

    job, t0 = new_job()
    answers = [describe(job, "InProgress", "Training", t0, start_after_s=0) for _ in range(2)]
    answers.append(ended(job, "Completed", t0, training_s=300, billable_s=300, start_after_s=0))
    clients, stubs = stubbed_clients(job, answers, pricing=g5_answer())
    refused = []

    def refuse(model, **_kwargs):
        refused.append(model.name)
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": f"not authorized ({len(refused)})"}},
                          model.name)

    clients.cloudwatch.meta.events.register("before-call.cloudwatch.GetMetricData", refuse)
    run_id, console, _ = follow(config(), clients, job, FakeClock(t0), tmp_path)
    assert mlflow.get_run(run_id).info.status == "FINISHED" and len(refused) >= 2
    warnings = [line for line in console.getvalue().splitlines() if line.startswith("WARNING: CloudWatch metrics:")]
    assert len(warnings) == 1 and "grant cloudwatch:GetMetricData" in warnings[0], console.getvalue()


def test_a_job_that_knows_its_price_logs_the_running_cost_itself_and_the_follower_only_the_exact_one(
        tracking_uri, aws, tmp_path):
    from ade_mlflow_plugin.job import contract

    job, t0 = new_job()
    told = {"HyperParameters": {contract.HP_USD_PER_HOUR: '"1.212"', contract.HP_MAX_COST_USD: '"0.05"'}}
    answers = [describe(job, "InProgress", "Training", t0, start_after_s=0, **told),
               describe(job, "InProgress", "Training", t0, start_after_s=0, **told),
               ended(job, "Completed", t0, training_s=3600, billable_s=1200, start_after_s=0, **told)]
    clients, stubs = stubbed_clients(job, answers, pricing=g5_answer("1.2120000000"))
    recorder = AlertRecorder()
    pm = get_plugin_manager(builtin_sync=False)
    register_plugin(pm, recorder, "recorder")
    run_id, _, _ = follow(config(max_cost_usd=0.05, on_budget="alert"), clients, job, FakeClock(t0), tmp_path, pm)
    for stub in stubs:
        stub.assert_no_pending_responses()
    # One curve, not two interleaved: the job's launcher logs the running cost, the follower the exact end.
    assert history(run_id, "cost_usd") == [(3600, pytest.approx(0.808))]
    assert [c["action"] for c in recorder.calls] == ["warn", "warn", "warn"]  # the hook still fires
