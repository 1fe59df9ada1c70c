"""Base model and tokenizer from a hub id or a local folder, optional 4/8-bit loading, LoRA on top."""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.errors import ConfigError, first_line
from ade_mlflow_plugin.config.training import TrainingConfig

logger = logging.getLogger(__name__)
# transformers 5.2x kernelizes a model whenever the `kernels` package is installed (one of its requirements):
# layers are swapped for code fetched from the hub at load and at train(), which fails offline and on
# publishers it cannot verify, and replaces layers the measured speed options (speed.py) compile.
NO_HUB_KERNELS: dict[str, Any] = {"use_kernels": False}


def device_and_dtype() -> tuple[str, Any]:
    """cuda with bf16 where the GPU has it (fp16 otherwise), else cpu with fp32 (speed.precision decides)."""
    import torch

    from ade_mlflow_plugin.config.training import TrainingConfig
    from ade_mlflow_plugin.training.speed import device_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, device_precision(TrainingConfig(), device).dtype


def check_quantization(quantization: str) -> None:
    """Fail early, naming the option, when the quantization library is missing."""
    if quantization == "none":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"quantization={quantization} needs bitsandbytes, which is not installed: "
                          "pip install bitsandbytes, or pass quantization=none")


def quantization_config(quantization: str, dtype: Any) -> Any:
    """bitsandbytes settings: QLoRA's NF4 with double quantisation, or LLM.int8()."""
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def local_model_dir(base_model: str) -> Path | None:
    """The folder holding the base model: the path itself (the weights folder of a registered model's
    download, see base_model.py), or the hub cache snapshot of a hub id."""
    from ade_mlflow_plugin.training.base_model import resolve

    base_model = resolve(base_model).model
    path = Path(base_model).expanduser()
    if path.is_dir():
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base_model, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or not a valid id): the caller decides
        return None


def load_tokenizer(base_model: str) -> Any:
    from transformers import AutoTokenizer

    from ade_mlflow_plugin.training.base_model import resolve

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve(base_model).tokenizer)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"base_model '{base_model}' could not be loaded ({type(exc).__name__}): pass a hub id "
                          "such as deepseek-ai/deepseek-coder-1.3b-instruct or a folder with config.json") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding only fills masked-out slots
    return tokenizer


def load_base_model(config: TrainingConfig, device: str, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    check_quantization(config.quantization)
    # Under torchrun each process owns the GPU of its LOCAL_RANK.
    target = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if device == "cuda" else "cpu"
    kwargs: dict[str, Any] = {"dtype": dtype, **NO_HUB_KERNELS}
    from ade_mlflow_plugin.training.speed import attention_implementation

    attention = attention_implementation(config, device)
    if attention:
        kwargs["attn_implementation"] = attention
    quant = quantization_config(config.quantization, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": target}
    from ade_mlflow_plugin.training.base_model import resolve

    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(config.base_model).model, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"base_model '{config.base_model}' could not be loaded: {first_line(exc, 200)}; "
                          "pass a hub id or a folder with config.json and weights") from None
    if quant is None:
        model.to(target)
    # Training never reuses a KV cache, and with one transformers skips packed-sequence masking.
    model.config.use_cache = False
    return model


def add_lora(model: Any, config: TrainingConfig, device: str | None = None) -> Any:
    """Wrap the model with a LoRA adapter (all linear projections but the LM head by default).

    The adapter's weights are float32 (peft's autocast_adapter_dtype): what fp16 loss scaling needs, and
    what bf16_adapters casts down inside speedups() where the GPU has bf16.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from ade_mlflow_plugin.training.speed import decoder_layers, device_precision

    checkpointed = config.checkpointed_layers(len(decoder_layers(model)))
    device = device or ("cuda" if model.device.type == "cuda" else "cpu")
    if device_precision(config, device).kbit_upcast:
        # peft's helper also casts every 16-bit weight (LM head, embeddings, norms) to float32: slow, and
        # with bf16 compute not needed for stability (fp16 needs it). Without it the branch below does the
        # rest of its work.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if checkpointed:
        enable_checkpointing(model)
        model.enable_input_require_grads()
        limit_checkpointed_layers(model, checkpointed)
        logger.info("activation checkpointing on %d decoder layers", checkpointed)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_module_list, task_type="CAUSAL_LM", bias="none")
    try:
        return get_peft_model(model, lora, autocast_adapter_dtype=True)
    except ValueError as exc:
        raise ConfigError(f"target_modules '{config.target_modules}' does not match the model's layers "
                          f"({first_line(exc, 160)}): pass all-linear or names such as q_proj,v_proj") from None


def enable_checkpointing(model: Any) -> None:
    """Activation checkpointing on every decoder layer (non-reentrant), by the API this transformers has."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5.2x; the old name warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def limit_checkpointed_layers(model: Any, count: int) -> int:
    """Keep activation checkpointing on the first ``count`` decoder layers only; returns how many keep it.

    Each checkpointed layer frees its saved activations (~1/layers of the activation memory) for one more
    forward of that layer in backward (~1/layers x 1/2 of the step's compute with a frozen base).
    """
    from ade_mlflow_plugin.training.speed import decoder_layers

    layers = decoder_layers(model)  # transformers' checkpointing flag is per layer (GradientCheckpointingLayer)
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index < count
    return min(count, len(layers))


def load_for_training(config: TrainingConfig) -> tuple[Any, Any, str]:
    """(peft model, tokenizer, device) ready for the Trainer."""
    from ade_mlflow_plugin.training.speed import device_precision

    device, dtype = device_and_dtype()
    plan = device_precision(config, device)
    if plan.summary():  # once per process: why this GPU trains slower than the figures in RESULTS.md
        logger.info("%s", plan.summary())
    tokenizer = load_tokenizer(config.base_model)
    model = load_base_model(config, device, dtype)
    return add_lora(model, config, device), tokenizer, device
