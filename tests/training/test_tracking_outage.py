"""The tracking server stopped for 20 s mid-run: training goes on, the job finishes and every step's
train_loss reaches the run once the server is back."""
from __future__ import annotations

import threading
import time

import pytest
from mlflow import MlflowClient

from ade_mlflow_plugin.training.tracking import MetricLogger
from tests.training.conftest import FAST_ARGS, Entry, entry_env, new_run

STEPS = 10
OUTAGE_S = 20


@pytest.mark.slow
def test_server_down_20s_mid_run_loses_no_metric(tiny_model, prepared_dataset, own_mlflow_server, tmp_path):
    run_id = new_run(own_mlflow_server.uri, "training-outage")
    entry = Entry("train.py", ["--dataset", str(prepared_dataset), "--base_model", str(tiny_model),
                               "--max_steps", str(STEPS), "--save_steps", "100", "--registered_model_name", "",
                               *FAST_ARGS],
                  entry_env(own_mlflow_server.uri, run_id, tmp_path / "ckpt"))
    deadline = time.monotonic() + 120
    while entry.logged_steps() < 1 and entry.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    own_mlflow_server.stop()
    down_at = time.monotonic()
    # Training goes on while the server is down (no step waits for logging).
    while time.monotonic() - down_at < OUTAGE_S:
        assert entry.proc.poll() is None, entry.output[-3000:]
        time.sleep(0.5)
    steps_while_down = entry.logged_steps()
    own_mlflow_server.start()
    assert entry.wait(timeout=180) == 0, entry.output[-3000:]
    assert steps_while_down >= 2  # steps went on while the server was down

    client = MlflowClient(own_mlflow_server.uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == list(range(1, STEPS + 1))
    assert {m.step for m in client.get_metric_history(run_id, "eval_loss")} == {0, STEPS}
    assert "tracking server unreachable" in entry.output


class _FlakyClient:
    """A client whose first calls fail like a refused connection; it answers nothing until ``answer`` is set."""

    def __init__(self, failures: int) -> None:
        self.failures, self.batches = failures, []
        self.answer = threading.Event()

    def log_batch(self, run_id, metrics, synchronous=True):
        self.answer.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("refused")
        self.batches.append(list(metrics))


def test_logger_keeps_batches_until_sent_and_skips_logged_steps():
    client = _FlakyClient(failures=2)
    metric_logger = MetricLogger(client, "run", logged_steps={"train_loss": 3})
    for step in range(1, 6):
        metric_logger.log({"train_loss": float(step), "epoch": step / 10}, step=step)
    # Every log() returned while the server had not answered once: logging never waits for it.
    assert client.batches == [] and not client.answer.is_set()
    client.answer.set()
    assert metric_logger.close(timeout=30)
    sent = [m for batch in client.batches for m in batch]
    assert sorted(m.step for m in sent if m.key == "train_loss") == [4, 5]
    assert sorted(m.step for m in sent if m.key == "epoch") == [1, 2, 3, 4, 5]
    assert metric_logger.failures == 2


class _RejectingClient(_FlakyClient):
    """Rejects the first batch as the server does a bad value (HTTP 400), then accepts."""

    def log_batch(self, run_id, metrics, synchronous=True):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        if self.failures:
            self.failures -= 1
            raise MlflowException("bad metric", error_code=INVALID_PARAMETER_VALUE)
        self.batches.append(list(metrics))


def test_rejected_batch_is_dropped_not_retried_forever():
    client = _RejectingClient(failures=1)
    metric_logger = MetricLogger(client, "run")
    metric_logger.log({"train_loss": 1.0}, step=1)
    assert metric_logger.flush(timeout=10)
    metric_logger.log({"train_loss": 2.0}, step=2)
    assert metric_logger.close(timeout=10)
    assert [m.step for batch in client.batches for m in batch] == [2]


class _DownClient:
    """A tracking server that never answers."""

    def __init__(self) -> None:
        self.calls = 0

    def log_batch(self, run_id, metrics, synchronous=True):
        self.calls += 1
        raise ConnectionError("refused")


def test_logger_gives_up_on_the_server_into_the_relay_and_keeps_relaying(tmp_path):
    from ade_mlflow_plugin.job.relay import METRICS, Relay, read_records

    client, relay = _DownClient(), Relay(tmp_path)
    metric_logger = MetricLogger(client, "run", retry_for_s=0.0, relay=relay)
    metric_logger.log({"train_loss": 1.0}, step=1)
    assert metric_logger.flush(timeout=30)
    calls = client.calls
    metric_logger.log({"train_loss": 0.5}, step=2)
    assert metric_logger.close(timeout=30)
    assert client.calls == calls  # once given up on, the server is not asked again for every batch
    relayed = [m for r in read_records(relay.dir) if r["kind"] == METRICS for m in r["metrics"]]
    assert [(m["key"], m["step"], m["value"]) for m in relayed] == [("train_loss", 1, 1.0), ("train_loss", 2, 0.5)]


def test_metrics_still_queued_at_exit_go_to_the_relay(tmp_path):
    from ade_mlflow_plugin.job.relay import Relay, read_records

    relay = Relay(tmp_path)
    metric_logger = MetricLogger(_DownClient(), "run", retry_for_s=3600, relay=relay)
    for step in (1, 2, 3):
        metric_logger.log({"train_loss": float(step)}, step=step)
    assert metric_logger.close(timeout=0.5)
    assert sorted(m["step"] for r in read_records(relay.dir) for m in r["metrics"]) == [1, 2, 3]


def test_relay_logger_writes_each_step_once(tmp_path):
    from ade_mlflow_plugin.job.relay import Relay, read_records
    from ade_mlflow_plugin.training.tracking import RelayLogger

    relay = Relay(tmp_path)
    sink = RelayLogger(relay)
    sink.log({"train_loss": 1.0, "epoch": None}, step=1)
    sink.log({"train_loss": 1.0}, step=1)
    sink.log({"train_loss": 0.9}, step=2)
    steps = [m["step"] for r in read_records(relay.dir) for m in r["metrics"]]
    assert steps == [1, 2] and sink.close()


@pytest.mark.slow
def test_job_without_a_server_relays_and_sync_run_replays_it_once(tiny_model, prepared_dataset, own_mlflow_server,
                                                                  tmp_path, monkeypatch):
    """Issue 16's Done-when: a local job submitted with "wait": false, the server down for the whole job;
    `ade-mlflow sync-run RUN_ID` afterwards leaves the run FINISHED with everything, and again changes nothing."""
    import io

    from click.testing import CliRunner

    from ade_mlflow_plugin.backend import local
    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend
    from ade_mlflow_plugin.backend.sync_run import sync_run_command
    from tests.conftest import REPO_ROOT

    monkeypatch.setenv("MLFLOW_TRACKING_URI", own_mlflow_server.uri)  # the backend's and sync-run's client
    held: list[tuple] = []
    start_detached = local.start_detached

    def hold(request, root, clients=None):  # noqa: ANN001, ANN202
        held.append((request, root, clients))
        root.mkdir(parents=True)
        return local.JobRoot(root)

    # The job starts only once the server is down (the submission itself needs the server): no race.
    monkeypatch.setattr(local, "start_detached", hold)
    client = MlflowClient(own_mlflow_server.uri)
    experiment = client.create_experiment("relay")
    params = {"dataset": str(prepared_dataset), "base_model": str(tiny_model), "max_steps": str(STEPS // 2),
              "registered_model_name": "relay-coder", "save_steps": "100", "batch_size": "2",
              "grad_accumulation": "1", "max_seq_len": "256", "logging_steps": "1", "eval_samples": "2",
              "max_new_tokens": "8", "learning_rate": "0.01", "warmup_ratio": "0"}
    config = {"mode": "local", "job_root": str(tmp_path / "jobs"), "wait": False, "SYNCHRONOUS": False}
    submitted = AdeSageMakerBackend(console=io.StringIO()).run(str(REPO_ROOT), "train", params, None, config,
                                                               own_mlflow_server.uri, experiment)
    run_id = submitted.run_id
    own_mlflow_server.stop()
    job = local.JobRoot(held[0][1])
    try:
        start_detached(*held[0])
        deadline = time.monotonic() + 900  # a bound on a hung job, not a timing assumption
        while job.describe()["TrainingJobStatus"] not in local.ENDED and time.monotonic() < deadline:
            time.sleep(1)
        log = job.log_path.read_text()
        assert job.describe()["TrainingJobStatus"] == "Completed", log[-3000:]
        assert "cannot be reached" in log and "logging to the relay" in log
    finally:
        job.stop()
        own_mlflow_server.start()

    first = CliRunner().invoke(sync_run_command, [run_id], catch_exceptions=False)
    assert first.exit_code == 0 and "registered version 1" in first.output, first.output
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == list(range(1, STEPS // 2 + 1))
    assert {m.step for m in client.get_metric_history(run_id, "eval_loss")} == {0, STEPS // 2}
    # the checkpoint listing went to the relay too (issue 18 item 3)
    assert "checkpoints.json" in {a.path for a in client.list_artifacts(run_id)}
    assert str(STEPS // 2) in run.data.tags["ade.checkpoints"].split(",")
    models = client.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}'")
    assert [m.name for m in models] == ["model"]
    version = client.get_model_version("relay-coder", "1")
    assert version.run_id == run_id and version.source == f"models:/{models[0].model_id}"
    assert "MLmodel" in {a.path for a in client.list_logged_model_artifacts(models[0].model_id)} \
        if hasattr(client, "list_logged_model_artifacts") else True

    def state() -> tuple:
        again = client.get_run(run_id)
        return (again.info.status, again.info.end_time, again.data.params, again.data.tags,
                [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")],
                [m.model_id for m in client.search_logged_models([experiment])],
                [v.version for v in client.search_model_versions("name = 'relay-coder'")])

    before = state()
    second = CliRunner().invoke(sync_run_command, [run_id], catch_exceptions=False)
    assert second.exit_code == 0 and "nothing new" in second.output, second.output
    assert state() == before


def test_dataset_input_of_an_offline_job_reaches_the_run_once(sqlite_tracking, tmp_path):
    """`main` without a server: the dataset input, stats.json and digest tag go to the relay; replayed once."""
    from datasets import Dataset, DatasetDict

    from ade_mlflow_plugin.backend.replay import replay
    from ade_mlflow_plugin.dataset.build import PreparedDataset
    from ade_mlflow_plugin.job.relay import Relay
    from ade_mlflow_plugin.training.pipeline import _relay_dataset

    rows = {"prompt": ["def a():", "def b():"], "completion": ["  return 1", "  return 2"]}
    prepared = PreparedDataset(dataset=DatasetDict({"train": Dataset.from_dict(rows), "eval": Dataset.from_dict(rows)}),
                               stats={"examples": 4}, digest="d1g3st", path=None)
    relay = Relay(tmp_path / "out")
    _relay_dataset(relay, prepared, tmp_path)
    client = MlflowClient()
    run_id = new_run(sqlite_tracking, "offline-dataset")
    assert replay(client, run_id, relay.dir).datasets == 1
    assert not replay(client, run_id, relay.dir).changed
    run = client.get_run(run_id)
    assert [(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs] == [("codebase", "d1g3st")]
    assert run.data.tags["ade.dataset_digest"] == "d1g3st"
    assert [a.path for a in client.list_artifacts(run_id)] == ["stats.json"]
