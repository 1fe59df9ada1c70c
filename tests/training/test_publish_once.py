"""A job restarted after it registered its model (H10 finding 20) finds the version its run registered and
adds no second one."""
from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from ade_mlflow_plugin.training.pipeline import registered_version


def test_a_run_registers_its_model_once(sqlite_tracking):
    client = MlflowClient()
    run = client.create_run(client.create_experiment("publish-once")).info.run_id
    other = client.create_run(client.get_experiment_by_name("publish-once").experiment_id).info.run_id
    assert registered_version(client, "coder", run) is None
    client.create_registered_model("coder")
    client.create_model_version("coder", f"runs:/{other}/model", run_id=other)  # version 1: another run's
    client.create_model_version("coder", f"runs:/{run}/model", run_id=run)  # version 2: this run's
    client.create_registered_model("other-name")
    client.create_model_version("other-name", f"runs:/{run}/model", run_id=run)
    assert registered_version(client, "coder", run) == "2"
    assert registered_version(client, "other-name", run) == "1"
    assert registered_version(client, "coder", None) is None
    assert mlflow.get_tracking_uri() == sqlite_tracking
