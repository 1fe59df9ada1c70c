"""DatasetConfig: the options of mining a codebase into a dataset (`prepare_data` entry, `ade-mlflow
prepare-data`, `build_dataset`). The options it shares with training are TrainingConfig's own
declarations (config/training.py), so both read and check them the same way."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ade_mlflow_plugin.config.training import (EVAL_FRACTION, NUM_EXAMPLES, SEED, STYLE, SYNTHETIC_RATIO,
                                               optional_path)
from ade_mlflow_plugin.options import Option, Style, option, options_class, whole

MAX_TOKENS = Option(2048, whole(16), "examples longer than this many tokens (prompt + completion) are dropped")


@options_class
@dataclass
class DatasetConfig:
    """How many examples of which kind a codebase is mined into."""

    OPTIONS_STYLE: ClassVar[Style] = STYLE

    num_examples: int = NUM_EXAMPLES.field()
    synthetic_ratio: float = SYNTHETIC_RATIO.field()
    eval_fraction: float = EVAL_FRACTION.field()
    seed: int = SEED.field()
    max_tokens: int = MAX_TOKENS.field()
    base_model: str | None = option(None, optional_path, "base model folder or hub name whose tokenizer is "
                                    "used: its chat template, FIM tokens and token counts")
