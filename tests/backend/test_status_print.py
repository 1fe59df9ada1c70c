"""`ade-mlflow status` prints why a stopped job stopped: the last SecondaryStatusTransitions entry's message
(SageMaker's field; local jobs write it too: "Training job stopped: spot_interrupted: ...")."""
from __future__ import annotations

import click
from click.testing import CliRunner

from ade_mlflow_plugin.backend.commands import _print_job


def _printed(description: dict) -> list[str]:
    @click.command()
    def show() -> None:
        _print_job(description)

    return CliRunner().invoke(show, []).output.splitlines()


def _job(status: str, secondary: str, message: str | None) -> dict:
    transitions = [{"Status": "Training", "StatusMessage": "Training image download completed."}]
    if message is not None:
        transitions.append({"Status": secondary, "StatusMessage": message})
    return {"TrainingJobName": "ade-job-1", "TrainingJobStatus": status, "SecondaryStatus": secondary,
            "SecondaryStatusTransitions": transitions}


def test_a_stopped_job_says_why_on_one_line():
    lines = _printed(_job("Stopped", "Interrupted", "Training job stopped: spot_interrupted: the spot instance "
                                                    "was reclaimed\n(detail on a second line)"))
    assert "status:    Stopped (Interrupted) -> MLflow KILLED" in lines
    assert "stopped:   Training job stopped: spot_interrupted: the spot instance was reclaimed" in lines


def test_other_states_and_a_stop_without_a_message_print_no_reason():
    assert not [line for line in _printed(_job("Completed", "Completed", "Training job completed"))
                if line.startswith("stopped:")]
    assert not [line for line in _printed(_job("Stopped", "Stopped", None)) if line.startswith("stopped:")]
