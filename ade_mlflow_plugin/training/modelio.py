"""The trained adapter (or merged model) -> files, an MLflow logged model and a registered version."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.adapters.mlflow_transformers import pinned_hub_revision
from ade_mlflow_plugin.errors import ConfigError, mlflow_error
from ade_mlflow_plugin.job import contract

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

    from ade_mlflow_plugin.training.base_model import resolve
    from ade_mlflow_plugin.training.model import NO_HUB_KERNELS

    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    base = AutoModelForCausalLM.from_pretrained(resolve(base_model).model, dtype=dtype, **NO_HUB_KERNELS)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def save_files(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@dataclass(frozen=True)
class BaseReference:
    """How a logged adapter finds its base model wherever the model is loaded later.

    kind: "hub" (the hub repo at ``revision``), "path" (a local folder that outlives the run) or
    "merge" (fold the adapter into the base: nothing outside the logged model is needed).
    """

    kind: str
    reason: str
    revision: str | None = None


def _under(path: Path, roots: Sequence[Path]) -> Path | None:
    return next((root for root in roots if path == root or root in path.parents), None)


def _is_commit(name: str) -> bool:
    return len(name) == 40 and all(c in "0123456789abcdef" for c in name)


def base_reference(base_model: str, base_dir: Path | None, *, is_folder: bool,
                   scratch_roots: Sequence[Path]) -> BaseReference:
    """Pure: choose how the logged adapter references its base so the model loads away from the job.

    base_model: the parameter as given (an absolute path when ``is_folder``, symlinks NOT resolved, as a
    channel is a link in local mode); base_dir: the folder it was loaded from (resolved; the hub cache
    snapshot ``.../snapshots/<commit>`` for a hub id); scratch_roots: folders that vanish with the job.

    - a hub id: reference the hub repo, pinned to the snapshot commit trained on (the cache folder's name),
      so it is the same base even if the repo moves on; None when not cached (MLflow asks the hub).
    - a folder under a scratch root (an input channel, the job root, a SageMaker container): merge.
    - any other folder (one the user named on this machine): reference it by path, as MLflow's
      base_model_path does; the model then loads only where that folder exists.
    """
    if not is_folder:
        snapshot = base_dir is not None and base_dir.parent.name == "snapshots" and _is_commit(base_dir.name)
        revision = base_dir.name if snapshot else None
        return BaseReference("hub", f"base '{base_model}' is a hub id: the model references the hub repo at "
                                    f"revision {revision or 'latest (not in the local cache)'}", revision)
    for path in (Path(base_model), base_dir):
        root = _under(path, scratch_roots) if path is not None else None
        if root is not None:
            return BaseReference("merge", f"base folder {path} is under {root}, which is gone after the "
                                          "training job: the adapter is merged into the base so the logged "
                                          "model is self-contained")
    return BaseReference("path", f"base folder {base_dir} is referenced by path: the model loads where that "
                                 "folder exists")


def scratch_roots(env: Mapping[str, str] | None = None) -> list[Path]:
    """Folders that do not outlive the training job: the container contract's root (input channels, code,
    model and output dirs) and every SM_CHANNEL_* dir; inside a SageMaker container (a job with no
    SAGEMAKER_BASE_DIR, which only the local runner and AWS's toolkit set) the whole filesystem."""

    env = os.environ if env is None else env
    if env.get(contract.ENV_JOB_NAME) and not env.get(contract.ENV_BASE_DIR):
        return [Path("/")]
    base = Path(env.get(contract.ENV_BASE_DIR, contract.DEFAULT_BASE))
    folders = [base, Path(contract.DEFAULT_BASE)]
    folders += [Path(value) for key, value in env.items() if key.startswith(contract.ENV_CHANNEL_PREFIX) and value]
    # Both spellings: a channel may be reached through a link (local mode links channels in place).
    return sorted({Path(os.path.abspath(p)) for p in folders} | {p.resolve() for p in folders})


def reference_for(model: Any, base_dir: Path | None, base_model: str | None = None) -> BaseReference:
    """base_reference() for this process: the base as loaded (the adapter's base name_or_path by default)."""
    name = base_model or model.get_base_model().name_or_path
    folder = Path(name).expanduser()
    is_folder = folder.is_dir()
    return base_reference(os.path.abspath(folder) if is_folder else name, base_dir, is_folder=is_folder,
                          scratch_roots=scratch_roots())


def _base_card(base_dir: Path | None) -> Any:
    """The base's model card from the cached snapshot (else MLflow tries to fetch it from the hub)."""
    readme = base_dir / "README.md" if base_dir is not None else None
    if readme is None or not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(readme)
    except Exception:  # noqa: BLE001 - a malformed card is no reason to fail logging the model
        return None


@dataclass(frozen=True)
class Publishable:
    """What is saved to SM_MODEL_DIR and logged: a merged model (reference None) or the adapter + its base."""

    model: Any
    reference: BaseReference | None


def publishable(model: Any, base_dir: Path | None, *, merge_adapter: bool,
                base_model: str | None = None) -> Publishable:
    """The trained adapter -> what to publish, merged at most once: when asked, or when the base is in the
    job's inputs (see base_reference) and so gone after the job."""
    from ade_mlflow_plugin.training.base_model import resolve

    name = base_model or model.get_base_model().name_or_path
    if merge_adapter:
        return Publishable(merged(model, name), None)
    if resolve(name).temporary:  # a registered adapter merged into its base for this job only
        logger.info("merging the adapter into the base model: the base is the registered adapter %s applied "
                    "to its own base in this job, which no logged model can reference", resolve(name).description)
        return Publishable(merged(model, name), None)
    reference = reference_for(model, base_dir, base_model)
    if reference.kind == "path" and base_dir is None:
        raise ConfigError("the base model's folder was not given, so the adapter cannot be logged with "
                          "base_model_path: pass base_dir (model.local_model_dir), or merge_adapter=true")
    if reference.kind == "merge":
        logger.info("merging the adapter into the base model: %s", reference.reason)
        return Publishable(merged(model, name), None)
    return Publishable(model, reference)


def save_publishable(chosen: Publishable, tokenizer: Any, out_dir: Path) -> Path:
    """The files of exactly what is logged; an adapter's config pins the hub commit it was trained on."""
    save_files(chosen.model, tokenizer, out_dir)
    revision = chosen.reference.revision if chosen.reference is not None else None
    config_file = out_dir / "adapter_config.json"
    if revision and config_file.is_file():  # PEFT's AutoPeftModel loads the base at this revision
        config = json.loads(config_file.read_text())
        config_file.write_text(json.dumps({**config, "revision": revision}, indent=2, sort_keys=True))
    return out_dir


def log_publishable(chosen: Publishable, tokenizer: Any, *, base_dir: Path | None, quantized: bool,
                    max_new_tokens: int) -> Any:
    """Log what publishable() chose: the merged model, or the adapter by base folder path or hub repo."""
    import mlflow

    model, reference = chosen.model, chosen.reference
    common = {"name": MODEL_NAME, **_flavor_args(chosen, quantized, max_new_tokens)}
    if reference is None:
        return mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, **common)
    if reference.kind == "path":
        return mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer},
                                             base_model_path=str(base_dir), **common)
    repo = model.get_base_model().name_or_path
    # MLflow would ask the hub for the repo's LATEST commit (fails offline, may be newer than trained on).
    with pinned_hub_revision(repo, reference.revision):
        info = mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer},
                                             model_card=_base_card(base_dir), **common)
    logger.info("logged the adapter; %s", reference.reason)
    return info


