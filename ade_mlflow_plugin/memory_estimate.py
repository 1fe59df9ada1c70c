"""Per-GPU memory of a LoRA/QLoRA training job, plain (DDP: a whole model copy per GPU) and sharded (FSDP),
and the sharding decision it drives (issue 21). Stdlib only, in the core: the backend checks the fit at
submission (backend/fit.py) and the job resolves `sharding=auto` with it when run directly.

What is counted, in bytes, for the peak of a training step (what torch.cuda.max_memory_allocated reports):
- base weights: bf16 (2 bytes/param), 8-bit linears (1 byte + a scale per row), 4-bit NF4 linears with double
  quantisation (0.5 byte + about 0.127 bit of constants per param); embeddings, norms and lm_head stay bf16;
- LoRA: r x (in + out) per targeted linear, with its gradient and AdamW's two moments, all in the adapter
  dtype (torch's AdamW keeps its state in the parameter's dtype): 4 x 2 bytes/param in bf16, 4 x 4 in fp32;
- activations kept for backward, per token and decoder layer (bf16, sdpa/flex attention: no seq^2 term):
  the inputs of both norms (in fp32: transformers' RMSNorm upcasts, so 2 x 2 h) and of every linear, q/k/v and
  attention output, and the SwiGLU MLP's four intermediate tensors: (8 h + 2 kv + 4 i) x 2 bytes; plus what
  the LoRA path keeps instead of a linear's input when it is not that input itself (lora_dropout > 0, or fp32
  adapters: lora_path_bytes). A recomputed (checkpointed) layer keeps only its input. Measured on an H100
  (tests/measure_memory.py): see docs/memory-estimate.md;
- the loss: logits in bf16, upcast to fp32 and their gradient (10 bytes per token x vocab), unless the fused
  linear cross-entropy (liger) computes it in chunks.
Not counted in the peak but in what must fit: the CUDA context and the allocator's slack (CONTEXT_GIB and
FRAGMENTATION below).

Sharded (FSDP over every GPU of every host, as training/sharding.py runs it; its loss is never fused, since
training/speed.py fuses a plain nn.Linear head only): the base weights are split over
the GPUs; each GPU also holds two unsharded decoder layers while it works (the one it computes, the one it
prefetches); the LoRA adapter and its AdamW state stay whole on every GPU (replicated, their gradients
averaged), and so do activations and the loss. A quantized base is never sharded (the job refuses
quantization with sharding=fsdp): a quantized plan is held against one GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

GIB = float(1 << 30)
#: CUDA context, cuBLAS workspaces: outside torch's allocator, on every GPU.
CONTEXT_GIB = 0.75
#: The caching allocator rounds and fragments: what fits must leave this share of the card free.
FRAGMENTATION = 0.10
BYTES_PER_PARAM = {"none": 2.0, "8bit": 1.0 + 4.0 / 4096, "4bit": 0.5 + 0.127 / 8}
ADAM_COPIES = 4  # the LoRA weight, its gradient, AdamW's exp_avg and exp_avg_sq
#: The evals after training (training/evaluation.py, which this stdlib module cannot import): eval_loss runs
#: batches of EVAL_ROWS packed rows; its logits are never whole (a chunked loss, or batches whose logits at
#: LOSS_BYTES_PER_LOGIT stay under EVAL_LOGITS_CAP, one row at least: evaluation.LOGITS_BYTES);
#: exact_match generates for up to GENERATE_BATCH prompts at a time, as many as the memory free after training
#: holds (generate_batch, which the job asks), one at least: the plan must fit one prompt's generation. A
#: sharded model evaluates sharded on every rank and does not generate; rank 0 publishes from host memory
#: (training/sharding.py).
EVAL_ROWS = 8
EVAL_LOGITS_CAP = 1 << 30
GENERATE_BATCH = 16
LOSS_BYTES_PER_LOGIT = 10  # bf16 logits + their fp32 upcast + the fp32 gradient

#: instance type -> (GPUs, usable GiB per GPU) of SageMaker's GPU training instances.
GPU_MEMORY: dict[str, tuple[int, float]] = {
    **{f"ml.g4dn.{size}": (4 if size == "12xlarge" else 1, 14.6)
       for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")},
    **{f"ml.{family}.{size}": ({"12xlarge": 4, "24xlarge": 4, "48xlarge": 8}.get(size, 1), gib)
       for family, gib in (("g5", 22.0), ("g6", 22.0), ("g6e", 44.5))
       for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge")},
    "ml.p3.2xlarge": (1, 15.8), "ml.p3.8xlarge": (4, 15.8), "ml.p3.16xlarge": (8, 15.8),
    "ml.p3dn.24xlarge": (8, 31.7), "ml.p4d.24xlarge": (8, 39.4), "ml.p4de.24xlarge": (8, 79.2),
    "ml.p5.48xlarge": (8, 79.1), "ml.p5e.48xlarge": (8, 139.8), "ml.p5en.48xlarge": (8, 139.8),
}
#: Instance families whose GPUs lack bf16 (T4, V100): LoRA adapters train in fp32 there.
NO_BF16_FAMILIES = ("g4dn", "p3", "p3dn")
#: Instance families whose GPUs talk over NVLink/NVSwitch (the g families' go over PCIe): FSDP's all-gather
#: of the base every step is cheap there, so sharding beats recomputing layers.
NVLINK_FAMILIES = ("p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en")


def _family(instance_type: str) -> str:
    parts = instance_type.split(".")  # ml.<family>.<size>
    return parts[1] if len(parts) == 3 else ""


def has_bf16(instance_type: str) -> bool:
    return _family(instance_type) not in NO_BF16_FAMILIES


def has_nvlink(instance_type: str) -> bool:
    return _family(instance_type) in NVLINK_FAMILIES


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder (deepseek-coder's architecture), from its config.json."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ModelShape":
        """KeyError: not a Llama-style decoder's config; ValueError: a figure that is not a whole number > 0."""
        def whole(key: str, default: Any = None) -> int:
            value = config.get(key, default) if default is not None else config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{key} must be a whole number > 0, got {value!r}")
            return value

        heads = whole("num_attention_heads")
        return cls(whole("hidden_size"), whole("intermediate_size"), whole("num_hidden_layers"), heads,
                   whole("num_key_value_heads", config.get("num_key_value_heads") or heads), whole("vocab_size"),
                   bool(config.get("tie_word_embeddings", False)))

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear of one decoder layer."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        """Parameters of all decoder layers' linears (what quantisation shrinks)."""
        return self.layers * sum(a * b for a, b in self.linears().values())

    @property
    def other_params(self) -> int:
        """Embeddings, lm_head and norms: kept in bf16 even with a quantised base."""
        heads = 1 if self.tied_embeddings else 2
        return heads * self.vocab * self.hidden + (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params


@dataclass(frozen=True)
class Workload:
    """What one GPU trains at a time."""

    batch_size: int
    seq_len: int
    lora_r: int = 16
    target_modules: str = "all-linear"  # or a comma-separated subset of ModelShape.linears()
    quantization: str = "none"
    adapter_bytes: int = 2  # bf16 adapters (4: fp32, on a GPU without bf16)
    checkpointed_layers: int = 0
    fused_loss: bool = False
    eval_new_tokens: int = 0  # tokens generated per eval example after training (0: no generation)
    lora_dropout: float = 0.0  # > 0: every LoRA path keeps a dropped-out copy of its input and a mask

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len

    @classmethod
    def from_training(cls, config: Any, layers: int, bf16: bool = True) -> "Workload":
        """What a TrainingConfig (config/training.py; read by attribute, so this module stays stdlib only)
        trains on one GPU of a model with ``layers`` decoder layers; ``bf16``: the GPU has bf16 (without it
        the adapters train in fp32)."""
        return cls(batch_size=config.batch_size, seq_len=config.max_seq_len, lora_r=config.lora_r,
                   target_modules=config.target_modules, quantization=config.quantization,
                   adapter_bytes=2 if bf16 and config.bf16_adapters else 4,
                   checkpointed_layers=config.checkpointed_layers(layers), fused_loss=config.fused_loss,
                   eval_new_tokens=config.max_new_tokens if config.eval_samples > 0 else 0,
                   lora_dropout=config.lora_dropout)


@dataclass(frozen=True)
class Estimate:
    """Peak bytes per GPU of one training step, by part."""

    weights: float
    lora: float
    activations: float
    loss: float
    gather: float = 0.0  # FSDP's unsharded layers in flight

    @property
    def peak(self) -> float:
        return self.weights + self.lora + self.activations + self.loss + self.gather

    @property
    def needed_gib(self) -> float:
        """What a GPU must have free for this: the peak, the allocator's slack and the CUDA context."""
        return self.peak / GIB * (1 + FRAGMENTATION) + CONTEXT_GIB

    def line(self) -> str:
        parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in (
            ("weights", self.weights), ("LoRA+optimizer", self.lora), ("activations", self.activations),
            ("loss", self.loss), ("gathered layers", self.gather)) if value)
        return f"~{self.needed_gib:.1f} GiB per GPU ({parts} GiB)"


