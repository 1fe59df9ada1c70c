"""Temporary alias of ade_mlflow_plugin.job.contract (see ade_mlflow_plugin/container/__init__.py)."""
from ade_mlflow_plugin.job.contract import *  # noqa: F401,F403
from ade_mlflow_plugin.job.contract import DEFAULT_BASE, ContainerPaths  # noqa: F401
