"""The backend tells the rest "this job completed" through the ``ade_job_completed`` hook (hooks.py) and
imports no other wing: the registry's built-in ``ade-output-dir`` plugin lands the model (tests/registry/
test_landing.py), and any installed plugin hears the same call. Real sqlite MLflow store, local-mode config."""
from __future__ import annotations

import io
from pathlib import Path

import mlflow
import pytest

from ade_mlflow_plugin import hookimpl
from ade_mlflow_plugin.backend.monitor import build_observers
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.hooks import BUILTIN_LANDING_NAME, get_plugin_manager, register_plugin


class Listener:
    def __init__(self, answer: str | None = "notified the team", fail: bool = False) -> None:
        self.calls: list[dict] = []
        self.answer, self.fail = answer, fail

    @hookimpl
    def ade_job_completed(self, run_id: str, job_name: str, tracking_uri: str, output_dir: Path | None) -> str | None:
        self.calls.append({"run_id": run_id, "job_name": job_name, "tracking_uri": tracking_uri,
                           "output_dir": output_dir})
        if self.fail:
            raise RuntimeError("the chat service is down")
        return self.answer


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """One sqlite store for the module (making one costs seconds); these runs log no artifacts."""
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path_factory.mktemp('hook')}/mlflow.db")


def _observers(client, listener: Listener | None, backend_config: dict) -> tuple[list, str, io.StringIO]:
    pm = get_plugin_manager(builtin_sync=False, builtin_landing=True, load_entry_points=False)
    if listener is not None:
        register_plugin(pm, listener, "listener")
    run_id = client.create_run("0").info.run_id
    console = io.StringIO()
    config = CloudTrainingConfig.from_backend_config({"mode": "local", **backend_config})
    observers = build_observers(config=config, clients=None, mlflow_client=client, run_id=run_id, job=None,
                                console=console, plugin_manager=pm)
    return observers, run_id, console


def _end(observers: list, status: str) -> None:
    for observer in observers:
        observer.on_end({"TrainingJobStatus": status, "TrainingJobName": "ade-job-1"})


def test_a_plugin_hears_a_completed_job_once_and_its_line_is_printed(client):
    listener = Listener()
    observers, run_id, console = _observers(client, listener, {})
    assert observers, "an installed listener gets a job-end observer even without an output_dir"
    _end(observers, "Failed")
    _end(observers, "Stopped")
    assert listener.calls == []  # failed and stopped jobs are not "completed"
    _end(observers, "Completed")
    assert listener.calls == [{"run_id": run_id, "job_name": "ade-job-1", "tracking_uri": client.tracking_uri,
                               "output_dir": None}]
    assert "ade-job-1: notified the team\n" in console.getvalue()


def test_the_output_dir_reaches_plugins_and_the_builtin_lands_nothing_for_a_bare_run(client, tmp_path):
    listener = Listener(answer=None)
    out = tmp_path / "out"
    observers, run_id, console = _observers(client, listener, {"output_dir": str(out)})
    assert client.get_run(run_id).data.tags["ade.output_dir"] == str(out.resolve())
    _end(observers, "Completed")
    assert listener.calls[0]["output_dir"] == out.resolve()
    # the built-in ade-output-dir plugin answered too: this run registered no model version
    assert f"ade-job-1: output_dir {out.resolve()}: the run registered no model version to land" in console.getvalue()


def test_a_failing_plugin_is_one_warning_and_the_follower_goes_on(client):
    observers, _, console = _observers(client, Listener(fail=True), {})
    _end(observers, "Completed")
    text = console.getvalue()
    assert "WARNING" in text and "the chat service is down" in text and "Traceback" not in text


def test_the_builtin_alone_without_an_output_dir_adds_no_observer(client):
    pm = get_plugin_manager(builtin_sync=False, builtin_landing=True, load_entry_points=False)
    assert [i.plugin_name for i in pm.hook.ade_job_completed.get_hookimpls()] == [BUILTIN_LANDING_NAME]
    assert _observers(client, None, {})[0] == []
