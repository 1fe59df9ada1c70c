"""Re-export shim (issue 15): TrainingConfig now lives in the core, ade_mlflow_plugin/config/training.py.

Kept while other modules still import from here; import from ade_mlflow_plugin.config instead.
"""
from ade_mlflow_plugin.config.training import (AUTO_CHECKPOINT_SHARE, DEFAULT_BASE_MODEL, QUANTIZATION_CHOICES,
                                               SCHEDULER_CHOICES, EvaluateConfig, TrainingConfig, auto_or_whole,
                                               modules, optional_path)
from ade_mlflow_plugin.options import boolean, choice, real, text, whole

__all__ = ["TrainingConfig", "EvaluateConfig", "DEFAULT_BASE_MODEL", "QUANTIZATION_CHOICES", "SCHEDULER_CHOICES",
           "AUTO_CHECKPOINT_SHARE", "auto_or_whole", "modules", "optional_path", "boolean", "choice", "real",
           "text", "whole"]
