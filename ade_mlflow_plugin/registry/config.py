"""Re-export shim (issue 15): ModelRegistryConfig now lives in the core, ade_mlflow_plugin/config/registry.py.

Kept while other modules still import from here; import from ade_mlflow_plugin.config instead.
"""
from ade_mlflow_plugin.config.registry import (DEFAULT_ROOT, PRESIGNED_FETCH_ENV, ROOT_ENV, ModelRegistryConfig,
                                               default_presigned_fetch, default_root)

__all__ = ["ModelRegistryConfig", "DEFAULT_ROOT", "ROOT_ENV", "PRESIGNED_FETCH_ENV", "default_root",
           "default_presigned_fetch"]
