"""Whole-job phases (training/phases.py): the clock's arithmetic, the step split, and a real `main` run
that logs every phase to its run with shares that add up to its wall time."""
from __future__ import annotations

import json
import time

import pytest

from ade_mlflow_plugin.training import phases
from ade_mlflow_plugin.training.phases import PHASES, PhaseClock, StepClock, book_training, warmup_excess


def test_startup_is_the_time_since_the_process_started() -> None:
    clock = PhaseClock(started_at=100.0, now=103.5)
    assert clock.seconds["startup"] == pytest.approx(3.5)
    assert phases.process_start_time() <= time.time()  # this process's real start, from the OS


def test_other_fills_the_wall_and_shares_add_up_to_one() -> None:
    clock = PhaseClock(started_at=0.0, now=2.0)
    clock.add("dataset", 3.0)
    clock.add("training", 10.0)
    summary = clock.summary(now=20.0)
    assert summary["wall_seconds"] == pytest.approx(20.0)
    assert summary["phases"]["other"]["seconds"] == pytest.approx(5.0)
    assert sum(p["seconds"] for p in summary["phases"].values()) == pytest.approx(20.0)
    assert sum(p["share"] for p in summary["phases"].values()) == pytest.approx(1.0)
    assert summary["training_share"] == pytest.approx(0.5)
    assert list(summary["phases"]) == list(PHASES)


def test_measured_more_than_the_wall_never_gives_negative_other() -> None:
    clock = PhaseClock(started_at=0.0, now=1.0)
    clock.add("training", 10.0)
    summary = clock.summary(now=5.0)
    assert summary["phases"]["other"]["seconds"] == 0.0
    assert sum(p["share"] for p in summary["phases"].values()) == pytest.approx(1.0)


def test_phase_context_times_its_block_and_unknown_names_are_refused() -> None:
    clock = PhaseClock(started_at=time.time())
    with clock.phase("eval"):
        pass
    assert 0.0 <= clock.seconds["eval"] < 1.0
    with pytest.raises(KeyError, match="unknown phase 'evaluation'"):
        clock.add("evaluation", 1.0)


def test_metrics_and_table_name_every_phase() -> None:
    clock = PhaseClock(started_at=0.0, now=1.0)
    clock.add("training", 3.0)
    summary = clock.summary(now=4.0)
    logged = phases.metrics(summary)
    assert set(logged) == {f"phase_seconds/{name}" for name in PHASES} | {"phase_seconds/wall", "training_share"}
    assert logged["training_share"] == pytest.approx(0.75)
    text = phases.table(summary)
    assert all(name in text for name in PHASES) and "75.0%" in text
    json.dumps(summary)  # the phases.json artifact


