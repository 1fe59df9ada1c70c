"""TrainingConfig: the training parameters of the MLproject entries, parsed and validated.

MLflow hands every parameter over as a string and `float`-typed MLproject params arrive as "16" or
"16.0", so whole-number fields accept both. Every bad value raises ConfigError naming the parameter,
the value and what to pass instead. This module imports no torch (config.py re-exports it).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

from ade_mlflow_plugin.errors import ConfigError

DEFAULT_BASE_MODEL = "deepseek-ai/deepseek-coder-1.3b-instruct"
QUANTIZATION_CHOICES = ("none", "8bit", "4bit")
SCHEDULER_CHOICES = ("cosine", "linear", "constant_with_warmup")
# Share of decoder layers a quantized (QLoRA) run checkpoints by default: on an H200 with the 1.3b model,
# batch 16, it brought peak memory from 0.97x to under 0.8x of LoRA's at ~7% speed (benchmarks/RESULTS.md).
AUTO_CHECKPOINT_SHARE = 0.6


def _bad(name: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"parameter '{name}': got {value!r}, expected {expected}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _bad(name, value, "a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _bad(name, value, "a number") from None
    if not math.isfinite(number):
        raise _bad(name, value, "a finite number")
    return number


def whole(lo: int, hi: int | None = None) -> Callable[[str, Any], int]:
    """A whole number in [lo, hi]; "16" and "16.0" both parse (MLflow float params)."""

    def parse(name: str, value: Any) -> int:
        number = _number(name, value)
        span = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        if number != int(number) or number < lo or (hi is not None and number > hi):
            raise _bad(name, value, f"a whole number {span}")
        return int(number)

    return parse


def real(lo: float, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
         ) -> Callable[[str, Any], float]:
    """A real number in the given interval."""

    def parse(name: str, value: Any) -> float:
        number = _number(name, value)
        too_low = number <= lo if lo_open else number < lo
        too_high = hi is not None and (number >= hi if hi_open else number > hi)
        if too_low or too_high:
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            span = f"in {left}{lo}, {hi}{right}" if hi is not None else f"{'>' if lo_open else '>='} {lo}"
            raise _bad(name, value, f"a number {span}")
        return number

    return parse


def boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.strip().lower() in {"true", "1", "yes"}
    raise _bad(name, value, "true or false")


def auto_or_whole(name: str, value: Any) -> str:
    """"auto" or a whole number >= 0, kept as text so that the MLflow param reads as the user wrote it."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return str(whole(0)(name, value))
    except ConfigError:
        raise _bad(name, value, "auto or a whole number >= 0") from None