def targeted(model: ModelShape, work: Workload) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear of one decoder layer that gets a LoRA adapter."""
    linears = model.linears()
    return linears if work.target_modules == "all-linear" else {
        name: linears[name] for name in (m.strip() for m in work.target_modules.split(",")) if name in linears}


def lora_params(model: ModelShape, work: Workload) -> int:
    return model.layers * sum(work.lora_r * (a + b) for a, b in targeted(model, work).values())


def weight_bytes(model: ModelShape, quantization: str) -> float:
    return model.linear_params * BYTES_PER_PARAM[quantization] + model.other_params * 2.0


def activation_bytes(model: ModelShape, work: Workload) -> float:
    h, kv, i = model.hidden, model.kv_dim, model.intermediate
    kept = min(max(work.checkpointed_layers, 0), model.layers)
    full_layer = (8 * h + 2 * kv + 4 * i) * 2.0 + lora_path_bytes(model, work)
    # A checkpointed layer keeps its input; its full activations exist again, once, while it is recomputed.
    per_token = (model.layers - kept) * full_layer + kept * h * 2.0 + (full_layer if kept else 0.0)
    return per_token * work.tokens


#: Inputs each group of linears shares, and whether anything but their LoRA paths keeps it for backward:
#: the frozen base linear does not; attention keeps its output (o_proj's input) for its own backward.
_SHARED_INPUTS = ((("q_proj", "k_proj", "v_proj"), "hidden", True), (("o_proj",), "hidden", False),
                  (("gate_proj", "up_proj"), "hidden", True), (("down_proj",), "intermediate", True))


def lora_path_bytes(model: ModelShape, work: Workload) -> float:
    """Per token and decoder layer, what the LoRA paths keep for backward beyond the layer's own tensors.

    PEFT runs lora_B(lora_A(dropout(x cast to the adapter dtype))) in each targeted linear, and lora_A keeps its
    input for its weight's gradient. With 16-bit adapters and no dropout that input is x itself (counted: 0).
    With lora_dropout > 0 each linear keeps its own dropped-out copy (16-bit: under autocast lora_A casts an
    fp32 one back) and the dropout's mask (1 byte, CUDA's fused dropout): 3 bytes per input feature. With fp32
    adapters (no bf16, or bf16_adapters=false) and no dropout, autocast's 16-bit copy of the fp32-cast input:
    2 bytes. Either way x itself is then kept by nothing else, and its counted copy goes, except o_proj's input,
    which attention keeps. Checked on CPU with autograd's saved tensors (tests/test_lora_path_memory.py)."""
    per_feature = 3.0 if work.lora_dropout > 0 else 2.0 if work.adapter_bytes > 2 else 0.0
    if not per_feature:
        return 0.0
    wanted = targeted(model, work)
    freed = sum(getattr(model, size) for names, size, only_lora in _SHARED_INPUTS
                if only_lora and any(name in wanted for name in names))
    return sum(a for a, _ in wanted.values()) * per_feature - freed * 2.0


