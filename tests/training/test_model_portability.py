"""A logged adapter must load away from the job that trained it: hub bases are referenced by repo and the
commit trained on (no hub call at log time), bases from the job's inputs are merged in, a folder the user
named on this machine stays a base_model_path reference."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ade_mlflow_plugin.training import modelio
from ade_mlflow_plugin.training.modelio import base_reference, scratch_roots
from tests.conftest import REPO_ROOT

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "acme/tiny-coder"


# ----------------------------------------------------------------- the decision (pure)
def test_hub_id_is_referenced_at_the_cached_snapshot_commit(tmp_path):
    snapshot = tmp_path / "models--acme--tiny-coder" / "snapshots" / COMMIT
    ref = base_reference(REPO, snapshot, is_folder=False, scratch_roots=[Path("/opt/ml")])
    assert (ref.kind, ref.revision) == ("hub", COMMIT)


def test_hub_id_not_in_the_cache_leaves_the_revision_to_mlflow():
    assert base_reference(REPO, None, is_folder=False, scratch_roots=[]).revision is None
    odd = base_reference(REPO, Path("/somewhere/else"), is_folder=False, scratch_roots=[])
    assert (odd.kind, odd.revision) == ("hub", None)  # not a snapshot folder: no commit to pin


def test_folder_reached_through_a_channel_link_is_merged():
    # Local mode links a channel to its source: the path as given is under the job root, the resolved one not.
    given = "/jobs/j1/input/data/base_model"
    ref = base_reference(given, Path("/tmp/ade-base_model-x"), is_folder=True, scratch_roots=[Path("/jobs/j1")])
    assert ref.kind == "merge" and "/jobs/j1" in ref.reason and "gone after the training job" in ref.reason


def test_folder_resolving_into_a_channel_is_merged():
    ref = base_reference("/home/me/link", Path("/opt/ml/input/data/base"), is_folder=True,
                         scratch_roots=[Path("/opt/ml/input/data/base")])
    assert ref.kind == "merge"


def test_folder_the_user_named_is_referenced_by_path():
    ref = base_reference("/models/base", Path("/models/base"), is_folder=True,
                         scratch_roots=[Path("/opt/ml"), Path("/jobs/j1")])
    assert (ref.kind, ref.revision) == ("path", None)
    assert base_reference("/opt/mlx/base", Path("/opt/mlx/base"), is_folder=True,
                          scratch_roots=[Path("/opt/ml")]).kind == "path"  # a sibling name is no child


def test_every_folder_in_a_sagemaker_container_is_merged():
    roots = scratch_roots({"TRAINING_JOB_NAME": "job-1"})
    assert roots == [Path("/")]
    assert base_reference("/models/base", Path("/models/base"), is_folder=True, scratch_roots=roots).kind == "merge"


def test_scratch_roots_in_local_mode_are_the_job_root_and_channels(tmp_path):
    job, data = tmp_path / "job", tmp_path / "data"
    data.mkdir()
    job.mkdir()
    (job / "link").symlink_to(data, target_is_directory=True)
    roots = scratch_roots({"TRAINING_JOB_NAME": "job-1", "SAGEMAKER_BASE_DIR": str(job),
                           "SM_CHANNEL_BASE_MODEL": str(job / "link")})
    assert {job, job / "link", data, Path("/opt/ml")} <= set(roots)
    assert Path("/") not in roots
    assert scratch_roots({}) == [Path("/opt/ml")]


# ----------------------------------------------------------------- real logging
@pytest.fixture
def adapter_on(tiny_model):
    """(peft model, tokenizer) on a given base folder, with adapter weights that change the output."""
    import torch

    from ade_mlflow_plugin.config.training import TrainingConfig
    from ade_mlflow_plugin.training.model import load_for_training

    def build(base: Path):
        torch.manual_seed(0)
        config = TrainingConfig.from_params({"base_model": str(base), "lora_r": "4"})
        model, tokenizer, _ = load_for_training(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.05)
        return model.eval(), tokenizer

    return build


def _log(model, tokenizer, base_dir: Path):  # noqa: ANN001, ANN202 - what the pipeline logs
    chosen = modelio.publishable(model, base_dir, merge_adapter=False)
    return modelio.log_publishable(chosen, tokenizer, base_dir=base_dir, quantized=False, max_new_tokens=4)


def _logits(model, tokenizer):
    import torch

    ids = torch.tensor([tokenizer("def add(a, b):\n")["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.slow
def test_base_from_a_job_channel_is_merged_and_loads_after_the_job(adapter_on, tiny_model, tmp_path, sqlite_tracking,
                                                                   monkeypatch, caplog):
    import mlflow
    import torch

    job = tmp_path / "job"
    channel = job / "input" / "data" / "base_model"
    channel.parent.mkdir(parents=True)
    source = tmp_path / "downloaded-base"  # where local mode downloaded models:/NAME@ALIAS to
    shutil.copytree(tiny_model, source)
    channel.symlink_to(source, target_is_directory=True)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(job))
    monkeypatch.setenv("TRAINING_JOB_NAME", "job-1")
    model, tokenizer = adapter_on(channel)
    expected = _logits(model, tokenizer)
    with caplog.at_level(logging.INFO, logger=modelio.__name__), mlflow.start_run():
        info = _log(model, tokenizer, source.resolve())
    lines = [r.getMessage() for r in caplog.records if r.name == modelio.__name__ and "merging" in r.getMessage()]
    assert len(lines) == 1 and str(job) in lines[0]
    flavor = info.flavors["transformers"]
    assert "peft_adaptor" not in flavor and "local_base_model_path" not in flavor and "model_binary" in flavor

    shutil.rmtree(job)  # the job is over: its channel and the download behind it are gone
    shutil.rmtree(source)
    loaded = mlflow.transformers.load_model(info.model_uri, return_type="components")["model"]
    torch.testing.assert_close(_logits(loaded, tokenizer), expected, atol=1e-4, rtol=1e-4)


def test_folder_the_user_named_stays_a_path_reference(adapter_on, tiny_model, sqlite_tracking, monkeypatch):
    import mlflow

    monkeypatch.delenv("TRAINING_JOB_NAME", raising=False)
    monkeypatch.delenv("SAGEMAKER_BASE_DIR", raising=False)
    model, tokenizer = adapter_on(tiny_model)
    with mlflow.start_run():
        info = _log(model, tokenizer, tiny_model.resolve())
    flavor = info.flavors["transformers"]
    assert flavor["local_base_model_path"] == str(tiny_model.resolve()) and flavor["peft_adaptor"] == "peft"


# ----------------------------------------------------------------- hub id, offline, real files
# huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, at import: each side runs in its own process.
LOG_SIDE = """
import json, sys, torch, mlflow
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from ade_mlflow_plugin.training import modelio
from ade_mlflow_plugin.training.model import local_model_dir
repo, out = sys.argv[1], sys.argv[2]
base, tokenizer = AutoModelForCausalLM.from_pretrained(repo), AutoTokenizer.from_pretrained(repo)
torch.manual_seed(0)
model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")).eval()
with torch.no_grad():
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.normal_(std=0.05)
ids = torch.tensor([tokenizer("def add(a, b):\\n")["input_ids"]])
with torch.no_grad():
    torch.save({"ids": ids, "logits": model(input_ids=ids).logits}, out + ".pt")
