"""The shape of the base model a submission trains (for the memory estimate), found without torch or the hub.

In order: the config.json of a local model folder (a from_pretrained folder, or an MLflow model folder: its
weights' config, or its recorded base for an adapter); of a ``models:/`` version (two small files fetched
from the registry: MLmodel, then the weights' config.json); of a hub name already in this machine's
Hugging Face cache; else the table below of code models users pick. Anything else is unknown: the caller
skips the estimate and says why.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from ade_mlflow_plugin.errors import first_line
from ade_mlflow_plugin.memory_estimate import ModelShape

CONFIG = "config.json"
#: mlflow.environment_variables read per request: one attempt, a short timeout.
QUICK_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
MLMODEL = "MLmodel"
# Keys of MLmodel's transformers flavor (mlflow.transformers.flavor_config.FlavorKey's values; the job's
# training/base_model.py reads the same ones).
MODEL_BINARY, PEFT, LOCAL_BASE, SOURCE_NAME = ("model_binary", "peft_adaptor", "local_base_model_path",
                                               "source_model_name")


def _shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
           tied: bool = False) -> ModelShape:
    return ModelShape(hidden, intermediate, layers, heads, kv_heads, vocab, tied)


_DEEPSEEK_1_3B = _shape(2048, 5504, 24, 16, 16, 32256)
_DEEPSEEK_6_7B = _shape(4096, 11008, 32, 32, 32, 32256)
_DEEPSEEK_33B = _shape(7168, 19200, 62, 56, 8, 32256)
_QWEN_CODER_1_5B = _shape(1536, 8960, 28, 12, 2, 151936, tied=True)
_QWEN_CODER_7B = _shape(3584, 18944, 28, 28, 4, 152064)
_QWEN_CODER_14B = _shape(5120, 13824, 48, 40, 8, 152064)
_QWEN_CODER_32B = _shape(5120, 27648, 64, 40, 8, 152064)

#: Hub name (lower case) -> shape, from the models' published config.json (hidden_size, intermediate_size,
#: num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size, tie_word_embeddings). The
#: original repos are gated behind the hub; each row was read from a public copy of its config.json whose
#: _name_or_path names the original (checked 2026-12-06):
KNOWN_MODELS: dict[str, ModelShape] = {
    # huggingface.co/l3lab/ntp-mathlib-st-deepseek-coder-1.3b/blob/main/config.json (deepseek-coder-1.3b-base),
    # huggingface.co/ed001/datascience-coder-1.3b/blob/main/config.json (deepseek-coder-1.3b-instruct)
    "deepseek-ai/deepseek-coder-1.3b-base": _DEEPSEEK_1_3B,
    "deepseek-ai/deepseek-coder-1.3b-instruct": _DEEPSEEK_1_3B,
    # huggingface.co/AIGym/deepseek-coder-6.7b-chat/blob/main/config.json (6.7b-base),
    # huggingface.co/cfahlgren1/NaturalSQL-6.7B-v0/blob/c7fca37/config.json (6.7b-instruct)
    "deepseek-ai/deepseek-coder-6.7b-base": _DEEPSEEK_6_7B,
    "deepseek-ai/deepseek-coder-6.7b-instruct": _DEEPSEEK_6_7B,
    # huggingface.co/arise-sustech/llm4decompile-33b/blob/64de7f6/config.json and
    # huggingface.co/LoneStriker/OpenCodeInterpreter-DS-33B-8.0bpw-h8-exl2/blob/main/config.json (33b-base);
    # the instruct model is the base fine-tuned (deepseek-coder's model card): the same layout
    "deepseek-ai/deepseek-coder-33b-base": _DEEPSEEK_33B,
    "deepseek-ai/deepseek-coder-33b-instruct": _DEEPSEEK_33B,
    # huggingface.co/tmickleydoyle/Question-To-Code/blob/main/config.json (qwen2.5-coder-1.5b; tied embeddings,
    # as Qwen's model card says)
    "qwen/qwen2.5-coder-1.5b": _QWEN_CODER_1_5B,
    "qwen/qwen2.5-coder-1.5b-instruct": _QWEN_CODER_1_5B,
    # huggingface.co/VERSIL91/748b9db5-2b25-45c4-83bb-bebf0bf081ce/raw/main/config.json (Qwen2.5-Coder-7B-Instruct)
    "qwen/qwen2.5-coder-7b": _QWEN_CODER_7B,
    "qwen/qwen2.5-coder-7b-instruct": _QWEN_CODER_7B,
    # huggingface.co/unsloth/Qwen2.5-Coder-14B/blob/2918ea2/config.json
    "qwen/qwen2.5-coder-14b": _QWEN_CODER_14B,
    "qwen/qwen2.5-coder-14b-instruct": _QWEN_CODER_14B,
    # huggingface.co/ai-team-20/qwen3-coder-480b-3/commit/6e6b0cb ("config.json from Qwen2.5-Coder-32B-Instruct")
    "qwen/qwen2.5-coder-32b": _QWEN_CODER_32B,
    "qwen/qwen2.5-coder-32b-instruct": _QWEN_CODER_32B,
    # huggingface.co/bravemindai/2024-gui-llama2-7b-openapi/blame/bc7d82f/config.json (CodeLlama-7b-hf)
    "codellama/codellama-7b-hf": _shape(4096, 11008, 32, 32, 32, 32016),
    # huggingface.co/speechlessai/speechless-codellama-dolphin-orca-platypus-13b/blame/main/config.json
    "codellama/codellama-13b-hf": _shape(5120, 13824, 40, 40, 40, 32016),
    # huggingface.co/HiTZ/GoLLIE-34B/blame/refs%2Fpr%2F2/config.json (CodeLlama-34b-hf)
    "codellama/codellama-34b-hf": _shape(8192, 22016, 48, 64, 8, 32000),
}


@dataclass(frozen=True)
class FoundShape:
    """A model's shape and where it came from, or None and why not."""

    shape: ModelShape | None
    source: str  # e.g. "config.json of /models/tiny", "the table of known models", or why it is unknown

    @property
    def known(self) -> bool:
        return self.shape is not None