def loss_bytes(model: ModelShape, work: Workload) -> float:
    return 0.0 if work.fused_loss else float(work.tokens) * model.vocab * LOSS_BYTES_PER_LOGIT


def estimate(model: ModelShape, work: Workload, shards: int = 1) -> Estimate:
    """Per-GPU peak; shards > 1: FSDP over that many GPUs (the base weights split, the LoRA state whole)."""
    lora = lora_params(model, work) * work.adapter_bytes * ADAM_COPIES
    weights = weight_bytes(model, work.quantization)
    if shards <= 1:
        return Estimate(weights, lora, activation_bytes(model, work), loss_bytes(model, work))
    layer = sum(a * b for a, b in model.linears().values()) * BYTES_PER_PARAM[work.quantization]
    # Sharded, the job cannot fuse the loss (training/speed.py fuses a plain nn.Linear head; FSDP wraps it):
    # the logits are materialised whatever fused_loss says.
    unfused = loss_bytes(model, replace(work, fused_loss=False))
    return Estimate(weights / shards, lora, activation_bytes(model, work), unfused, gather=2 * layer)


@dataclass(frozen=True)
class Decision:
    """sharding=auto|none|fsdp resolved for one instance type: FSDP or not, what it costs, or a refusal."""

    fsdp: bool
    plain: Estimate
    sharded: Estimate | None
    gpu_gib: float
    message: str
    refused: bool = False


