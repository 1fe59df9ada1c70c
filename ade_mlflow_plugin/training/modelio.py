"""The trained adapter (or merged model) -> files, an MLflow logged model and a registered version."""
from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.errors import AdeError, ConfigError

logger = logging.getLogger(__name__)
MODEL_NAME = "model"  # name of the logged model inside the run
RUNTIME_PACKAGES = ("mlflow", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors")


def pip_requirements(quantized: bool) -> list[str]:
    """Pinned requirements of what is installed here (MLflow's inference adds torchvision, not needed)."""
    names = list(RUNTIME_PACKAGES) + (["bitsandbytes"] if quantized else [])
    pins = []
    for name in names:
        try:
            version = metadata.version(name).split("+")[0]  # "2.13.0+cpu" is no pip pin
        except metadata.PackageNotFoundError:
            continue
        pins.append(f"{name}=={version}")
    return pins


def signature(max_new_tokens: int) -> Any:
    """Text in, text out, with generation params declared (undeclared params are dropped by predict)."""
    from mlflow.models import infer_signature

    return infer_signature(["def add(a, b):"], ["    return a + b"],
                           params={"max_new_tokens": max(1, max_new_tokens), "temperature": 1.0,
                                   "do_sample": False})


def merged_model(adapter_dir: Path, base_model: str) -> Any:
    """Base weights at full precision + the adapter folded in (works for quantized training too)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def save_files(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def log_model(model: Any, tokenizer: Any, *, base_dir: Path | None, merge: bool, quantized: bool,
              max_new_tokens: int) -> Any:
    """mlflow.transformers.log_model of the adapter (base referenced by base_model_path) or a merged model."""
    import mlflow

    # return_full_text=False: predict answers with the completion only, not the prompt echoed back.
    common = {"task": "text-generation", "name": MODEL_NAME, "signature": signature(max_new_tokens),
              "pip_requirements": pip_requirements(quantized and not merge),
              "model_config": {"return_full_text": False, "max_new_tokens": max(1, max_new_tokens)}}
    if merge:
        return mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, **common)
    if base_dir is None:
        raise ConfigError("the base model is not in a local folder (nor in the hub cache), so the adapter cannot "
                          "be logged with base_model_path: pass base_model as a folder, or merge_adapter=true")
    return mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer},
                                         base_model_path=str(base_dir), **common)


def git_commit(run_tags: dict[str, str]) -> str:
    """The project's commit: MLflow's source tag when the backend set it, else git in the project dir."""
    commit = run_tags.get("mlflow.source.git.commit")
    if commit:
        return commit
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def register(model_uri: str, name: str, tags: dict[str, Any]) -> Any:
    """A new version of `name` with the given tags."""
    import mlflow

    try:
        return mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    except mlflow.exceptions.MlflowException as exc:
        raise AdeError(f"registering '{name}' failed: {exc.message.splitlines()[0][:300]}") from exc


def version_tags(*, base_model: str, digest: str | None, commit: str, metrics: dict[str, float]) -> dict[str, Any]:
    tags: dict[str, Any] = {"ade.base_model": base_model, "ade.dataset_digest": digest or "unknown",
                            "ade.git_commit": commit,
                            "sagemaker.job_name": os.environ.get("TRAINING_JOB_NAME", "local")}
    tags.update({key: f"{value:.6g}" for key, value in metrics.items()})
    return tags


def merged(model: Any, base_model: str) -> Any:
    """The trained adapter folded into full-precision base weights (via its saved files)."""
    with tempfile.TemporaryDirectory(prefix="ade-adapter-") as folder:
        model.save_pretrained(folder)
        return merged_model(Path(folder), base_model)  # weights are in memory before the folder goes