def _flavor_args(chosen: Publishable, quantized: bool, max_new_tokens: int) -> dict[str, Any]:
    # return_full_text=False: predict answers with the completion only, not the prompt echoed back.
    return {"task": "text-generation", "signature": signature(max_new_tokens),
            "pip_requirements": pip_requirements(quantized and chosen.reference is not None),
            "model_config": {"return_full_text": False, "max_new_tokens": max(1, max_new_tokens)}}


def save_publishable_model(chosen: Publishable, tokenizer: Any, path: Path, *, base_dir: Path | None,
                           quantized: bool, max_new_tokens: int) -> Path:
    """What log_publishable logs, saved as an MLflow model folder instead (the relay's copy, for a job
    that cannot reach its tracking server; `ade-mlflow sync-run` logs it into the run later)."""
    import mlflow

    model, reference = chosen.model, chosen.reference
    common = {"path": str(path), **_flavor_args(chosen, quantized, max_new_tokens)}
    if reference is None:
        mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer}, **common)
    elif reference.kind == "path":
        mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer}, base_model_path=str(base_dir),
                                       **common)
    else:
        with pinned_hub_revision(model.get_base_model().name_or_path, reference.revision):
            mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer},
                                           model_card=_base_card(base_dir), **common)
    return path


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
        raise mlflow_error(f"registering '{name}'", exc) from exc


def version_tags(*, base_model: str, digest: str | None, commit: str, metrics: dict[str, float]) -> dict[str, Any]:
    """The new version's tags; a base that is a registered version (base_model=models:/...) is named by
    its models:/NAME/N URI and as the parent (ade.parent_model, ade.parent_version)."""
    from ade_mlflow_plugin.training.base_model import parent_tags, resolve

    tags: dict[str, Any] = {"ade.base_model": resolve(base_model).description,
                            "ade.dataset_digest": digest or "unknown", "ade.git_commit": commit,
                            "sagemaker.job_name": os.environ.get(contract.ENV_JOB_NAME, "local"),
                            **parent_tags(base_model)}
    tags.update({key: f"{value:.6g}" for key, value in metrics.items()})
    return tags


def merged(model: Any, base_model: str) -> Any:
    """The trained adapter folded into full-precision base weights (via its saved files)."""
    with tempfile.TemporaryDirectory(prefix="ade-adapter-") as folder:
        model.save_pretrained(folder)
        return merged_model(Path(folder), base_model)  # weights are in memory before the folder goes