def from_config_file(path: Path, label: str) -> FoundShape:
    """A shape from a config.json; unknown (with why) when it is not a Llama-style decoder's."""
    try:
        config = json.loads(path.read_text())
        return FoundShape(ModelShape.from_config(config), f"config.json of {label}")
    except (OSError, ValueError) as exc:
        return FoundShape(None, f"cannot read the config.json of {label} ({first_line(exc, 120)})")
    except (KeyError, TypeError):
        kind = config.get("model_type", "?") if isinstance(config, dict) else "?"
        return FoundShape(None, f"the config.json of {label} (model_type {kind}) is not a Llama-style decoder's "
                                "(hidden_size, intermediate_size, num_hidden_layers, ...)")


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, $HF_HOME/hub, $XDG_CACHE_HOME/huggingface/hub,
    ~/.cache/huggingface/hub (huggingface_hub's documented order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "huggingface" / "hub"


def cached_config(name: str, revision: str = "main") -> Path | None:
    """The config.json of a hub model in the local cache (models--ORG--NAME/snapshots/<commit>/), at the
    commit refs/<revision> names, else the newest snapshot that has one; None when not cached."""
    repo = hub_cache_dir() / ("models--" + name.replace("/", "--"))
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    wanted = repo / "snapshots" / commit / CONFIG
    if wanted.is_file():
        return wanted
    found = sorted(repo.glob(f"snapshots/*/{CONFIG}"), key=lambda p: p.stat().st_mtime, reverse=True)
    return found[0] if found else None


def from_hub_name(name: str) -> FoundShape:
    config = cached_config(name)
    if config is not None:
        return from_config_file(config, f"{name} in the Hugging Face cache")
    shape = KNOWN_MODELS.get(name.lower())
    if shape is not None:
        return FoundShape(shape, f"the table of known models ({name})")
    return FoundShape(None, f"'{name}' is neither in this machine's Hugging Face cache nor in the table of known "
                            "models (download it once, or pass a local folder)")


def _flavor(mlmodel: Path) -> dict[str, Any]:
    try:
        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
    except (OSError, yaml.YAMLError):
        return {}
    flavor = flavors.get("transformers")
    return flavor if isinstance(flavor, dict) else {}


def from_mlflow_folder(folder: Path, label: str) -> FoundShape:
    """An MLflow transformers model folder: its weights' config.json, or the base its adapter records."""
    flavor = _flavor(folder / MLMODEL)
    if flavor.get(MODEL_BINARY):
        return from_config_file(folder / flavor[MODEL_BINARY] / CONFIG, label)
    return _recorded_base(flavor, label)


def _recorded_base(flavor: dict[str, Any], label: str) -> FoundShape:
    if flavor.get(LOCAL_BASE) and (Path(flavor[LOCAL_BASE]) / CONFIG).is_file():
        return from_config_file(Path(flavor[LOCAL_BASE]) / CONFIG, f"the base of {label}")
    if flavor.get(SOURCE_NAME):
        return from_hub_name(str(flavor[SOURCE_NAME]))
    return FoundShape(None, f"{label} is not a transformers model with weights or a recorded base")


@contextlib.contextmanager
def _one_try() -> Iterator[None]:
    """MLflow's REST calls without their retry series while the estimate looks: it is best effort (skipped when
    the registry does not answer), and a submission must not wait minutes for it; the channel download after
    the run exists keeps MLflow's retries."""
    saved = {name: os.environ.get(name) for name in QUICK_MLFLOW}
    os.environ.update(QUICK_MLFLOW)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def from_registry(uri: str) -> FoundShape:
    """A models:/ or runs:/ model: MLmodel, then its weights' config.json (two small downloads)."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with tempfile.TemporaryDirectory(prefix="ade-fit-") as scratch, _one_try():
        try:
            repo = get_artifact_repository(uri)
            flavor = _flavor(Path(repo.download_artifacts(MLMODEL, scratch)))
            if flavor.get(MODEL_BINARY):
                config = repo.download_artifacts(f"{flavor[MODEL_BINARY]}/{CONFIG}", scratch)
                return from_config_file(Path(config), uri)
        except (MlflowException, OSError) as exc:
            why = first_line(exc, 160)  # without credentials, dropped before the cut: no half password either
            return FoundShape(None, f"cannot read {uri}'s config.json ({why})")
        return _recorded_base(flavor, uri)


def find_shape(base_model: str) -> FoundShape:
    """See the module docstring for the order of sources."""
    if base_model.startswith(("models:/", "runs:/")):
        return from_registry(base_model)
    folder = Path(base_model).expanduser()
    if folder.is_dir():
        if (folder / MLMODEL).is_file():
            return from_mlflow_folder(folder, str(folder))
        return from_config_file(folder / CONFIG, str(folder))
    return from_hub_name(base_model)