def decide(sharding: str, model: ModelShape, work: Workload, instance_type: str, instance_count: int = 1,
           model_name: str = "the model") -> Decision:
    """`auto` shards when the plain path does not fit one GPU of the instance and sharding does; a plan that
    fits neither way (or not the way asked) is refused with one line: by how much, and what to change."""
    if instance_type not in GPU_MEMORY:
        raise ValueError(f"unknown GPU memory for instance type {instance_type}")
    gpus, gib = GPU_MEMORY[instance_type]
    return decide_on(sharding, model, work, gpus * max(instance_count, 1), gib, instance_type, model_name)


def decide_on(sharding: str, model: ModelShape, work: Workload, shards: int, gib: float, label: str,
              model_name: str = "the model", *, local: bool = False) -> Decision:
    """decide() for any set of GPUs: ``shards`` GPUs in all (every host's), ``gib`` usable on each; ``label``
    names them in the message (an instance type, or this machine's GPUs in local mode). Training and the evals
    after it (after_gib) must both fit. ``local``: the GPUs are this machine's (local mode), so a refusal offers
    bigger GPUs, not an instance type (local mode has none)."""
    plain = estimate(model, work)
    # training/sharding.py shards a 16-bit base over several processes only; otherwise fsdp trains unsharded
    sharded = estimate(model, work, shards) if shards > 1 and work.quantization == "none" else None
    lone = sharding == "fsdp" and shards <= 1  # asked to shard with nothing to shard over: say so if refused
    sharding = "none" if sharding == "fsdp" and sharded is None else sharding
    where = f"{label} ({gib:g} GiB per GPU, {shards} GPU(s))"
    after_plain = after_gib(model, work, plain)
    if sharding != "fsdp" and max(plain.needed_gib, after_plain) <= gib:
        return Decision(False, plain, sharded, gib, f"{model_name}: {plain.line()} on {where}: fits unsharded")
    after_sharded = after_gib(model, work, sharded) if sharded is not None else None
    if sharding != "none" and sharded is not None and sharded.needed_gib <= gib:
        if after_sharded > gib:
            return Decision(False, plain, sharded, gib, refused=True, message=_after_refusal(
                model_name, f"sharded (FSDP) over {where} training needs {sharded.line()}, but", sharded,
                gib, model, work, local))
        return Decision(True, plain, sharded, gib, f"{model_name}: {sharded.line()} sharded (FSDP) over {where}; "
                                                   f"unsharded it would need {plain.needed_gib:.1f} GiB")
    if sharding != "fsdp" and plain.needed_gib <= gib:  # training fits unsharded, the evals after it do not
        return Decision(False, plain, sharded, gib, refused=True, message=_after_refusal(
            model_name, f"on {where} training needs {plain.line()}, but", plain, gib, model, work, local))
    best = plain if sharding == "none" or sharded is None else sharded
    would_fit = sharding == "none" and sharded is not None and max(sharded.needed_gib, after_sharded) <= gib
    return Decision(False, plain, sharded, gib, refused=True, message=refusal(
        model_name, model, work, best, gib, where,
        ("unsharded (sharding=fsdp needs more than one GPU in all)" if lone else "unsharded") if best is plain
        else "even sharded",
        sharded.needed_gib if would_fit else None, shards if best is not plain else 1, local))


