"""TrainingConfig: the training parameters of the MLproject entries, each declared once (options kit).

MLflow hands every parameter over as a string and `float`-typed MLproject params arrive as "16" or
"16.0", so integer fields accept both. Every bad value raises ConfigError naming the parameter, the
value and what to pass instead. The backend checks a run's params with these same parsers before it
creates the run; the entries' command lines (and --help) are built from these fields. No torch here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from ade_mlflow_plugin.config.registry import registered_model_name

from ade_mlflow_plugin.options import (Invalid, Option, Style, boolean, choice, from_mapping, option,
                                       options_class, real, text, whole)

DEFAULT_BASE_MODEL = "deepseek-ai/deepseek-coder-1.3b-instruct"
QUANTIZATION_CHOICES = ("none", "8bit", "4bit")
SCHEDULER_CHOICES = ("cosine", "linear", "constant_with_warmup")
SHARDING_CHOICES = ("auto", "none", "fsdp")
# Share of decoder layers a quantized (QLoRA) run checkpoints by default: on an H200 with the 1.3b model,
# batch 16, it brought peak memory from 0.97x to under 0.8x of LoRA's at ~7% speed (benchmarks/RESULTS.md).
AUTO_CHECKPOINT_SHARE = 0.6
DEFAULT_SAVE_STEPS = 100
EVALS_PER_RUN = 10  # eval_steps=auto
LOG_POINTS = 100  # logging_steps=auto: at most this many points per curve (every step below it)
STYLE = Style("parameter", unknown="unknown training parameter '{key}' ({fix})")


def auto_or_whole(value: Any) -> str:
    """"auto" or an integer >= 0, kept as text so that the MLflow param reads as the user wrote it."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return str(whole(0)(value))
    except Invalid:
        raise Invalid("auto or a whole number >= 0") from None


