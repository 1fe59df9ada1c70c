"""A registered model's download as base_model: resolved to folders from_pretrained reads (training/base_model.py).

The folders are what `mlflow.artifacts.download_artifacts("models:/NAME/N")` gives the job as its input
channel: an MLflow model saved by the job's own code (modelio.save_publishable_model), merged or adapter-only,
with the registered_model_meta file MLflow adds to every models:/ download (checked for real by the slow
end-to-end test in tests/e2e/test_train_on_registered.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.training import base_model, modelio


@pytest.fixture(scope="module")
def trained(tiny_model):
    """A tiny LoRA model whose adapter is not the identity (B is random), and its tokenizer."""
    from ade_mlflow_plugin.training.model import load_for_training

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    torch.manual_seed(0)
    model, tokenizer, _ = load_for_training(TrainingConfig(base_model=str(tiny_model)))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model.eval(), tokenizer


def _download(trained, tiny_model: Path, folder: Path, *, merge: bool, version: int) -> Path:
    model, tokenizer = trained
    chosen = modelio.publishable(model, tiny_model, merge_adapter=merge, base_model=str(tiny_model))
    assert (chosen.reference is None) == merge
    modelio.save_publishable_model(chosen, tokenizer, folder, base_dir=tiny_model, quantized=False, max_new_tokens=4)
    (folder / base_model.REGISTERED_MODEL_META).write_text(
        yaml.safe_dump({"model_name": "ade-coder", "model_version": version}))
    return folder


@pytest.fixture(scope="module")
def adapter_download(trained, tiny_model, tmp_path_factory):
    return _download(trained, tiny_model, tmp_path_factory.mktemp("dl") / "adapter", merge=False, version=1)


@pytest.fixture(scope="module")
def merged_download(trained, tiny_model, tmp_path_factory):
    return _download(trained, tiny_model, tmp_path_factory.mktemp("dl") / "merged", merge=True, version=2)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_plain_bases_resolve_to_themselves(tiny_model):
    assert base_model.resolve("deepseek-ai/deepseek-coder-1.3b-instruct").model == \
        "deepseek-ai/deepseek-coder-1.3b-instruct"
    resolved = base_model.resolve(str(tiny_model))
    assert (resolved.model, resolved.tokenizer, resolved.parent, resolved.temporary) == \
        (str(tiny_model), str(tiny_model), None, False)
    assert base_model.parent_tags(str(tiny_model)) == {}


def test_merged_download_resolves_to_its_weights_and_tokenizer(trained, merged_download):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = base_model.resolve(str(merged_download))
    assert Path(resolved.model) == merged_download / "model" and not resolved.temporary
    assert resolved.parent == base_model.Parent("ade-coder", "2")
    tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer)
    assert tokenizer("def f():")["input_ids"] == trained[1]("def f():")["input_ids"]
    ids = torch.tensor([tokenizer("def add(a, b):")["input_ids"]])
    loaded = AutoModelForCausalLM.from_pretrained(resolved.model, dtype=torch.float32)
    torch.testing.assert_close(_logits(loaded, ids), _logits(trained[0], ids), rtol=1e-4, atol=1e-4)


def test_adapter_download_is_applied_to_its_recorded_base(trained, adapter_download):
    """The base + old adapter, merged: the same function as the trained adapter model."""
    from ade_mlflow_plugin.training.model import load_base_model, load_tokenizer

    resolved = base_model.resolve(str(adapter_download))
    assert resolved.temporary and resolved.parent.uri == "models:/ade-coder/1"
    config = TrainingConfig(base_model=str(adapter_download))
    loaded = load_base_model(config, "cpu", torch.float32)  # the training path's own loader
    tokenizer = load_tokenizer(str(adapter_download))
    ids = torch.tensor([tokenizer("def add(a, b):")["input_ids"]])
    torch.testing.assert_close(_logits(loaded, ids), _logits(trained[0], ids), rtol=1e-4, atol=1e-4)
    assert base_model.parent_tags(str(adapter_download)) == {"ade.parent_model": "ade-coder",
                                                              "ade.parent_version": "1"}


def test_new_version_names_its_parent(adapter_download, tiny_model):
    tags = modelio.version_tags(base_model=str(adapter_download), digest="d", commit="c", metrics={})
    assert tags["ade.base_model"] == "models:/ade-coder/1"
    assert (tags["ade.parent_model"], tags["ade.parent_version"]) == ("ade-coder", "1")
    plain = modelio.version_tags(base_model=str(tiny_model), digest="d", commit="c", metrics={})
    assert plain["ade.base_model"] == str(tiny_model) and "ade.parent_version" not in plain


def test_an_adapter_on_a_merged_parent_is_published_merged(adapter_download, trained):
    """The parent adapter was merged into a temporary folder: the new model cannot reference it."""
    from ade_mlflow_plugin.training.model import add_lora, load_base_model

    config = TrainingConfig(base_model=str(adapter_download))
    model = add_lora(load_base_model(config, "cpu", torch.float32), config, "cpu")
    chosen = modelio.publishable(model, None, merge_adapter=False, base_model=str(adapter_download))
    assert chosen.reference is None and not hasattr(chosen.model, "peft_config")


def test_an_adapter_whose_base_folder_is_gone_fails_in_one_line(adapter_download, tmp_path):
    import shutil

    moved = tmp_path / "copy"
    shutil.copytree(adapter_download, moved)
    mlmodel = yaml.safe_load((moved / "MLmodel").read_text())
    mlmodel["flavors"]["transformers"]["local_base_model_path"] = str(tmp_path / "gone")
    (moved / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(ConfigError, match="base folder .*gone.* is not on this machine") as err:
        base_model.resolve(str(moved))
    assert "\n" not in str(err.value)


def test_a_model_of_another_flavor_is_refused(tmp_path):
    (tmp_path / "MLmodel").write_text(yaml.safe_dump({"flavors": {"sklearn": {}}}))
    with pytest.raises(ConfigError, match="not transformers"):
        base_model.resolve(str(tmp_path))


def test_mlflow_still_names_the_registered_version_file_as_base_model_reads_it():
    """MLflow's models:/ download writes the version's name and version into this file (the parent's source)."""
    from mlflow.store.artifact import models_artifact_repo

    assert getattr(models_artifact_repo, "REGISTERED_MODEL_META_FILE_NAME", None) == base_model.REGISTERED_MODEL_META, \
        "mlflow changed the file its models:/ downloads record name and version in: update training/base_model.py"


def test_mlflow_still_writes_the_flavor_keys_base_model_reads():
    from mlflow.transformers.flavor_config import FlavorKey

    ours = (base_model.MODEL_BINARY, base_model.PEFT, base_model.LOCAL_BASE, base_model.SOURCE_NAME,
            base_model.SOURCE_REVISION)
    theirs = (FlavorKey.MODEL_BINARY, FlavorKey.PEFT, FlavorKey.MODEL_LOCAL_BASE, FlavorKey.MODEL_NAME,
              FlavorKey.MODEL_REVISION)
    assert ours == theirs, "mlflow.transformers changed its MLmodel flavor keys: update training/base_model.py"