def eval_bytes(model: ModelShape, work: Workload, generates: bool = True) -> float:
    """The larger of the two evals after training: eval_loss's logits (batches capped near EVAL_LOGITS_CAP),
    or exact_match's KV cache (unless the model does not generate: a sharded one)."""
    return float(max(_eval_logits(model, work), _kv_cache(model, work) if generates else 0))


def _eval_logits(model: ModelShape, work: Workload) -> int:
    row = work.seq_len * model.vocab * LOSS_BYTES_PER_LOGIT
    return min(EVAL_ROWS * row, max(EVAL_LOGITS_CAP, row))


def _kv_cache(model: ModelShape, work: Workload) -> int:
    """exact_match's generation at its smallest: one prompt of up to max_seq_len + max_new_tokens tokens."""
    return generation_bytes(model, work.seq_len + work.eval_new_tokens) if work.eval_new_tokens else 0


def generation_bytes(model: ModelShape, tokens: int, prompts: int = 1) -> int:
    """What generating for ``prompts`` prompts of up to ``tokens`` tokens (prompt and new ones) holds: their
    KV cache (keys and values, bf16, every layer) and the prefill's largest transient (one MLP's gate, up
    and their product in bf16 over every prompt token)."""
    kv_per_token = 2 * model.layers * model.kv_dim * 2
    prefill_per_token = 3 * model.intermediate * 2
    return prompts * tokens * (kv_per_token + prefill_per_token)


