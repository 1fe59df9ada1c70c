"""`ade-mlflow sync-run`: a job's relay replayed into its run, once, however often it runs."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from ade_mlflow_plugin.backend.replay import local_relay_dir, replay
from ade_mlflow_plugin.backend.sync_run import sync_run_command
from ade_mlflow_plugin.job import relay as job_relay


def _local_run(client: mlflow.MlflowClient, job_root: Path) -> str:
    """A run as the backend leaves it for a local-mode job (RUNNING, tagged with its job and log)."""
    experiment = client.get_experiment_by_name("Default").experiment_id
    run_id = client.create_run(experiment).info.run_id
    for key, value in {"sagemaker.job_name": "ade-job-1", "sagemaker.mode": "local",
                       "ade.local_log": str(job_root / "job.log")}.items():
        client.set_tag(run_id, key, value)
    return run_id


def _write_relay(job_root: Path, steps: int = 4, end: bool = True) -> job_relay.Relay:
    """What a job that never reached MLflow leaves: params, metrics, tags, a file, a model, a registration."""
    relay = job_relay.Relay(local_relay_dir(job_root).parent)
    relay.append(job_relay.PARAMS, params={"lora_r": "8", "max_steps": str(steps)})
    for step in range(1, steps + 1):
        relay.metrics([{"key": "train_loss", "value": 1.0 / step, "timestamp": 1000 + step, "step": step}])
    relay.metrics([{"key": "eval_loss", "value": 0.5, "timestamp": 2000, "step": steps}])
    relay.append(job_relay.TAGS, tags={"ade.base_model": "tiny"})
    notes = job_root / "notes.txt"
    notes.write_text("hello\n")
    relay.add_files(job_relay.ARTIFACTS, notes, artifact_path="extra")
    model = job_root / "model"
    model.mkdir()
    (model / "MLmodel").write_text("artifact_path: model\nflavors: {}\n")
    (model / "weights.bin").write_bytes(b"\0" * 16)
    relay.add_files(job_relay.MODEL, model, name="model")
    relay.append(job_relay.REGISTER, name="relay-coder", model="model", tags={"ade.base_model": "tiny"})
    if end:
        relay.append(job_relay.END, status="FINISHED")
    return relay


def _state(client: mlflow.MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    return {"status": run.info.status, "end": run.info.end_time, "params": run.data.params, "tags": run.data.tags,
            "train_loss": sorted(m.step for m in client.get_metric_history(run_id, "train_loss")),
            "eval_loss": [m.step for m in client.get_metric_history(run_id, "eval_loss")],
            "artifacts": [a.path for a in client.list_artifacts(run_id, "extra")],
            "models": [m.model_id for m in client.search_logged_models([run.info.experiment_id])],
            "versions": [str(v.version) for v in client.search_model_versions("name = 'relay-coder'")]}


def test_sync_run_replays_everything_once(sqlite_tracking, tmp_path):
    client = mlflow.MlflowClient()
    job_root = tmp_path / "jobs" / "ade-job-1"
    job_root.mkdir(parents=True)
    run_id = _local_run(client, job_root)
    client.log_metric(run_id, "train_loss", 1.0, step=1)  # what reached the run before the server went away
    _write_relay(job_root)

    first = CliRunner().invoke(sync_run_command, [run_id], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    # train_loss 2-4 and eval_loss 4: step 1 is in the run already
    assert "4 metric steps" in first.output and "registered version 1" in first.output
    state = _state(client, run_id)
    assert state["status"] == "FINISHED" and state["train_loss"] == [1, 2, 3, 4] and state["eval_loss"] == [4]
    assert state["params"] == {"lora_r": "8", "max_steps": "4"} and state["tags"]["ade.base_model"] == "tiny"
    assert state["artifacts"] == ["extra/notes.txt"] and len(state["models"]) == 1 and state["versions"] == ["1"]
    version = client.get_model_version("relay-coder", "1")
    assert version.run_id == run_id and version.source == f"models:/{state['models'][0]}"
    downloaded = Path(mlflow.artifacts.download_artifacts("models:/relay-coder/1", dst_path=str(tmp_path / "dl")))
    assert (downloaded / "weights.bin").read_bytes() == b"\0" * 16
    assert version.tags["ade.base_model"] == "tiny"

    second = CliRunner().invoke(sync_run_command, [run_id], catch_exceptions=False)
    assert second.exit_code == 0 and "nothing new" in second.output, second.output
    assert _state(client, run_id) == state


def test_a_relay_cut_short_replays_what_is_complete(sqlite_tracking, tmp_path):
    client = mlflow.MlflowClient()
    job_root = tmp_path / "job"
    job_root.mkdir()
    run_id = _local_run(client, job_root)
    relay = job_relay.Relay(local_relay_dir(job_root).parent)
    relay.metrics([{"key": "train_loss", "value": 2.0, "timestamp": 1, "step": 1}])
    with open(relay.records, "a", encoding="utf-8") as handle:  # the crash, mid-line
        handle.write(json.dumps({"seq": 2, "kind": "metrics", "metrics": [{"key": "train_loss"}]})[:30])
    summary = replay(client, run_id, relay.dir, end_status="FAILED")
    assert summary.metrics == 1 and summary.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1]
    assert client.get_run(run_id).info.status == "FAILED"


def test_a_job_without_relay_has_nothing_to_replay(sqlite_tracking, tmp_path):
    client = mlflow.MlflowClient()
    run_id = _local_run(client, tmp_path)
    result = CliRunner().invoke(sync_run_command, [run_id], catch_exceptions=False)
    assert result.exit_code == 0 and "nothing to replay" in result.output
    assert client.get_run(run_id).info.status == "RUNNING"


def test_a_run_not_from_this_backend_is_one_config_error(sqlite_tracking):
    from ade_mlflow_plugin.errors import ConfigError

    client = mlflow.MlflowClient()
    run_id = client.create_run(client.get_experiment_by_name("Default").experiment_id).info.run_id
    with pytest.raises(ConfigError, match="sagemaker.job_name"):
        CliRunner().invoke(sync_run_command, [run_id], catch_exceptions=False)


def test_the_follower_replays_the_relay_when_the_job_ends(sqlite_tracking, tmp_path):
    """A followed local job that wrote a relay: the run gets it before it is ended with the job's status."""
    import io

    from ade_mlflow_plugin.backend.local import STATE_FILE, JobRoot
    from ade_mlflow_plugin.backend.submitted_run import JobFollower

    client = mlflow.MlflowClient()
    job_root = tmp_path / "jobs" / "ade-job-1"
    job_root.mkdir(parents=True)
    run_id = _local_run(client, job_root)
    _write_relay(job_root, end=False)
    (job_root / STATE_FILE).write_text(json.dumps({"TrainingJobName": "ade-job-1", "TrainingJobStatus": "Completed",
                                                   "SecondaryStatus": "Completed"}))
    console = io.StringIO()
    JobFollower(JobRoot(job_root), run_id, client, console=console, sleep=lambda s: None).follow()
    assert "registered version 1" in console.getvalue(), console.getvalue()
    state = _state(client, run_id)
    assert state["status"] == "FINISHED" and state["train_loss"] == [1, 2, 3, 4] and state["versions"] == ["1"]


