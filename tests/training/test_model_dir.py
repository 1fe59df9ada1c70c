"""SM_MODEL_DIR (the job's model.tar.gz) holds what is logged to MLflow: the merged model when the base lived
in the job's inputs (so the tarball loads on its own), the adapter with its hub reference otherwise."""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from tests.training.conftest import FAST_ARGS, Entry, entry_env, new_run
from tests.training.test_model_portability import COMMIT, REPO, _hub_cache


def _train(base: str, dataset: Path, tracking: str, root: Path, extra_env: dict[str, str]) -> tuple[Path, str, str]:
    """The `train` entry on `base` for 3 steps; returns (SM_MODEL_DIR, registered model URI, its output)."""
    name = f"ade-dir-{uuid.uuid4().hex[:8]}"
    env = {**entry_env(tracking, new_run(tracking, "model-dir"), root / "ckpt", root / "sm-model"), **extra_env}
    entry = Entry("train.py", ["--dataset", str(dataset), "--base_model", base, "--max_steps", "3",
                               "--save_steps", "3", "--registered_model_name", name, "--quantization", "none",
                               "--merge_adapter", "false", *FAST_ARGS], env)
    assert entry.wait(timeout=300) == 0, entry.output[-3000:]
    return root / "sm-model", f"models:/{name}/1", entry.output


def _logits(model, tokenizer):
    import torch

    ids = torch.tensor([tokenizer("def add(a, b):\n")["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.slow
def test_base_from_job_inputs_ships_the_merged_model(tiny_model, prepared_dataset, sqlite_tracking, tmp_path):
    import mlflow
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = tmp_path / "job"
    channel = job / "input" / "data" / "base_model"
    channel.parent.mkdir(parents=True)
    shutil.copytree(tiny_model, channel)
    model_dir, uri, output = _train(str(channel), prepared_dataset, sqlite_tracking, tmp_path,
                            {"SAGEMAKER_BASE_DIR": str(job), "TRAINING_JOB_NAME": "job-1"})
    shutil.rmtree(job)  # the job is over: its input channel (the base) is gone
    assert output.count("merging the adapter into the base model") == 1  # merged once, for both uses

    assert not (model_dir / "adapter_config.json").exists(), sorted(p.name for p in model_dir.iterdir())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    shipped = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    logged = mlflow.transformers.load_model(uri, return_type="components")["model"].eval()
    torch.testing.assert_close(_logits(shipped, tokenizer), _logits(logged, tokenizer), atol=1e-4, rtol=1e-4)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    assert not torch.allclose(_logits(plain, tokenizer), _logits(shipped, tokenizer), atol=1e-4)  # trained


@pytest.mark.slow
def test_hub_base_ships_the_adapter_pinned_to_the_trained_commit(tiny_model, prepared_dataset, sqlite_tracking,
                                                                tmp_path):
    cache = _hub_cache(tmp_path / "hub-cache", tiny_model)
    offline = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    model_dir, _, output = _train(REPO, prepared_dataset, sqlite_tracking, tmp_path, offline)

    assert (model_dir / "adapter_model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    assert not (model_dir / "model.safetensors").exists() and "merging the adapter" not in output
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert (adapter["base_model_name_or_path"], adapter["revision"]) == (REPO, COMMIT)
