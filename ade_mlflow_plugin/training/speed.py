"""Speed options of the training path, each on by default and each with a TrainingConfig switch to turn it off.

Measured on an H200 by benchmarks/train_throughput.py (figures in benchmarks/RESULTS.md):
- flex_attention: packed rows attend block-diagonally through FlexAttention, which skips the blocks
  between examples; sdpa gets a dense 4D mask for packed rows and computes every block.  (CUDA)
- compile_layers: torch.compile of each decoder layer (regional compilation: the layer's code is
  compiled once and shared by all layers), fusing RMSNorm, RoPE, SiLU and LoRA's small ops.  (CUDA)
- fused_loss: the LM head and cross-entropy run in chunks over the target tokens only, with the
  gradient computed on the way, so the (tokens x vocab) float32 logits never exist in full and prompt
  tokens cost no LM-head work.  (everywhere: it is exact, and tested against the model's own loss)
- fused_lora (off by default): sibling projections that read the same input (q/k/v, gate/up) run one base
  matmul and one LoRA-A matmul for the group instead of one each (training/fused_lora.py). Measured on an
  H100 under compile_layers: 1.008x for +1.7 GB, inside the run-to-run spread.  (CUDA)
- fp8_base (off by default): the frozen base's matmuls in fp8 with row-wise scales (training/fp8.py). Loss
  within 0.01 of bf16's over 26 steps, but slower where measured: torch 2.11's dynamo cannot trace its
  scaled_mm, so each fp8 projection breaks the compiled layer.  (CUDA, sm89+)
- bf16_adapters: LoRA weights (and with QLoRA the non-quantized weights) stay in the base model's
  16-bit dtype instead of PEFT's float32, so no cast runs around every adapter matmul.  (CUDA, bf16)

On a GPU without bf16 (T4, V100) the base runs in fp16 under the Trainer's fp16 autocast with loss scaling,
and the GradScaler refuses fp16 gradients, so trainable weights stay float32 (bf16_adapters off); FlexAttention
needs sm80 (its Triton tiles overflow the shared memory of older GPUs). `precision()` decides all of it, and
`load_for_training` logs the options it turned off in one line.

Compilation and the patched forward only live inside `speedups()`, so evaluation and generation after
training run the plain model.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ade_mlflow_plugin.adapters.torch_compile import uncompile
from ade_mlflow_plugin.adapters.transformers_attn import attn_implementation
from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.training import fp8
from ade_mlflow_plugin.training.fused_lora import fused_lora

logger = logging.getLogger(__name__)
IGNORE = -100
LOGITS_PER_CHUNK = 1 << 27  # float32 logits of one chunk: 512 MB whatever the vocabulary


FLEX_MIN_CAPABILITY = (8, 0)
FP8_MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada and Hopper


@dataclass(frozen=True)
class Precision:
    """The dtype decisions of one training process and the speed options its device allows."""

    dtype: torch.dtype     # base weights and compute: bf16, fp16 (a GPU without bf16) or fp32 (CPU)
    mixed: str             # the Trainer's autocast: "bf16", "fp16" (with loss scaling) or "no"
    bf16_adapters: bool    # trainable weights may be cast to the base's dtype
    flex_attention: bool
    kbit_upcast: bool = False  # a 4/8-bit base: peft's prepare_model_for_kbit_training upcasts its other weights
    fp8: bool = False          # fp8_base asked for and possible here (training/fp8.py)
    turned_off: tuple[str, ...] = ()  # "option (why)" for each option the config asked for and the GPU lacks

    def summary(self) -> str:
        """The one log line for a device that turned options off ('' when none were)."""
        if not self.turned_off:
            return ""
        return (f"{self.dtype} base, {self.mixed} autocast, LoRA weights {'bf16' if self.bf16_adapters else 'float32'}; "
                f"speed options off on this GPU: {', '.join(self.turned_off)}")


def precision(config: TrainingConfig, device: str, *, bf16_supported: bool,
              capability: tuple[int, int] | None = None, quantization: str | None = None) -> Precision:
    """Pure: dtypes and GPU-dependent options from (device, bf16 support, compute capability, quantization).

    capability None means unknown (no GPU to ask): nothing is turned off for it. quantization (default the
    config's): a 4/8-bit base computes in the same dtype; its non-quantized weights are upcast to float32
    (peft's k-bit preparation) unless they may stay 16-bit (bf16_adapters).
    """
    quantized = (quantization or config.quantization) != "none"
    flex = device == "cuda" and config.flex_attention and config.packing
    if device != "cuda":
        return Precision(torch.float32, "no", config.bf16_adapters, False, quantized and not config.bf16_adapters)
    off: list[str] = []
    if bf16_supported:
        dtype, mixed, adapters = torch.bfloat16, "bf16", config.bf16_adapters
    else:
        dtype, mixed, adapters = torch.float16, "fp16", False
        if config.bf16_adapters:
            off.append("bf16_adapters (no bf16; fp16 loss scaling needs float32 trainable weights)")
    if flex and capability is not None and tuple(capability) < FLEX_MIN_CAPABILITY:
        flex = False
        off.append(f"flex_attention (needs sm80, this GPU is sm{capability[0]}{capability[1]})")
    return Precision(dtype, mixed, adapters, flex, quantized and not adapters,
                     _fp8(config, capability, quantized, off), tuple(off))


def _fp8(config: TrainingConfig, capability: tuple[int, int] | None, quantized: bool, off: list[str]) -> bool:
    """Whether fp8_base runs on this CUDA device; appends the reason to ``off`` when it cannot."""
    if not config.fp8_base:
        return False
    if quantized:
        off.append("fp8_base (a quantized base has no 16-bit weights to multiply in fp8)")
    elif capability is not None and tuple(capability) < FP8_MIN_CAPABILITY:
        off.append(f"fp8_base (needs sm89 or newer, this GPU is sm{capability[0]}{capability[1]})")
    elif not fp8.available():
        off.append(f"fp8_base (torch {torch.__version__} has no torch.nn.functional.scaled_mm)")
    else:
        return True
    return False


def device_precision(config: TrainingConfig, device: str) -> Precision:
    """precision() for the GPU this process trains on (LOCAL_RANK's under torchrun)."""
    if device != "cuda" or not torch.cuda.is_available():
        return precision(config, device, bf16_supported=device == "cuda")
    index = int(os.environ.get("LOCAL_RANK", "0"))
    return precision(config, device, bf16_supported=torch.cuda.is_bf16_supported(),
                     capability=torch.cuda.get_device_capability(index))


def attention_implementation(config: TrainingConfig, device: str) -> str | None:
    """What to pass from_pretrained as attn_implementation (None: transformers' default, sdpa)."""
    return "flex_attention" if device_precision(config, device).flex_attention else None


def pad_multiple(config: TrainingConfig, device: str) -> int:
    """Row width multiple for the collator: one compiled shape for all full batches, whole flex blocks."""
    return 128 if device == "cuda" and (config.compile_layers or config.flex_attention) else 1


# ---- fused LM head + cross-entropy -------------------------------------------------------------------------

class _FrozenHeadCrossEntropy(torch.autograd.Function):
    """Sum of token cross-entropies of hidden @ weight.T against targets, for a frozen LM head.

    The gradient w.r.t. hidden is computed chunk by chunk in forward (softmax - one_hot) @ weight, so
    memory holds one chunk of float32 logits instead of all of them; backward only scales it.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,  # type: ignore[override]
                chunk: int) -> torch.Tensor:
        weight = weight.to(hidden.dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk):
            part, target = hidden[start:start + chunk], targets[start:start + chunk]
            logits = (part @ weight.t()).float()  # the model's own order: 16-bit matmul, then float32
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, target[:, None]).squeeze(1)).sum()
            if grad is not None:
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(len(target), device=probs.device), target] -= 1.0
                grad[start:start + chunk] = probs.to(hidden.dtype) @ weight
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         num_items_in_batch: Any = None) -> torch.Tensor:
    """transformers' causal-LM loss (shifted labels, -100 ignored; mean, or sum / num_items_in_batch under
    gradient accumulation) of logits = hidden @ weight.T, computed only at target positions."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    picked = hidden[:, :-1][keep]
    chunk = max(256, LOGITS_PER_CHUNK // weight.shape[0])
    total = _FrozenHeadCrossEntropy.apply(picked, weight, targets[keep], chunk)
    if num_items_in_batch is None:
        return total / keep.sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def causal_lm(model: Any) -> Any:
    """The *ForCausalLM module under a PEFT wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _can_fuse(lm: Any) -> bool:
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    # A trained (or LoRA-wrapped) head needs its weight gradient: leave it to the model's own loss.
    return (type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad
            and hasattr(lm, "model") and getattr(lm.config, "final_logit_softcapping", None) is None)


@contextlib.contextmanager
def fused_loss(model: Any) -> Iterator[bool]:
    """While inside: training forwards with labels return the fused loss (and no logits). Yields whether applied."""
    lm = causal_lm(model)
    if not _can_fuse(lm):
        yield False
        return
    from transformers.modeling_outputs import CausalLMOutputWithPast

    original = lm.forward

    def forward(input_ids=None, labels=None, num_items_in_batch=None, logits_to_keep=0, **kwargs):
        if labels is None or not lm.training:
            return original(input_ids=input_ids, labels=labels, num_items_in_batch=num_items_in_batch,
                            logits_to_keep=logits_to_keep, **kwargs)
        out = lm.model(input_ids=input_ids, **kwargs)
        loss = linear_cross_entropy(out.last_hidden_state, lm.get_output_embeddings().weight, labels,
                                    num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=out.past_key_values)

    lm.forward = forward
    try:
        yield True
    finally:
        del lm.forward  # back to the class's forward


# ---- compile, dtypes ---------------------------------------------------------------------------------------

def decoder_layers(model: Any) -> list[Any]:
    layers = getattr(getattr(causal_lm(model), "model", None), "layers", None)
    return list(layers) if layers is not None else []


@contextlib.contextmanager
def compiled_layers(model: Any) -> Iterator[int]:
    """torch.compile each decoder layer while inside; yields how many. Outside, the layers run eagerly again."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile()
    try:
        yield len(layers)
    finally:
        for layer in layers:
            if not uncompile(layer):  # torch changed: they stay compiled (it said so once)
                break


def cast_trainable(model: Any, dtype: torch.dtype) -> int:
    """Trainable float32 weights (PEFT's LoRA default) to dtype; returns how many tensors changed."""
    changed = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.float32:
            param.data = param.data.to(dtype)
            changed += 1
    return changed


def model_dtype(model: Any) -> torch.dtype:
    """The compute dtype: that of the first non-trainable float weight (the frozen base)."""
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point():
            return param.dtype
    return torch.float32


@contextlib.contextmanager
def speedups(model: Any, config: TrainingConfig, device: str) -> Iterator[list[str]]:
    """Every speed option the config allows, for the duration of trainer.train(); yields the names applied."""
    applied: list[str] = []
    with contextlib.ExitStack() as stack:
        # Never to fp16: an fp16 base trains under fp16 autocast, whose GradScaler needs float32 gradients.
        if config.bf16_adapters and model_dtype(model) == torch.bfloat16:
            if cast_trainable(model, torch.bfloat16):
                applied.append("bf16_adapters")
        if config.fused_loss and stack.enter_context(fused_loss(model)):
            applied.append("fused_loss")
        # Before compile_layers: the layers are traced (at their first call) with the groups in place.
        groups = stack.enter_context(fused_lora(model)) if device == "cuda" and config.fused_lora else []
        if groups:
            applied.append("fused_lora")
        if device_precision(config, device).fp8 and stack.enter_context(fp8.fp8_base(model, groups)):
            applied.append("fp8_base")
        if device == "cuda" and config.compile_layers and stack.enter_context(compiled_layers(model)):
            applied.append("compile_layers")
        if attn_implementation(causal_lm(model).config, attention_implementation(config, device)) == "flex_attention":
            applied.append("flex_attention")
        logger.info("speed options: %s", ", ".join(applied) or "none")
        yield applied
