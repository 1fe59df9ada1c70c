"""Sharded training (issue 21 item 2): the base model's weights split over every process of the job (FSDP2).

How (docs/sharding.md says why): transformers' own FSDP2 loading, `from_pretrained(distributed_config=
DistributedConfig(fsdp_size=WORLD_SIZE))`, which runs torch's `fully_shard` on each decoder layer (and the LM
head, by the model's FSDP plan) while it loads, so no process ever holds the whole model. The LoRA adapter is
added after that and stays replicated: the Trainer broadcasts it from rank 0 and averages its gradients over
the ranks (what DDP does for it), so every rank holds the whole, identical adapter at every step. Accelerate's
FSDP plugin (TrainingArguments fsdp=...) is not used: it turns itself off on CPU (accelerate enables FSDP only
for GPU-like distributed types), and the CPU/gloo run is how this project proves the path.

What follows from a replicated adapter:
- checkpoints hold the full adapter and its optimizer state, written once by rank 0, in the same files as an
  unsharded run (adapter_model.safetensors, optimizer.pt, scheduler.pt): resume, finished_checkpoint,
  load_adapter_weights and load_best read them as they always did, with the same or another process count;
- "gathering" the adapter for publishing needs no collective; `full_adapter` still gathers any sharded
  (DTensor) adapter weight, every rank taking part, should a later FSDP plan shard the adapter too;
- the published model is built on rank 0 in host memory (publishable_model): no GPU has to hold the whole base.

The Trainer refuses to checkpoint the optimizer of a model sharded at load time (it cannot know the trainable
weights are replicated): training_arguments sets save_only_model and callbacks.SaveTrainingState writes the
optimizer and scheduler itself.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.errors import ConfigError

logger = logging.getLogger(__name__)
NONE, FSDP = "none", "fsdp"


def world_size() -> int:
    """Processes of the job (torchrun's WORLD_SIZE over every host); 1 without torchrun."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Choice:
    """What the job does with its `sharding` option, and the one log line that says why."""

    mode: str  # NONE or FSDP
    reason: str

    @property
    def sharded(self) -> bool:
        return self.mode == FSDP

    def line(self) -> str:
        return f"sharding: {'FSDP over ' + str(world_size()) + ' processes' if self.sharded else 'none'} ({self.reason})"


def choose(config: TrainingConfig, device: str, world: int, gpu_gib: float | None = None,
           plain_gib: float | None = None) -> Choice:
    """Pure: resolve config.sharding for this job. ``auto`` (the entry run directly: the backend passes none or
    fsdp when it could decide) shards only on GPU with several processes, when the plain path's estimated
    need (``plain_gib``) exceeds the card's memory (``gpu_gib``)."""
    if config.sharding == NONE:
        return Choice(NONE, "sharding=none")
    if world <= 1:
        return Choice(NONE, f"sharding={config.sharding} with one process: nothing to shard over, trained unsharded")
    if config.sharding == FSDP:
        return Choice(FSDP, "sharding=fsdp")
    if config.quantization != "none":
        return Choice(NONE, f"sharding=auto with quantization={config.quantization}: a quantized base is not sharded")
    if device != "cuda":
        return Choice(NONE, f"sharding=auto on {device}: unsharded (pass sharding=fsdp to shard on {device})")
    if gpu_gib is None or plain_gib is None:
        return Choice(NONE, "sharding=auto: no memory estimate for this model, trained unsharded")
    if plain_gib <= gpu_gib:
        return Choice(NONE, f"sharding=auto: unsharded needs ~{plain_gib:.1f} GiB per GPU, the GPU has {gpu_gib:.1f}")
    return Choice(FSDP, f"sharding=auto: unsharded would need ~{plain_gib:.1f} GiB per GPU, the GPU has {gpu_gib:.1f}")


def check_quantization(config: TrainingConfig, choice: Choice) -> None:
    """A quantized (bitsandbytes) base is not sharded: the one line of TrainingConfig.check_combinations, for a
    config built in code (the constructor does not run the combination checks; the entries and the backend do)."""
    if choice.sharded and config.quantization != "none":
        config.check_combinations()


def plain_need_gib(config: TrainingConfig, model_config: Any, bf16: bool = True) -> float | None:
    """Estimated per-GPU memory of the unsharded run, as the backend's fit check counts it (memory_estimate.py);
    None for a model it cannot shape. ``bf16``: the GPU has bf16 (else the adapters train in fp32)."""
    from ade_mlflow_plugin.memory_estimate import ModelShape, Workload, estimate

    try:
        shape = ModelShape.from_config(model_config.to_dict())
    except (KeyError, TypeError, ValueError):
        return None
    return estimate(shape, Workload.from_training(config, shape.layers, bf16=bf16)).needed_gib


def resolve(config: TrainingConfig, device: str) -> Choice:
    """choose() for this process: on GPU with `auto`, the estimate against this card's memory. Logs the line."""
    gpu_gib = plain_gib = None
    if config.sharding == "auto" and device == "cuda" and world_size() > 1:
        import torch
        from transformers import AutoConfig

        from ade_mlflow_plugin.training.base_model import resolve as resolve_base

        gpu_gib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
        try:
            plain_gib = plain_need_gib(config, AutoConfig.from_pretrained(resolve_base(config.base_model).model),
                                       bf16=torch.cuda.is_bf16_supported())
        except (OSError, ValueError):  # no config.json to read: the load below says what is wrong
            plain_gib = None
    choice = choose(config, device, world_size(), gpu_gib, plain_gib)
    if rank() == 0:
        logger.info(choice.line())
    return choice


def load_sharded_base(config: TrainingConfig, device: str, dtype: Any) -> Any:
    """The base model with each decoder layer sharded over all processes as it loads (FSDP2)."""
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    from ade_mlflow_plugin.training.base_model import resolve as resolve_base
    from ade_mlflow_plugin.training.model import NO_HUB_KERNELS
    from ade_mlflow_plugin.training.speed import attention_implementation

    kwargs: dict[str, Any] = {"dtype": dtype, **NO_HUB_KERNELS,
                              "distributed_config": DistributedConfig(fsdp_size=world_size())}
    attention = attention_implementation(config, device)
    if attention:
        kwargs["attn_implementation"] = attention
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_base(config.base_model).model, **kwargs)
    except (OSError, ValueError) as exc:
        from ade_mlflow_plugin.errors import first_line

        raise ConfigError(f"base_model '{config.base_model}' could not be loaded sharded: {first_line(exc, 200)}; "
                          "pass a hub id or a folder with config.json and weights, or sharding=none") from None
    model.config.use_cache = False  # as model.load_base_model: packed rows need no KV cache
    return model