with mlflow.start_run():
    chosen = modelio.publishable(model, local_model_dir(repo), merge_adapter=False)
    info = modelio.log_publishable(chosen, tokenizer, base_dir=local_model_dir(repo), quantized=False,
                                   max_new_tokens=4)
json.dump({"uri": info.model_uri, "flavor": info.flavors["transformers"]}, open(out + ".json", "w"))
"""
LOAD_SIDE = """
import json, sys, torch, mlflow
out = sys.argv[1]
uri, saved = json.load(open(out + ".json"))["uri"], torch.load(out + ".pt")
model = mlflow.transformers.load_model(uri, return_type="components")["model"]
with torch.no_grad():
    torch.testing.assert_close(model(input_ids=saved["ids"]).logits, saved["logits"], atol=1e-4, rtol=1e-4)
answer = mlflow.pyfunc.load_model(uri).predict(["def add(a, b):"], params={"max_new_tokens": 4})
json.dump({"answer": answer}, open(out + ".answer.json", "w"))
"""


def _hub_cache(root: Path, tiny_model: Path) -> Path:
    """A hub cache holding REPO at COMMIT, laid out as huggingface_hub writes it."""
    repo_dir = root / ("models--" + REPO.replace("/", "--"))
    shutil.copytree(tiny_model, repo_dir / "snapshots" / COMMIT)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return root


def _python(code: str, args: list[str], cache: Path) -> None:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(REPO_ROOT)}
    for key in ("TRAINING_JOB_NAME", "SAGEMAKER_BASE_DIR", "HF_HOME"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_hub_base_is_logged_offline_and_loads_from_another_cache(tiny_model, tmp_path, sqlite_tracking):
    trained_on = _hub_cache(tmp_path / "job-hub-cache", tiny_model)
    out = str(tmp_path / "logged")
    _python(LOG_SIDE, [REPO, out], trained_on)  # HF_HUB_OFFLINE=1: any hub call fails the log
    logged = json.loads(Path(out + ".json").read_text())
    flavor = logged["flavor"]
    assert (flavor["source_model_name"], flavor["source_model_revision"]) == (REPO, COMMIT)
    assert (flavor["tokenizer_name"], flavor["tokenizer_revision"]) == (REPO, COMMIT)
    assert "local_base_model_path" not in flavor and "model_binary" not in flavor  # adapter only, no path

    # Elsewhere: the job's cache is gone; this machine has the same repo in a cache of its own.
    elsewhere = tmp_path / "user-hub-cache"
    shutil.move(trained_on, elsewhere)
    _python(LOAD_SIDE, [out], elsewhere)
    answer = json.loads(Path(out + ".answer.json").read_text())["answer"]
    assert isinstance(answer[0], str) and answer[0]
