"""SageMaker's MetricDefinitions: the service model accepts them, and each regex reads the lines that a real
local-mode training job prints, with the values MLflow got (the SageMaker console then draws the same curves)."""
from __future__ import annotations

import re

import botocore.session
import mlflow
import pytest
from botocore.validate import ParamValidator

from ade_mlflow_plugin.backend import spec
from tests.conftest import REPO_ROOT
from tests.training.conftest import prepared_dataset, tiny_model, tiny_tokenizer  # noqa: F401 - fixtures


def test_the_definitions_pass_the_service_model_and_name_designs_metrics():
    shape = botocore.session.get_session().get_service_model("sagemaker").operation_model(
        "CreateTrainingJob").input_shape.members["AlgorithmSpecification"].members["MetricDefinitions"]
    report = ParamValidator().validate(spec.metric_definitions(), shape)
    assert not report.has_errors(), report.generate_report()
    assert [d["Name"] for d in spec.metric_definitions()] == [
        "train_loss", "eval_loss", "learning_rate", "tokens_per_second", "cost_usd"]


@pytest.mark.parametrize("line,name,value", [
    ("ade-metrics step=10 train_loss=5.54321 learning_rate=1e-05 grad_norm=0.5", "learning_rate", "1e-05"),
    ("ade-metrics step=10 train_loss=5.54321 learning_rate=1e-05", "train_loss", "5.54321"),
    ("run abc: global step 10 eval_loss=5.1 perplexity=164.0 exact_match=0", "eval_loss", "5.1"),
    ("ade-metrics step=2811 cost_usd=1.099440", "cost_usd", "1.099440"),
])
def test_each_regex_takes_its_own_value_and_not_a_neighbours(line, name, value):
    regexes = {d["Name"]: d["Regex"] for d in spec.metric_definitions()}
    assert re.search(regexes[name], line).group(1) == value
    assert re.search(regexes["train_loss"], "ade-metrics step=3 eval_loss=2.0") is None


@pytest.mark.slow
def test_every_regex_reads_what_a_real_local_mode_job_prints(sqlite_tracking, tmp_path, tiny_model,
                                                            prepared_dataset):
    import mlflow.projects

    params = {"dataset": str(prepared_dataset), "base_model": str(tiny_model), "max_steps": "10",
              "batch_size": "2", "grad_accumulation": "1", "max_seq_len": "256", "learning_rate": "0.01"}
    # A price (via a budget far off) makes the launcher print cost_usd as SageMaker would see it.
    submitted = mlflow.projects.run(str(REPO_ROOT), entry_point="train", parameters=params,
                                    backend="ade-sagemaker", synchronous=True, backend_config={
                                        "mode": "local", "job_root": str(tmp_path / "jobs"),
                                        "instance_type": "ml.g5.xlarge", "max_cost_usd": 100})
    assert submitted.get_status() == "FINISHED"
    log = next((tmp_path / "jobs" / "jobs").glob("*/job.log")).read_text()
    client = mlflow.MlflowClient()
    for definition in spec.metric_definitions():
        found = [float(v) for v in re.findall(definition["Regex"], log)]
        assert found, f"no line of the job's log matches {definition['Name']}: {definition['Regex']}"
        logged = [m.value for m in client.get_metric_history(submitted.run_id, definition["Name"])]
        if definition["Name"] == "cost_usd":
            assert found == sorted(found) and found[-1] <= 100  # running cost, never going back
        else:
            assert found[-1] == pytest.approx(logged[-1], rel=1e-5), definition["Name"]