@pytest.mark.parametrize("durations, excess", [
    ([], 0.0), ([9.0], 0.0),
    ([1.0, 1.0, 1.0, 1.0], 0.0),  # steady from the start
    ([21.0, 1.0, 1.0, 1.0, 1.0, 1.0], 20.0),  # a compile on the first step
    ([11.0, 4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 13.0),  # and autotuning on the second
    ([6.0, 1.0], 5.0),  # too short for a steady state: the first step against the rest
])
def test_warmup_is_the_first_steps_excess_over_a_steady_step(durations, excess) -> None:
    assert warmup_excess(durations) == pytest.approx(excess)


def test_trainer_time_is_split_into_setup_warmup_steps_evals_and_saves() -> None:
    steps = StepClock()
    steps.durations = [5.0, 1.0, 1.0, 1.0, 1.0]
    steps.gaps_s, steps.eval_s = 3.0, 2.0
    clock = PhaseClock(started_at=0.0, now=0.0)
    book_training(clock, steps, train_wall_s=13.0)
    assert clock.seconds["compile_warmup"] == pytest.approx(4.0)
    assert clock.seconds["training"] == pytest.approx(5.0)
    assert clock.seconds["eval"] == pytest.approx(2.0)
    assert clock.seconds["checkpoints"] == pytest.approx(1.0)
    assert clock.seconds["setup"] == pytest.approx(1.0)


def test_step_clock_measures_steps_gaps_and_evals_from_trainer_events() -> None:
    steps = StepClock()
    steps.on_step_begin(None, None, None)
    steps.on_step_end(None, None, None)
    steps.on_log(None, None, None, logs={"eval_runtime": 0.25})
    steps.on_step_begin(None, None, None)
    steps.on_step_end(None, None, None)
    steps.on_train_end(None, None, None)
    assert len(steps.durations) == 2 and all(d >= 0 for d in steps.durations)
    assert steps.eval_s == 0.25 and steps.gaps_s >= 0


@pytest.mark.slow
def test_main_run_logs_every_phase_and_the_shares_add_up_and_the_version_names_its_step(tiny_model, sqlite_tracking, tmp_path):
    from mlflow import MlflowClient

    from tests.training.conftest import CODEBASE, FAST_ARGS, Entry, entry_env, new_run

    run_id = new_run(sqlite_tracking, "phases")
    model_name = f"phases-{run_id[:8]}"
    started = time.time()
    entry = Entry("main.py", ["--codebase", str(CODEBASE), "--base_model", str(tiny_model), "--num_examples", "30",
                              "--max_steps", "6", "--registered_model_name", model_name, "--eval_fraction", "0.15", "--quantization", "none", *FAST_ARGS],
                  entry_env(sqlite_tracking, run_id, tmp_path / "ckpt"))
    assert entry.wait(timeout=240) == 0, entry.output[-3000:]
    outside = time.time() - started

    client = MlflowClient(sqlite_tracking)
    metrics = client.get_run(run_id).data.metrics
    for name in PHASES:
        assert f"phase_seconds/{name}" in metrics, name
    for name in ("startup", "dataset", "model_load", "eval", "training", "model_logging"):
        assert metrics[f"phase_seconds/{name}"] > 0, name
    wall = metrics["phase_seconds/wall"]
    assert sum(metrics[f"phase_seconds/{name}"] for name in PHASES) == pytest.approx(wall, rel=1e-6)
    assert 0 < wall <= outside + 1.0  # the job's own clock starts at its process's creation, after ours
    assert metrics["training_share"] == pytest.approx(metrics["phase_seconds/training"] / wall)

    path = client.download_artifacts(run_id, phases.ARTIFACT, str(tmp_path))
    summary = json.loads(open(path).read())
    assert summary["wall_seconds"] == pytest.approx(wall)
    assert sum(p["share"] for p in summary["phases"].values()) == pytest.approx(1.0)
    # the registered version names the step it is, as the run does
    best = client.get_run(run_id).data.tags["ade.best_step"]
    assert client.get_model_version(model_name, "1").tags["ade.best_step"] == best
    assert "compile_warmup" in entry.output and "training" in entry.output.split("phase ")[-1]


def test_a_job_without_a_tracking_server_keeps_its_phases_in_the_relay(tmp_path, capsys) -> None:
    """Offline (no server at start): the phase metrics and phases.json go to the relay, which sync-run replays."""
    from types import SimpleNamespace

    from ade_mlflow_plugin.job import relay as job_relay
    from ade_mlflow_plugin.training.pipeline import _log_phases
    from ade_mlflow_plugin.training.tracking import RelayLogger

    relay = job_relay.Relay(tmp_path)
    session = SimpleNamespace(offline=True, run=None, relay=relay, metrics=RelayLogger(relay))
    clock = PhaseClock(started_at=time.time() - 2.0)
    clock.add("training", 1.0)
    _log_phases(session, clock, step=7)

    records = list(job_relay.read_records(relay.dir))
    logged = {m["key"]: m for r in records if r["kind"] == job_relay.METRICS for m in r["metrics"]}
    assert set(logged) >= {f"phase_seconds/{name}" for name in PHASES} | {"training_share"}
    assert {m["step"] for m in logged.values()} == {7}
    files = [r["files"] for r in records if r["kind"] == job_relay.ARTIFACTS]
    summary = json.loads((relay.dir / files[0]).read_text())
    assert summary["phases"]["training"]["seconds"] == pytest.approx(1.0)
    assert "training" in capsys.readouterr().out  # the table, in the job log
