"""The parts of a multi-host stop that need no job (tests/job/test_multihost_stops.py runs whole ones): the stop's
reason recorded on the run before a host signals its entry, read back by a host whose entry ended without a
SIGTERM; torchrun's summary of workers that stopped; one stop at a time in the launcher; per-host budget clocks."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import mlflow

from ade_mlflow_plugin.job import budget, contract
from ade_mlflow_plugin.job.launcher import EntryProcess, Launch, SignalRouter, stopped_elsewhere
from ade_mlflow_plugin.job.run_state import record_stop, recorded_stop

TWO_HOSTS = {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}
ONE_HOST = {"current_host": "algo-1", "hosts": ["algo-1"]}
#: What torchrun prints when its workers ended: here both stopped (143 after a checkpoint, -15 by the signal).
SUMMARY = ["torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "Failures:", "[1]:",
           "  rank      : 1 (local_rank: 1)", "  exitcode  : -15 (pid: 4243)  (SIGTERM)",
           "Root Cause (first observed failure):", "[0]:", "  rank      : 0 (local_rank: 0)",
           "  exitcode  : 143 (pid: 4242) "]


def _env(tracking: str, run_id: str = "") -> dict[str, str]:
    return {contract.ENV_TRACKING_URI: tracking, contract.ENV_RUN_ID: run_id}


def _launch(tmp_path: Path, resource: dict, env: dict[str, str]) -> Launch:
    return Launch(contract.ContainerPaths(tmp_path), contract.decode_hyperparameters({}), resource, env=env)


def test_a_stop_recorded_by_one_host_is_read_by_the_others_and_the_first_one_stays(tmp_path, sqlite_tracking):
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    env = _env(sqlite_tracking, run_id)
    assert recorded_stop(env, TWO_HOSTS) is None
    record_stop(env, TWO_HOSTS, contract.PEER_FAILED, "host algo-1 failed")  # not a stop: nothing recorded
    assert recorded_stop(env, TWO_HOSTS) is None
    record_stop(env, TWO_HOSTS, "budget", "budget: estimated cost $1.10 reached max_cost_usd $1.00")
    record_stop(env, TWO_HOSTS, "stopped", "stopped: SIGTERM to the launcher")  # later: the job's stop is the first
    assert recorded_stop(env, TWO_HOSTS) == ("budget", "budget: estimated cost $1.10 reached max_cost_usd $1.00")
    # The race: a rank that lost its collective's partner raised (exit 1) after a peer recorded its budget stop.
    tail = ["RuntimeError: [../gloo/transport/tcp/pair.cc:553] Connection closed by peer", "  exitcode  : 1 (pid: 7)"]
    assert stopped_elsewhere(contract.ContainerPaths(tmp_path), _launch(tmp_path, TWO_HOSTS, env), tail)[0] == "budget"
    # One host has no peers to tell: the run keeps nothing before the launcher ends it.
    other = mlflow.MlflowClient().create_run("0").info.run_id
    record_stop(_env(sqlite_tracking, other), ONE_HOST, "budget", "budget: ...")
    assert contract.STOP_REASON_TAG not in mlflow.MlflowClient().get_run(other).data.tags
    assert recorded_stop(env, ONE_HOST) is None


def test_an_entry_whose_workers_all_stopped_is_a_stop_one_that_failed_is_not(tmp_path):
    env = _env("http://127.0.0.1:9")  # no run: nothing recorded or read, torchrun's summary decides
    paths = contract.ContainerPaths(tmp_path)
    reason, detail = stopped_elsewhere(paths, _launch(tmp_path, TWO_HOSTS, env), SUMMARY)
    assert reason == "stopped" and detail.startswith("stopped: a training process of the job got SIGTERM")
    failed = [line.replace("143", "1") for line in SUMMARY]
    assert stopped_elsewhere(paths, _launch(tmp_path, TWO_HOSTS, env), failed) is None
    assert stopped_elsewhere(paths, _launch(tmp_path, TWO_HOSTS, env), ["boom"]) is None
    # One host: an entry that exits 143 by itself stays a failure, as before.
    assert stopped_elsewhere(paths, _launch(tmp_path, ONE_HOST, env), SUMMARY) is None
    # The local runner's reason wins over "stopped" (a cluster stop whose SIGTERM the entry's end beat).
    paths.stop_reason_file.parent.mkdir(parents=True, exist_ok=True)
    paths.stop_reason_file.write_text("spot_interrupted\nspot_interrupted: reclaimed\n")
    assert stopped_elsewhere(paths, _launch(tmp_path, TWO_HOSTS, env), SUMMARY) == \
        ("spot_interrupted", "spot_interrupted: reclaimed")


def test_the_launcher_stops_its_entry_once(tmp_path):
    """A second SIGTERM (the local runner stopping the peers of a host that stopped) must not cut the entry's
    checkpoint short: torchrun aborts its own graceful shutdown on a second signal."""
    entry = EntryProcess(f"{sys.executable} -c 'import time; time.sleep(60)'", tmp_path, {})
    router, said = SignalRouter(), []
    router.entry, router.before_stop = entry, lambda: said.append("why")
    router(signal.SIGTERM)
    router(signal.SIGTERM)
    assert entry.wait() != 0 and entry.terminated and said == ["why"]


def test_a_relative_budget_clock_is_read_in_the_hosts_job_root(tmp_path):
    for host, seconds in (("algo-1", "5"), ("algo-2", "700")):
        (tmp_path / host).mkdir()
        (tmp_path / host / "elapsed_s").write_text(seconds)
    clocks = [budget.budget_clock({contract.ENV_BUDGET_CLOCK_FILE: "elapsed_s",
                                   contract.ENV_BASE_DIR: str(tmp_path / host)}) for host in ("algo-1", "algo-2")]
    assert [clock() for clock in clocks] == [5.0, 700.0]
    absolute = budget.budget_clock({contract.ENV_BUDGET_CLOCK_FILE: str(tmp_path / "algo-2" / "elapsed_s"),
                                    contract.ENV_BASE_DIR: str(tmp_path / "algo-1")})
    assert absolute() == 700.0


def test_recording_a_stop_waits_a_bounded_time_for_a_server_that_does_not_answer(capsys, monkeypatch):
    """MLflow's client waits and retries for minutes; a stop has 120 s: the SIGTERM goes on without the record."""
    import http.server
    import threading

    # The writer left behind gives up soon after the test instead of retrying in the background for minutes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

    release = threading.Event()

    class Stuck(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path.startswith("/health"):  # the relay's probe: a live server
                self.send_response(200)
                self.end_headers()
                return
            release.wait(60)  # everything else: no answer while the test runs

        def log_message(self, *args):  # noqa: ANN002 - quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stuck)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = _env(f"http://127.0.0.1:{server.server_address[1]}", "0123456789abcdef0123456789abcdef")
        record_stop(env, TWO_HOSTS, "budget", "budget: reached", timeout_s=0.5)
        assert "takes over 0.5 s; stopping without waiting" in capsys.readouterr().err
    finally:
        release.set()
        server.shutdown()
        server.server_close()
