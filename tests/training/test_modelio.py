"""merge_adapter=true logs a merged model equal to base + adapter; the `evaluate` entry scores a logged model."""
from __future__ import annotations

import pytest
import torch

from ade_mlflow_plugin.training import entry, modelio
from ade_mlflow_plugin.config.training import TrainingConfig


@pytest.fixture
def trained_peft(tiny_model):
    from ade_mlflow_plugin.training.model import load_for_training

    torch.manual_seed(0)
    model, tokenizer, _ = load_for_training(TrainingConfig.from_params({"base_model": str(tiny_model), "lora_r": "4"}))
    with torch.no_grad():  # a fresh adapter is a no-op (B = 0): give it weights as training would
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    return model.eval(), tokenizer


def test_merged_model_logged_equals_base_plus_adapter(trained_peft, tiny_model, sqlite_tracking):
    import mlflow

    model, tokenizer = trained_peft
    merged = modelio.merged(model, str(tiny_model))
    assert not hasattr(merged, "peft_config")
    with mlflow.start_run():
        info = modelio.log_publishable(modelio.Publishable(merged, None), tokenizer, base_dir=None, quantized=False,
                                       max_new_tokens=8)
    pins = open(mlflow.pyfunc.get_model_dependencies(info.model_uri)).read()
    assert "peft==" in pins and "torch==" in pins and "torchvision" not in pins and "+cpu" not in pins

    loaded = mlflow.transformers.load_model(info.model_uri, return_type="components")["model"]
    ids = torch.tensor([tokenizer("def add(a, b):\n")["input_ids"]])
    with torch.no_grad():
        expected, got = model(input_ids=ids).logits, loaded(input_ids=ids).logits
        plain = type(loaded).from_pretrained(str(tiny_model))(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter did change the model
    out = mlflow.pyfunc.load_model(info.model_uri).predict(["def add(a, b):"], params={"max_new_tokens": 4})
    assert isinstance(out[0], str)


def test_adapter_without_local_base_is_a_clear_error(trained_peft):
    from ade_mlflow_plugin.errors import ConfigError

    model, tokenizer = trained_peft
    with pytest.raises(ConfigError, match="merge_adapter=true"):
        modelio.publishable(model, None, merge_adapter=False)


@pytest.mark.slow
def test_evaluate_entry_scores_a_logged_adapter(trained_peft, tiny_model, prepared_dataset, sqlite_tracking,
                                                monkeypatch, capsys):
    import mlflow

    model, tokenizer = trained_peft
    with mlflow.start_run() as run:
        chosen = modelio.publishable(model, tiny_model, merge_adapter=False)
        info = modelio.log_publishable(chosen, tokenizer, base_dir=tiny_model, quantized=False, max_new_tokens=8)
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    code = entry.evaluate(["--model_uri", info.model_uri, "--dataset", str(prepared_dataset),
                           "--max_new_tokens", "4.0", "--num_samples", "2", "--max_seq_len", "256"])
    assert code == 0, capsys.readouterr().err
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    assert {"eval_loss", "perplexity", "exact_match"} <= set(metrics)
    assert metrics["perplexity"] == pytest.approx(torch.tensor(metrics["eval_loss"]).exp().item(), rel=1e-4)
    assert code == 0 and entry.evaluate(["--model_uri", "runs:/nope/model", "--dataset", str(prepared_dataset)]) == 2