def test_sync_run_by_job_name_replays_the_relay_in_the_sagemaker_output(aws, tracking_uri, tmp_path):
    """SageMaker uploads /opt/ml/output/data as <output>/<job>/output/output.tar.gz: the relay comes from there,
    and the run ends with the job's status (moto's job is Completed)."""
    import tarfile

    import boto3

    from tests.conftest import submit_to_moto

    submitted, described = submit_to_moto("ade-relay-out", tracking_uri)
    data = tmp_path / "opt-ml-output-data"
    relay = job_relay.Relay(data)
    relay.metrics([{"key": "train_loss", "value": 1.0 / step, "timestamp": step, "step": step} for step in (1, 2)])
    relay.append(job_relay.END, status="FINISHED")
    archive = tmp_path / "output.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data / job_relay.RELAY_DIR, arcname=job_relay.RELAY_DIR)
    output = described["OutputDataConfig"]["S3OutputPath"]
    bucket, _, prefix = output[5:].partition("/")
    boto3.client("s3").upload_file(str(archive), bucket, f"{prefix}/{submitted.job_name}/output/output.tar.gz")

    for _ in range(2):
        result = CliRunner().invoke(sync_run_command, [submitted.job_name, "--region", "us-east-1"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert "nothing new" in result.output
    client = mlflow.MlflowClient()
    assert client.get_run(submitted.run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(submitted.run_id, "train_loss")) == [1, 2]


def test_a_model_logged_before_the_server_left_is_registered_at_replay(sqlite_tracking, tmp_path):
    """The job logged its model, then lost the server before registering: the relay names the logged model."""
    client = mlflow.MlflowClient()
    run_id = _local_run(client, tmp_path)
    experiment = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment, name="model", source_run_id=run_id)
    client.finalize_logged_model(model.model_id, "READY")
    relay = job_relay.Relay(local_relay_dir(tmp_path).parent)
    relay.append(job_relay.REGISTER, name="late-coder", model_id=model.model_id, tags={"k": "v"})
    assert replay(client, run_id, relay.dir).versions == ["1"]
    assert replay(client, run_id, relay.dir).versions == []
    version = client.get_model_version("late-coder", "1")
    assert version.source == f"models:/{model.model_id}" and version.run_id == run_id and version.tags == {"k": "v"}


def test_a_local_job_that_failed_ends_its_run_failed_whatever_the_relay_says(sqlite_tracking, tmp_path):
    from ade_mlflow_plugin.backend.local import STATE_FILE

    client = mlflow.MlflowClient()
    job_root = tmp_path / "jobs" / "ade-job-1"
    job_root.mkdir(parents=True)
    run_id = _local_run(client, job_root)
    _write_relay(job_root)  # the entry finished; the job did not (say, its model upload failed)
    (job_root / STATE_FILE).write_text(json.dumps({"TrainingJobName": "ade-job-1", "TrainingJobStatus": "Failed",
                                                   "SecondaryStatus": "Failed"}))
    result = CliRunner().invoke(sync_run_command, [run_id], catch_exceptions=False)
    assert "run ended FAILED" in result.output, result.output
    assert client.get_run(run_id).info.status == "FAILED"


def test_sync_run_by_local_job_name(sqlite_tracking, tmp_path):
    from ade_mlflow_plugin.backend.local import STATE_FILE
    from ade_mlflow_plugin.job import contract

    client = mlflow.MlflowClient()
    job_root = tmp_path / "ade" / "jobs" / "ade-job-1"
    job_root.mkdir(parents=True)
    run_id = _local_run(client, job_root)
    _write_relay(job_root)
    (job_root / STATE_FILE).write_text(json.dumps({
        "TrainingJobName": "ade-job-1", "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
        "Environment": {contract.ENV_RUN_ID: run_id}}))
    result = CliRunner().invoke(sync_run_command, ["ade-job-1", "--job-root", str(tmp_path / "ade")],
                                catch_exceptions=False)
    assert "registered version 1" in result.output, result.output
    assert client.get_run(run_id).info.status == "FINISHED"


def test_records_of_a_kind_this_client_does_not_know_are_named_not_dropped_silently(sqlite_tracking, tmp_path):
    client = mlflow.MlflowClient()
    job_root = tmp_path / "jobs" / "ade-job-1"
    job_root.mkdir(parents=True)
    run_id = _local_run(client, job_root)
    relay = job_relay.Relay(local_relay_dir(job_root).parent)
    relay.append("hologram", payload={"x": 1})  # a kind from a newer job
    relay.append(job_relay.END, status="FINISHED")
    summary = replay(client, run_id, relay.dir)
    assert summary.skipped_kinds == {"hologram"} and summary.status == "FINISHED"
    assert summary.line().endswith("skipped records of unknown kind hologram (written by a newer job: upgrade "
                                   "ade-mlflow-plugin and run sync-run again)")
