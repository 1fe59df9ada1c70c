"""A registered model as the base of the next training (`base_model=models:/NAME@ALIAS` or `/VERSION`).

The backend downloads the version (an input channel, locally and on SageMaker) and the job gets its folder:
MLflow's model layout (MLmodel, model/ or peft/, components/tokenizer/), which from_pretrained does not
read. `resolve()` turns it into folders that it does read:

- a merged model: its weights folder (``model/``) and its tokenizer folder (``components/tokenizer/``);
- an adapter-only model: the adapter applied to its recorded base (MLmodel's local base path, or the hub
  repo at the recorded revision) and merged, saved once per process in a temporary folder with the
  tokenizer, so the new LoRA trains on top of base + old adapter.

Any other value (a hub id, a plain model folder) resolves to itself. The version the folder came from
(MLflow writes its name and version into every models:/ download) becomes the new version's parent.
"""
from __future__ import annotations

import atexit
import functools
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ade_mlflow_plugin.errors import ConfigError, first_line

logger = logging.getLogger(__name__)
MLMODEL = "MLmodel"
#: What MLflow's models:/ download writes beside MLmodel: {model_name, model_version} (YAML).
REGISTERED_MODEL_META = "registered_model_meta"
TOKENIZER_DIR = Path("components") / "tokenizer"
# Keys of MLmodel's transformers flavor read here (mlflow.transformers.flavor_config.FlavorKey's values).
MODEL_BINARY, PEFT, LOCAL_BASE, SOURCE_NAME, SOURCE_REVISION = (
    "model_binary", "peft_adaptor", "local_base_model_path", "source_model_name", "source_model_revision")
PARENT_MODEL_TAG = "ade.parent_model"
PARENT_VERSION_TAG = "ade.parent_version"


@dataclass(frozen=True)
class Parent:
    """The registered version a base folder was downloaded from."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class ResolvedBase:
    """What from_pretrained reads for a base_model value.

    model / tokenizer: a folder or hub id each; parent: the registered version it came from; temporary:
    the model folder lives only as long as this process (an adapter merged into its base here), so a
    logged model must not reference it.
    """

    model: str
    tokenizer: str
    parent: Parent | None = None
    temporary: bool = False

    @property
    def description(self) -> str:
        """How tags name this base: the registered version when there is one."""
        return self.parent.uri if self.parent else self.model


def is_mlflow_model(folder: str | Path) -> bool:
    path = Path(folder).expanduser()
    return path.is_dir() and (path / MLMODEL).is_file()


def read_parent(folder: Path) -> Parent | None:
    """The registered name and version MLflow recorded in a models:/ download (None for other folders)."""
    meta = folder / REGISTERED_MODEL_META
    if not meta.is_file():
        return None
    try:
        data = yaml.safe_load(meta.read_text()) or {}
    except yaml.YAMLError:
        return None
    name, version = data.get("model_name"), data.get("model_version")
    return Parent(str(name), str(version)) if name and version is not None else None


def transformers_flavor(folder: Path) -> dict[str, Any]:
    """The transformers flavor of an MLflow model folder's MLmodel; ConfigError for any other model."""
    try:
        flavors = (yaml.safe_load((folder / MLMODEL).read_text()) or {}).get("flavors") or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"base_model '{folder}': its MLmodel is not valid YAML ({first_line(exc, 120)}): "
                          "download the registered model again") from None
    flavor = flavors.get("transformers")
    if not isinstance(flavor, dict):
        raise ConfigError(f"base_model '{folder}' is an MLflow model of flavor(s) {sorted(flavors) or 'none'}, "
                          "not transformers: pass a model this plugin registered, a hub id or a model folder")
    return flavor


@functools.lru_cache(maxsize=8)
def resolve(base_model: str) -> ResolvedBase:
    """base_model -> the folders from_pretrained reads (once per process: an adapter is merged once)."""
    folder = Path(base_model).expanduser()
    if not is_mlflow_model(folder):
        return ResolvedBase(base_model, base_model)
    folder = folder.resolve()
    flavor, parent = transformers_flavor(folder), read_parent(folder)
    tokenizer = folder / TOKENIZER_DIR
    if not tokenizer.is_dir():
        raise ConfigError(f"base_model '{base_model}' has no tokenizer in {TOKENIZER_DIR}: register the model "
                          "with its tokenizer (this plugin's jobs do)")
    if flavor.get(MODEL_BINARY):
        resolved = ResolvedBase(str(folder / flavor[MODEL_BINARY]), str(tokenizer), parent=parent)
    elif flavor.get(PEFT):
        resolved = _merge_adapter(folder, flavor, tokenizer, parent)
    else:
        raise ConfigError(f"base_model '{base_model}': the MLflow model holds neither weights nor an adapter "
                          "(no model_binary or peft_adaptor in MLmodel): register it again")
    logger.info("base model %s: %s", parent.uri if parent else base_model,
                "adapter merged into its base" if resolved.temporary else "merged weights")
    return resolved


def recorded_base(flavor: dict[str, Any]) -> tuple[str, str | None]:
    """(folder or hub id, revision) of the base an adapter-only MLflow model was logged against."""
    local = flavor.get(LOCAL_BASE)
    if local:
        if not Path(local).is_dir():
            raise ConfigError(f"the registered adapter's base folder '{local}' is not on this machine: train on "
                              "it where that folder exists (local mode), or register the parent merged "
                              "(merge_adapter=true), or with a hub base")
        return str(local), None
    name = flavor.get(SOURCE_NAME)
    if not name:
        raise ConfigError("the registered adapter records no base model (MLmodel has neither "
                          "local_base_model_path nor source_model_name): register it merged (merge_adapter=true)")
    return str(name), flavor.get(SOURCE_REVISION)


def _merge_adapter(folder: Path, flavor: dict[str, Any], tokenizer: Path, parent: Parent | None) -> ResolvedBase:
    """Base + adapter, merged, saved with the tokenizer into a folder that lives as long as this process."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ade_mlflow_plugin.training.model import NO_HUB_KERNELS, device_and_dtype

    base, revision = recorded_base(flavor)
    _, dtype = device_and_dtype()  # the dtype training loads it in: no precision is kept that is not used
    try:
        model = AutoModelForCausalLM.from_pretrained(base, revision=revision, dtype=dtype, **NO_HUB_KERNELS)
        merged = PeftModel.from_pretrained(model, str(folder / flavor[PEFT])).merge_and_unload()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the registered adapter in '{folder}' could not be applied to its base '{base}': "
                          f"{first_line(exc, 200)}; register the parent merged (merge_adapter=true)") from None
    out = Path(tempfile.mkdtemp(prefix="ade-parent-"))
    atexit.register(shutil.rmtree, out, True)
    merged.save_pretrained(out)
    for item in tokenizer.iterdir():
        if item.is_file():
            shutil.copy2(item, out / item.name)
    return ResolvedBase(str(out), str(out), parent=parent, temporary=True)


def parent_tags(base_model: str) -> dict[str, str]:
    """Version tags naming the registered version this training started from (none for other bases)."""
    parent = resolve(base_model).parent
    return {PARENT_MODEL_TAG: parent.name, PARENT_VERSION_TAG: parent.version} if parent else {}