def generate_batch(model: ModelShape, tokens: int, free_bytes: float) -> int:
    """How many prompts of up to ``tokens`` tokens to generate for at once with ``free_bytes`` of GPU memory
    free: as many as fit with the allocator's slack, at most GENERATE_BATCH, one at least."""
    fitting = int(free_bytes / (1 + FRAGMENTATION) // max(1, generation_bytes(model, tokens)))
    return max(1, min(GENERATE_BATCH, fitting))


def after_gib(model: ModelShape, work: Workload, trained: Estimate) -> float:
    """What one GPU must have free for the evals after training: the trained model as it trained (sharded:
    its shard and the gathered layers, on every rank) and the larger eval."""
    held = (trained.weights + trained.lora + trained.gather) / GIB * (1 + FRAGMENTATION) + CONTEXT_GIB
    return held + eval_bytes(model, work, generates=not trained.gather) / GIB * (1 + FRAGMENTATION)


def _after_refusal(model_name: str, what: str, trained: Estimate, gib: float, model: ModelShape, work: Workload,
                   local: bool = False) -> str:
    """The one line of a plan whose training fits but whose evals after it do not: which eval binds, and only
    fixes that can help."""
    after = after_gib(model, work, trained)
    generates = not trained.gather
    cache_binds = generates and _kv_cache(model, work) > _eval_logits(model, work)
    quantize = _quantized_fix(model, work, gib)
    fixes = [quantize.replace("quantization=4bit", "quantization=4bit with sharding=none")] if quantize else []
    if cache_binds and after_gib(model, replace(work, eval_new_tokens=0), trained) <= gib:
        fixes.append("eval_samples=0 (no exact_match generation after training)")
        shorter = replace(work, eval_new_tokens=min(work.eval_new_tokens, work.seq_len))
        if work.eval_new_tokens > work.seq_len and after_gib(model, shorter, trained) <= gib:  # the new tokens bind
            fixes.append(f"a smaller max_new_tokens (now {work.eval_new_tokens})")
    if _after_unsharded(model, replace(work, seq_len=1)) <= gib:  # the eval shrinks with the sequence
        fixes.append(f"a smaller max_seq_len (now {work.seq_len})")
    fixes.append(_bigger(local, "an instance type with more memory per GPU", "GPUs with more memory"))
    binding = (f"exact_match's KV cache for one prompt of up to {work.seq_len + work.eval_new_tokens} tokens"
               if cache_binds else "eval_loss's logits")
    return (f"{model_name}: {what} evaluating the model after training needs ~{after:.1f} GiB on one "
            f"GPU (the model as it trained and {binding}): {after - gib:.1f} GiB too much; use " + ", ".join(fixes))


def _bigger(local: bool, instance: str, gpus: str) -> str:
    """The hardware fix: on SageMaker ``instance``; local mode has no instance type, it trains on this
    machine's GPUs: ``gpus`` than those, or SageMaker."""
    return f"{gpus} than this machine's (or mode=sagemaker on a bigger GPU instance)" if local else instance


def _after_unsharded(model: ModelShape, work: Workload) -> float:
    return after_gib(model, work, estimate(model, work))


def _quantized_fits(model: ModelShape, work: Workload, gib: float) -> bool:
    """Whether quantization=4bit alone (every layer recomputed if need be) makes the plan fit, evals included."""
    if work.quantization == "4bit":
        return False
    quantized = replace(work, quantization="4bit")
    recomputed = replace(quantized, checkpointed_layers=model.layers)
    return estimate(model, recomputed).needed_gib <= gib and _after_unsharded(model, quantized) <= gib


def _quantized_fix(model: ModelShape, work: Workload, gib: float) -> str | None:
    """The QLoRA fix, if one fits: 4-bit alone, or 4-bit without exact_match's generation after training
    (its KV cache is what a 4-bit base on one small GPU most often cannot hold)."""
    if _quantized_fits(model, work, gib):
        return "quantization=4bit"
    if work.eval_new_tokens and _quantized_fits(model, replace(work, eval_new_tokens=0), gib):
        return "quantization=4bit with eval_samples=0"
    return None


def refusal(model_name: str, model: ModelShape, work: Workload, best: Estimate, gib: float, where: str, how: str,
            sharded_gib: float | None = None, shards: int = 1, local: bool = False) -> str:
    """The one line of a plan that does not fit: by how much, and only the changes that could make it fit."""
    fixes = [f"sharding=auto (sharded: ~{sharded_gib:.1f} GiB per GPU)"] if sharded_gib is not None else []
    quantize = _quantized_fix(model, work, gib)
    fixes += [quantize] if quantize else []
    if _floor_gib(model, work, shards) <= gib:  # the weights leave room: less per step can fit
        fixes.append(f"a smaller batch_size (now {work.batch_size}) or max_seq_len (now {work.seq_len})")
    if work.checkpointed_layers < model.layers and _recomputed_fits(model, work, gib, shards):
        fixes.append("gradient_checkpointing=true")
    quantized = work.quantization != "none"  # a quantized base is never sharded: more GPUs cannot help
    fixes.append(_bigger(local, "an instance type with more GPU memory" + ("" if quantized else
                                                                          " or more GPUs (or instance_count > 1)"),
                         "GPUs with more memory" if quantized else "more or bigger GPUs"))
    return (f"{model_name} at batch_size {work.batch_size} x {work.seq_len} tokens needs {best.line()} {how} on "
            f"{where}: {best.needed_gib - gib:.1f} GiB too much; use " + ", ".join(fixes))


def _recomputed_fits(model: ModelShape, work: Workload, gib: float, shards: int) -> bool:
    """Whether recomputing every layer (gradient_checkpointing=true) alone makes the plan fit, evals included."""
    recomputed = estimate(model, replace(work, checkpointed_layers=model.layers), shards)
    return recomputed.needed_gib <= gib and after_gib(model, work, recomputed) <= gib


def _floor_gib(model: ModelShape, work: Workload, shards: int) -> float:
    """The least a step can need with these weights: one short sequence, every layer recomputed."""
    least = replace(work, batch_size=1, seq_len=1, checkpointed_layers=model.layers)
    return estimate(model, least, shards).needed_gib