def auto_or_positive(value: Any) -> str:
    """"auto" or an integer >= 1, kept as text (the MLflow param reads as the user wrote it)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return str(whole(1)(value))
    except Invalid:
        raise Invalid("auto or a whole number >= 1") from None


def modules(value: Any) -> str:
    """`all-linear` or a comma-separated list of module names such as `q_proj,v_proj`."""
    parsed = text(required=True)(value)
    if parsed.lower() == "all-linear":
        return "all-linear"
    parts = [p.strip() for p in parsed.split(",")]
    if any(not p or not p.replace("_", "").replace(".", "").isalnum() for p in parts):
        raise Invalid("all-linear or module names separated by commas, e.g. q_proj,v_proj")
    return ",".join(parts)


def optional_path(value: Any) -> str | None:
    """A path or URI; unset or empty is None."""
    return None if value is None else (text()(value) or None)


# Declared once, shared with the dataset options (config/dataset.py): the `main` entry mines the codebase
# with the same values the `prepare_data` entry and `ade-mlflow prepare-data` take.
NUM_EXAMPLES = Option(1000, whole(1), "most examples to make from the codebase (all there are if fewer)")
SYNTHETIC_RATIO = Option(0.3, real(0.0, 1.0), "share of synthetic examples, 0 to 1")
EVAL_FRACTION = Option(0.1, real(0.0, 1.0, hi_open=True), "share of examples (whole files) held out for eval")
SEED = Option(42, whole(0, 2**32 - 1), "random seed for data selection, splits and training")
def base_model_name(value: Any) -> str:
    """A hub name, models:/NAME@ALIAS, or a local folder; a value written as a local path (/, ./, ../, ~)
    must exist, or the job would fail only after it started."""
    name = text(required=True)(value)
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise Invalid("", detail=f"'{name}': no such folder; pass a hub name, an existing folder or "
                                 "models:/NAME@ALIAS")
    return name


BASE_MODEL = Option(DEFAULT_BASE_MODEL, base_model_name,
                    "base model: hub name, local folder, or models:/NAME@ALIAS of a registered version")
MAX_SEQ_LEN = Option(2048, whole(16), "longest sequence, tokens")
MAX_NEW_TOKENS = Option(64, whole(0), "most tokens generated per eval example")


@options_class
@dataclass
class TrainingConfig:
    """What one training job does. Defaults suit deepseek-coder-1.3b with LoRA on one 24 GB GPU (A10G/L4)."""

    OPTIONS_STYLE: ClassVar[Style] = STYLE

    # data (the `main` entry mines `codebase`; `train` reads `dataset`; `main` mixes a `dataset` in)
    codebase: str | None = option(None, optional_path, "codebase to mine (the main entry)")
    dataset: str | None = option(None, optional_path,
                                 "your data: a JSON Lines or Parquet file, or a saved Hugging Face dataset, with "
                                 "prompt/completion columns (or one text column); a local path, s3:// or "
                                 "models:/ URI; or a folder `prepare-data` wrote. The train entry trains on it; "
                                 "the main entry mixes it with the mined examples by dataset_ratio")
    dataset_ratio: float = option(0.5, real(0.0, 1.0),
                                  "main entry with dataset: share of the training examples taken from your "
                                  "dataset, the rest mined from the codebase (1: your data only, no mining)")
    num_examples: int = NUM_EXAMPLES.field()
    synthetic_ratio: float = SYNTHETIC_RATIO.field()
    eval_fraction: float = EVAL_FRACTION.field()
    # model and adapter
    base_model: str = BASE_MODEL.field()
    lora_r: int = option(16, whole(1, 1024), "LoRA rank")
    lora_alpha: float = option(32.0, real(0.0, lo_open=True), "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = option(0.0, real(0.0, 1.0, hi_open=True),
                                 "LoRA dropout; PEFT's default 0, as 0.05 costs ~9% speed and ~40% activation memory")
    target_modules: str = option("all-linear", modules,
                                 "modules to adapt: all-linear, or names separated by commas (q_proj,v_proj)")
    quantization: str = option("none", choice(*QUANTIZATION_CHOICES),
                               "quantize the base model: none (LoRA), 8bit or 4bit (QLoRA)")
    # scale-out (training/sharding.py): how the model is spread over the job's GPUs
    sharding: str = option("auto", choice(*SHARDING_CHOICES),
                           "shard the base weights and LoRA state over every GPU of the job (FSDP): fsdp always, "
                           "none never (a whole model copy per GPU, DDP), auto when the memory estimate says one "
                           "GPU cannot hold the unsharded run (one process: never)")
    # optimisation: effective batch 4 x 4 = 16 sequences of up to 2048 tokens per step
    learning_rate: float = option(2e-4, real(0.0, 1.0, lo_open=True), "peak learning rate")
    epochs: float = option(2.0, real(0.0), "passes over the training split (max_steps, when set, wins)")
    max_steps: int = option(0, whole(0), "optimizer steps to train; 0: as many as epochs make")
    batch_size: int = option(4, whole(1), "sequences per device per step")
    grad_accumulation: int = option(4, whole(1), "steps of gradients summed per optimizer step")
    max_seq_len: int = MAX_SEQ_LEN.field()
    seed: int = SEED.field()
    packing: bool = option(True, boolean(), "pack several examples into each sequence (faster)")
    warmup_ratio: float = option(0.03, real(0.0, 1.0, hi_open=True), "share of steps spent warming up")
    lr_scheduler: str = option("cosine", choice(*SCHEDULER_CHOICES), "learning-rate schedule")
    weight_decay: float = option(0.0, real(0.0), "AdamW weight decay")
    gradient_checkpointing: bool = option(False, boolean(),
                                          "recompute every decoder layer in backward: least memory, slowest")
    checkpoint_layers: str = option("auto", auto_or_whole,
                                    "recompute only this many decoder layers in backward, a memory/speed trade "
                                    f"in between; auto: {AUTO_CHECKPOINT_SHARE:.0%} of them with a quantized "
                                    "base (what QLoRA is for, at a few % speed), none otherwise; at submission, "
                                    "as many as needed to fit the GPU when the memory estimate says the plan does "
                                    "not fit (docs/memory-estimate.md)")
    # speed options (training/speed.py): on by default, each one a switch to turn it off
    flex_attention: bool = option(True, boolean(), "flex attention over packed sequences (GPU)")
    compile_layers: bool = option(True, boolean(), "torch.compile each decoder layer (GPU)")
    fused_loss: bool = option(True, boolean(), "fused linear cross-entropy loss (GPU, liger)")
    bf16_adapters: bool = option(True, boolean(), "LoRA adapters in bf16 where the GPU has it (fp32 costs 13%)")
    fused_lora: bool = option(False, boolean(), "one matmul for the frozen base and the LoRA A matrices of "
                              "projections that share an input (q/k/v, gate/up; GPU); measured 1.01x under "
                              "compile_layers (H100), +1.7 GB: off by default")
    fp8_base: bool = option(False, boolean(), "the frozen base's linear layers in fp8 with per-row scales "
                            "(H100/H200; off by default, see benchmarks/RESULTS.md)")
    # bookkeeping: intervals adapt to the run's length unless given (intervals() below)
    logging_steps: str = option("auto", auto_or_positive,
                                "log metrics every this many steps; auto: every step up to 100 steps, about 100 "
                                "points over a longer run; the last step is always logged")
    eval_steps: str = option("auto", auto_or_whole,
                             "evaluate (eval_loss, perplexity) every this many steps on a share of the eval split "
                             "kept small (eval stays under ~5% of the compute); auto: at each checkpoint when "
                             "save_steps is given, else about 10 times per run; 0: only before and after training")
    save_steps: str = option("auto", auto_or_positive,
                             "checkpoint every this many steps; auto: at each periodic eval (so the best one is "
                             f"kept), every {DEFAULT_SAVE_STEPS} steps without periodic eval")
    keep_checkpoints: int = option(3, whole(1), "most checkpoints kept (the best is kept besides)")
    load_best: bool = option(True, boolean(), "log and register the checkpoint with the lowest periodic eval_loss, "
                                              "not the last step's (needs periodic eval)")
    early_stopping_patience: int = option(0, whole(0), "stop after this many periodic evals without a lower "
                                                       "eval_loss (needs load_best); 0: never")
    eval_samples: int = option(32, whole(0), "eval examples generated from for exact_match; 0: none")
    max_new_tokens: int = MAX_NEW_TOKENS.field()
    registered_model_name: str = option("", registered_model_name,
                                        "register the model under this name (empty: do not)")
    merge_adapter: bool = option(False, boolean(), "merge the adapter into the base weights when logging")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainingConfig":
        """Parse and validate a mapping of parameter name -> value (strings as MLflow passes them);
        a None value means not given."""
        return from_mapping(cls, {k: v for k, v in params.items() if v is not None})

    def check_combinations(self) -> None:
        if self.max_steps == 0 and self.epochs <= 0:
            raise STYLE.bad_value("epochs", self.epochs, Invalid(
                "", detail="must be > 0 when max_steps is 0: pass e.g. epochs=2 or max_steps=500"))
        if self.early_stopping_patience > 0 and (self.eval_steps == "0" or not self.load_best):
            raise STYLE.bad_value("early_stopping_patience", self.early_stopping_patience, Invalid("", detail=(
                "needs periodic eval and load_best: leave eval_steps auto (or > 0) and load_best true")))
        if self.load_best and self.eval_steps not in ("auto", "0") and self.save_steps != "auto" \
                and int(self.save_steps) % int(self.eval_steps):
            raise STYLE.bad_value("save_steps", self.save_steps, Invalid("", detail=(
                f"must be a multiple of eval_steps={self.eval_steps} with load_best (each checkpoint must have "
                "an eval_loss): pass save_steps=auto, or load_best=false")))
        if self.sharding == "fsdp" and self.quantization != "none":
            # bitsandbytes' 8-bit weights cannot be sharded; a sharded 4-bit base fails its first forward on CPU
            # and is not measured on CUDA yet (docs/sharding.md).
            raise STYLE.bad_value("sharding", self.sharding, Invalid("", detail=(
                f"quantization={self.quantization} with sharding=fsdp is not supported: pass sharding=none (a "
                "quantized base is what lets one GPU hold the model) or quantization=none")))
        if self.eval_samples > 0 and self.max_new_tokens < 1:
            raise STYLE.bad_value("max_new_tokens", self.max_new_tokens,
                                  Invalid("an integer >= 1 when eval_samples > 0"))

    def intervals(self, total_steps: int) -> tuple[int, int, int]:
        """(logging_steps, eval_steps, save_steps) for a run of total_steps optimizer steps; eval_steps 0
        means no periodic eval. Given values win; auto ones adapt to the run's length."""
        total = max(1, total_steps)
        logging = int(self.logging_steps) if self.logging_steps != "auto" else -(-total // LOG_POINTS)
        if self.eval_steps != "auto":
            evals = int(self.eval_steps)
        elif self.save_steps != "auto":
            evals = int(self.save_steps)  # each checkpoint evaluated: what load_best chooses among
        else:
            evals = -(-total // EVALS_PER_RUN)
        save = int(self.save_steps) if self.save_steps != "auto" else (evals or DEFAULT_SAVE_STEPS)
        return logging, evals, save

    def checkpointed_layers(self, num_layers: int) -> int:
        """How many of the model's decoder layers recompute their activations in backward."""
        if self.gradient_checkpointing:
            return num_layers
        if self.checkpoint_layers == "auto":
            return round(AUTO_CHECKPOINT_SHARE * num_layers) if self.quantization != "none" else 0
        return min(int(self.checkpoint_layers), num_layers)

    @property
    def target_module_list(self) -> str | list[str]:
        """What peft's LoraConfig takes: the string "all-linear" or a list of module names."""
        return "all-linear" if self.target_modules == "all-linear" else self.target_modules.split(",")

    def to_params(self) -> dict[str, str]:
        """Resolved config as MLflow params (strings)."""
        return {k: "" if v is None else str(v) for k, v in asdict(self).items()}


@options_class
@dataclass
class EvaluateConfig:
    """The `evaluate` entry's options: a logged or registered model scored on a prepared dataset."""

    OPTIONS_STYLE: ClassVar[Style] = STYLE

    model_uri: str | None = option(None, optional_path, "model to score: runs:/<id>/model or models:/<name>/<n>")
    dataset: str | None = option(None, optional_path, "prepared dataset folder (its eval split is used)")
    max_new_tokens: int = MAX_NEW_TOKENS.field()
    num_samples: int = option(50, whole(1), "eval examples to score")
    max_seq_len: int = MAX_SEQ_LEN.field()

    def check_combinations(self) -> None:
        if not self.model_uri or not self.dataset:
            raise STYLE.bad_value("model_uri", self.model_uri, Invalid("", detail=(
                "evaluate needs --model_uri (runs:/<id>/model or models:/<name>/<n>) and --dataset")))