def choice(*options: str) -> Callable[[str, Any], str]:
    def parse(name: str, value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise _bad(name, value, " or ".join(options))
        return text

    return parse


def text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(name, value, "a string")
    return value.strip()


def required_text(name: str, value: Any) -> str:
    parsed = text(name, value)
    if not parsed:
        raise _bad(name, value, "a non-empty string")
    return parsed


def modules(name: str, value: Any) -> str:
    """`all-linear` or a comma-separated list of module names such as `q_proj,v_proj`."""
    parsed = required_text(name, value)
    if parsed.lower() == "all-linear":
        return "all-linear"
    parts = [p.strip() for p in parsed.split(",")]
    if any(not p or not p.replace("_", "").replace(".", "").isalnum() for p in parts):
        raise _bad(name, value, "all-linear or module names separated by commas, e.g. q_proj,v_proj")
    return ",".join(parts)


def optional_path(name: str, value: Any) -> str | None:
    if value is None:
        return None
    parsed = text(name, value)
    return parsed or None


@dataclass
class TrainingConfig:
    """What one training job does. Defaults suit deepseek-coder-1.3b with LoRA on one 24 GB GPU (A10G/L4)."""

    # data (the `main` entry mines `codebase`; `train` reads a prepared `dataset`)
    codebase: str | None = None
    dataset: str | None = None
    num_examples: int = 1000
    synthetic_ratio: float = 0.3
    eval_fraction: float = 0.1
    # model and adapter
    base_model: str = DEFAULT_BASE_MODEL
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0  # PEFT's default; 0.05 costs ~9% speed and ~40% activation memory
    target_modules: str = "all-linear"
    quantization: str = "none"
    # optimisation: effective batch 4 x 4 = 16 sequences of up to 2048 tokens per step
    learning_rate: float = 2e-4
    epochs: float = 2.0
    max_steps: int = 0
    batch_size: int = 4
    grad_accumulation: int = 4
    max_seq_len: int = 2048
    seed: int = 42
    packing: bool = True
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False  # recompute every decoder layer in backward: least memory, slowest
    # recompute only this many decoder layers in backward, a memory/speed trade in between; auto: 60% of them
    # with a quantized base (what QLoRA is for, at a few % speed), none otherwise
    checkpoint_layers: str = "auto"
    # speed options (training/speed.py): on by default, each one a switch to turn it off
    flex_attention: bool = True
    compile_layers: bool = True
    fused_loss: bool = True
    bf16_adapters: bool = True
    # bookkeeping
    logging_steps: int = 10
    save_steps: int = 100
    keep_checkpoints: int = 3
    eval_samples: int = 32
    max_new_tokens: int = 64
    registered_model_name: str = ""
    merge_adapter: bool = False

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainingConfig":
        """Parse and validate a mapping of parameter name -> value (strings as MLflow passes them)."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in params.items():
            if name not in known:
                hint = difflib.get_close_matches(name, sorted(known), n=1)
                fix = f"did you mean '{hint[0]}'?" if hint else f"known: {', '.join(sorted(known))}"
                raise ConfigError(f"unknown training parameter '{name}' ({fix})")
            if value is None:
                continue
            values[name] = PARSERS[name](name, value)
        config = cls(**values)
        config._check_combinations()
        return config

    def _check_combinations(self) -> None:
        if self.max_steps == 0 and self.epochs <= 0:
            raise ConfigError("parameter 'epochs' must be > 0 when max_steps is 0: pass e.g. epochs=2 or max_steps=500")
        if self.eval_samples > 0 and self.max_new_tokens < 1:
            raise _bad("max_new_tokens", self.max_new_tokens, "a whole number >= 1 when eval_samples > 0")

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


PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "codebase": optional_path,
    "dataset": optional_path,
    "num_examples": whole(1),
    "synthetic_ratio": real(0.0, 1.0),
    "eval_fraction": real(0.0, 1.0, hi_open=True),
    "base_model": required_text,
    "lora_r": whole(1, 1024),
    "lora_alpha": real(0.0, lo_open=True),
    "lora_dropout": real(0.0, 1.0, hi_open=True),
    "target_modules": modules,
    "quantization": choice(*QUANTIZATION_CHOICES),
    "learning_rate": real(0.0, 1.0, lo_open=True),
    "epochs": real(0.0),
    "max_steps": whole(0),
    "batch_size": whole(1),
    "grad_accumulation": whole(1),
    "max_seq_len": whole(16),
    "seed": whole(0, 2**32 - 1),
    "packing": boolean,
    "warmup_ratio": real(0.0, 1.0, hi_open=True),
    "lr_scheduler": choice(*SCHEDULER_CHOICES),
    "weight_decay": real(0.0),
    "gradient_checkpointing": boolean,
    "checkpoint_layers": auto_or_whole,
    "flex_attention": boolean,
    "compile_layers": boolean,
    "fused_loss": boolean,
    "bf16_adapters": boolean,
    "logging_steps": whole(1),
    "save_steps": whole(1),
    "keep_checkpoints": whole(1),
    "eval_samples": whole(0),
    "max_new_tokens": whole(0),
    "registered_model_name": text,
    "merge_adapter": boolean,
}
