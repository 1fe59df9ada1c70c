"""Temporary alias: the job package is ade_mlflow_plugin.job (issue 15).

Kept only until training/modelio.py imports ade_mlflow_plugin.job.contract; then delete this package.
"""