def load_for_training(config: TrainingConfig) -> tuple[Any, Any, str]:
    """(peft model, tokenizer, device): model.load_for_training, or its sharded form when the job shards."""
    from ade_mlflow_plugin.training import model as plain

    device, dtype = plain.device_and_dtype()
    choice = resolve(config, device)
    if not choice.sharded:
        return plain.load_for_training(config)
    check_quantization(config, choice)
    tokenizer = plain.load_tokenizer(config.base_model)
    return plain.add_lora(load_sharded_base(config, device, dtype), config, device), tokenizer, device


def is_sharded(model: Any) -> bool:
    """Whether any weight of the model is a DTensor (sharded by FSDP2)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_adapter(model: Any) -> dict[str, Any] | None:
    """The whole LoRA adapter as peft saves it, on rank 0 (None on the other ranks). Every rank must call it:
    a sharded adapter weight is gathered with a collective."""
    from peft import get_peft_model_state_dict
    from torch.distributed.tensor import DTensor

    weights = get_peft_model_state_dict(model)
    full = {name: (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu() for name, t in weights.items()}
    return full if rank() == 0 else None


def publishable_model(model: Any, config: TrainingConfig) -> Any:
    """After sharded training, the model rank 0 publishes: the base loaded again unsharded, in host memory (a
    sharded model cannot run a forward pass on one rank alone, and a base that needed sharding need not fit
    one GPU), with the full adapter in it. Every rank calls it; ranks other than 0 get None. An unsharded model
    is returned as it is. Evaluate a sharded model before this, on every rank (its forward passes gather the
    shards together); an eval of the returned copy runs on the CPU."""
    if not is_sharded(model):
        return model
    from peft import set_peft_model_state_dict

    from ade_mlflow_plugin.training import model as plain

    adapter = full_adapter(model)
    if adapter is None:
        return None
    _, dtype = plain.device_and_dtype()  # the training dtype (bf16 on a GPU): host memory of 2 bytes a weight
    whole = plain.add_lora(plain.load_base_model(config, "cpu", dtype), config, "cpu")
    set_peft_model_state_dict(whole, adapter)
    whole.eval()
    logger.info("sharded training done: the full adapter (%d tensors) is in an unsharded copy of the base in host "
                "memory on rank 0, for publishing", len(adapter))
    return whole
