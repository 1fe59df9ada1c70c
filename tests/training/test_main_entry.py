"""`python entrypoints/main.py` as the launcher runs it: attaches to MLFLOW_RUN_ID, trains, evaluates,
logs the model and registers a version that loads with mlflow.pyfunc and generates offline."""
from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient

from tests.training.conftest import CODEBASE, FAST_ARGS, Entry, entry_env, new_run

STEPS = 8


@pytest.mark.slow
def test_main_trains_logs_and_registers(tiny_model, tracking_uri, tmp_path):
    import mlflow

    run_id = new_run(tracking_uri, "training-main")
    name = f"ade-tiny-{uuid.uuid4().hex[:8]}"
    model_dir = tmp_path / "sm-model"
    entry = Entry("main.py", ["--codebase", str(CODEBASE), "--base_model", str(tiny_model), "--num_examples", "40",
                              "--synthetic_ratio", "0.3", "--registered_model_name", name, "--max_steps", str(STEPS),
                              "--save_steps", "4", "--eval_fraction", "0.15", "--seed", "42.0",
                              "--merge_adapter", "false", "--quantization", "none", *FAST_ARGS],
                  entry_env(tracking_uri, run_id, tmp_path / "ckpt", model_dir))
    assert entry.wait(timeout=240) == 0, entry.output[-3000:]

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # attached; no second run opened
    params = run.data.params
    assert params["lora_r"] == "16" and params["quantization"] == "none" and params["max_steps"] == str(STEPS)
    assert params["base_model"] == str(tiny_model) and params["packing"] == "True"

    for key in ("train_loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(1, STEPS + 1)), key
    assert any(k.startswith("system/") for k in run.data.metrics)
    eval_loss = {m.step: m.value for m in client.get_metric_history(run_id, "eval_loss")}
    # before training, the periodic eval at each checkpoint (save_steps=4), the published model at the end
    assert set(eval_loss) == {0, 4, STEPS} and eval_loss[STEPS] < eval_loss[0]
    assert {m.step for m in client.get_metric_history(run_id, "perplexity")} == {0, 4, STEPS}
    assert 0.0 <= run.data.metrics["exact_match"] <= 1.0
    assert run.data.tags["ade.dataset_digest"] and run.data.tags["ade.base_model"] == str(tiny_model)
    assert (tmp_path / "ckpt" / f"checkpoint-{STEPS}").is_dir()
    assert (model_dir / "adapter_model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()

    version = client.get_model_version(name, "1")
    assert version.run_id == run_id
    tags = version.tags
    assert tags["ade.base_model"] == str(tiny_model) and tags["ade.dataset_digest"] == run.data.tags["ade.dataset_digest"]
    assert len(tags["ade.git_commit"]) >= 7 and tags["ade.git_commit"] == run.data.tags["ade.git_commit"]
    assert tags["sagemaker.job_name"] == "local"
    assert abs(float(tags["eval_loss"]) - eval_loss[STEPS]) < 1e-4 and "perplexity" in tags and "exact_match" in tags

    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    params_schema = {p.name for p in model.metadata.get_params_schema().params}
    assert {"max_new_tokens", "temperature"} <= params_schema
    out = model.predict(["def add(a, b):"], params={"max_new_tokens": 6})
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str)
    assert out[0] and not out[0].startswith("def add(a, b):")  # the completion, not the prompt echoed
