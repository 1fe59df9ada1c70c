"""The configuration objects, all built on the options kit (ade_mlflow_plugin/options.py).

- :class:`CloudTrainingConfig` (cloud.py): `--backend-config`, where and how the job runs;
- :class:`TrainingConfig` (training.py): the training entries' parameters, checked by the backend too;
- :class:`ModelRegistryConfig` (registry.py): ADE storage and the registry side;
- :class:`DatasetConfig` (dataset.py): mining a codebase into a dataset.

Part of the core: no torch, and mlflow only once an error is raised (errors.py).
"""
from ade_mlflow_plugin.config.cloud import MAX_RUNTIME_LIMIT_S, MLFLOW_KEYS, CloudTrainingConfig, read_backend_config
from ade_mlflow_plugin.config.dataset import DatasetConfig
from ade_mlflow_plugin.config.registry import ModelRegistryConfig
from ade_mlflow_plugin.config.training import EvaluateConfig, TrainingConfig

__all__ = ["CloudTrainingConfig", "TrainingConfig", "EvaluateConfig", "ModelRegistryConfig", "DatasetConfig",
           "MLFLOW_KEYS", "MAX_RUNTIME_LIMIT_S", "read_backend_config"]
