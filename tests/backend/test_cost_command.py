"""`ade-mlflow cost JOB|RUN_ID` and `--experiment NAME` against moto's SageMaker and a real MLflow server."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import boto3
import mlflow
import pytest

from ade_mlflow_plugin.backend.cost import PriceBook
from ade_mlflow_plugin.cli import main
from tests.backend.test_cost import g5_answer, stubbed_pricing

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def moto_job(name: str, count: int, spot: bool, **state):
    """A training job in moto, with the billing fields SageMaker reports set on moto's job object."""
    from moto.sagemaker import models

    request = {
        "TrainingJobName": name, "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/t:1",
                                   "TrainingInputMode": "File"},
        "OutputDataConfig": {"S3OutputPath": "s3://ade-cost-cli/output"},
        "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": count, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 86400, **({"MaxWaitTimeInSeconds": 172800} if spot else {})},
        "EnableManagedSpotTraining": spot,
    }
    boto3.client("sagemaker", region_name="us-east-1").create_training_job(**request)
    for account in models.sagemaker_backends.values():
        job = account["us-east-1"].training_jobs.get(name)
        if job is not None:
            for key, value in state.items():
                setattr(job, key, value)
            return job
    raise AssertionError(f"moto did not keep {name}")


@pytest.fixture
def priced(tmp_path, monkeypatch):
    """The price cache the follower would have filled: $1.212/h for ml.g5.2xlarge, from the Price List API."""
    monkeypatch.setenv("ADE_MLFLOW_CACHE_DIR", str(tmp_path / "cache"))
    clients, stubber = stubbed_pricing(g5_answer("1.2120000000"))
    assert PriceBook().quote(clients, "ml.g5.2xlarge", "us-east-1").usd_per_hour == 1.212
    stubber.assert_no_pending_responses()


def _run(experiment_id: str, job: str, mode: str = "sagemaker") -> str:
    client = mlflow.MlflowClient()
    run_id = client.create_run(experiment_id).info.run_id
    for key, value in {"sagemaker.job_name": job, "sagemaker.region": "us-east-1", "sagemaker.mode": mode}.items():
        client.set_tag(run_id, key, value)
    return run_id


def _cli(capsys, *args: str) -> list[str]:
    main(["cost", *args])
    return capsys.readouterr().out.splitlines()


def test_cost_of_one_job_by_name_and_by_run_id(aws, tracking_uri, priced, capsys):
    name = f"ade-cli-{uuid.uuid4().hex[:8]}"
    moto_job(name, count=2, spot=True, training_time_in_seconds=3600, billable_time_in_seconds=1200)
    by_name = _cli(capsys, name)
    assert by_name[0].split() == ["JOB", "INSTANCE", "SPOT", "BILLABLE", "COST", "SAVINGS"]
    assert by_name[1].split() == [name, "ml.g5.2xlarge", "x2", "yes", "0:20:00", "$0.808", "66.7%", "($1.616)"]
    assert by_name[-1].split() == ["TOTAL", "1", "job", "0:20:00", "$0.808", "$1.616"]
    run_id = _run(mlflow.create_experiment(f"cost-{uuid.uuid4().hex[:8]}"), name)
    assert _cli(capsys, run_id) == by_name


def test_cost_of_an_experiment_sums_jobs_and_shows_running_and_local_ones(aws, tracking_uri, priced, capsys):
    experiment = f"cost-{uuid.uuid4().hex[:8]}"
    experiment_id = mlflow.create_experiment(experiment)
    spot, on_demand, running = (f"ade-cli-{uuid.uuid4().hex[:8]}" for _ in range(3))
    moto_job(spot, 2, True, training_time_in_seconds=3600, billable_time_in_seconds=1200)
    moto_job(on_demand, 1, False, training_time_in_seconds=1800, billable_time_in_seconds=1800)
    moto_job(running, 1, False, training_job_status="InProgress",
             training_start_time=datetime.now(timezone.utc) - timedelta(hours=1), training_end_time=None)
    for job in (spot, on_demand, running):
        _run(experiment_id, job)
    _run(experiment_id, "ade-local-job", mode="local")
    mlflow.MlflowClient().create_run(experiment_id)  # a run of another backend: not listed
    lines = _cli(capsys, "--experiment", experiment)
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[spot][-3:] == ["$0.808", "66.7%", "($1.616)"]
    assert rows[on_demand][3:] == ["no", "0:30:00", "$0.606", "-"]
    assert rows[running][4] == "-" and rows[running][6:8] == ["(InProgress,", "so"]
    assert 1.21 <= float(rows[running][5].lstrip("$")) <= 1.22  # one hour (and a few seconds) at $1.212/h
    assert rows["ade-local-job"][1:] == ["local", "no", "-", "$0.000", "-"]
    total = rows["TOTAL"]
    assert total[1:3] == ["4", "jobs"] and total[3] == "0:50:00" and total[-1] == "$1.616"
    assert float(total[4].lstrip("$")) == pytest.approx(0.808 + 0.606 + float(rows[running][5].lstrip("$")))
    assert len(lines) == 1 + 4 + 2  # header, four jobs, rule, totals


def test_bad_references_are_one_line_with_exit_2(aws, tracking_uri, priced, capsys):
    for args, message in [(["ade-no-such-job"], "no training job 'ade-no-such-job' in us-east-1"),
                          (["--experiment", "no-such-experiment"], "experiment 'no-such-experiment' not found"),
                          (["0123456789abcdef0123456789abcdef"], "run '0123456789abcdef0123456789abcdef' not found")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["cost", *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exit_info:
        main(["cost"])
    assert exit_info.value.code == 2 and "give a JOB name or RUN_ID" in capsys.readouterr().err


def test_console_script_prints_the_table_and_warns_which_price_source(aws, tmp_path):
    """The real `ade-mlflow` entry in a subprocess; no cache and moto's Price List API: the bundled table."""
    name = f"ade-cli-{uuid.uuid4().hex[:8]}"
    moto_job(name, count=1, spot=False, training_time_in_seconds=3600, billable_time_in_seconds=3600)
    env = {**os.environ, "ADE_MLFLOW_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", "from ade_mlflow_plugin.cli import main; main()", "cost", name],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "WARNING: the AWS Price List API failed (HTTP 500); using the bundled price table of" in done.stderr
    assert done.stdout.splitlines()[1].split()[-2:] == ["$1.515", "-"]
