"""The job's relay: append-only records that survive a crash, and the check that sends a job to it."""
from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

from ade_mlflow_plugin.job import contract
from ade_mlflow_plugin.job.relay import (END, METRICS, PARAMS, RECORDS_FILE, RELAY_DIR, Relay, read_records,
                                         relay_home, unreachable_reason)
from tests.conftest import free_port


def test_records_come_back_in_order_with_sequence_numbers(tmp_path):
    relay = Relay(tmp_path)
    relay.append(PARAMS, params={"lora_r": "8"})
    relay.metrics([{"key": "train_loss", "value": 1.5, "timestamp": 1, "step": 1}])
    relay.append(END, status="FINISHED")
    records = list(read_records(tmp_path / RELAY_DIR))
    assert [(r["seq"], r["kind"]) for r in records] == [(1, PARAMS), (2, METRICS), (3, END)]
    assert records[1]["metrics"][0]["step"] == 1


def test_a_relay_never_written_leaves_no_folder(tmp_path):
    Relay(tmp_path)
    assert not (tmp_path / RELAY_DIR).exists()


def test_a_torn_last_line_is_skipped_and_a_restart_appends_after_it(tmp_path):
    relay = Relay(tmp_path)
    relay.append(PARAMS, params={"a": "1"})
    with open(tmp_path / RELAY_DIR / RECORDS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"seq": 2, "kind": METRICS, "metrics": []})[:20])  # the crash, mid-write
    assert [r["seq"] for r in read_records(tmp_path / RELAY_DIR)] == [1]
    again = Relay(tmp_path)  # the restarted job
    again.append(END, status="FINISHED")
    assert [(r["seq"], r["kind"]) for r in read_records(tmp_path / RELAY_DIR)] == [(1, PARAMS), (2, END)]


def test_files_are_copied_before_their_record(tmp_path):
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "w.bin").write_bytes(b"123")
    relay = Relay(tmp_path / "out")
    relay.add_files("model", source, name="model")
    record = next(read_records(relay.dir))
    assert (relay.dir / record["files"] / "sub" / "w.bin").read_bytes() == b"123"


def test_home_is_the_output_data_dir_of_the_contract(tmp_path):
    assert relay_home({contract.ENV_OUTPUT_DATA_DIR: str(tmp_path / "d")}) == tmp_path / "d"
    assert relay_home({contract.ENV_BASE_DIR: str(tmp_path)}) == contract.ContainerPaths(tmp_path).output_data_dir


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def test_a_server_that_answers_is_reachable_and_a_closed_port_is_not():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert unreachable_reason(f"http://127.0.0.1:{server.server_address[1]}", {}) is None
    finally:
        server.shutdown()
        server.server_close()
    reason = unreachable_reason(f"http://127.0.0.1:{free_port()}", {})
    assert reason is not None and "cannot be reached" in reason


def test_a_local_store_is_unreachable_only_inside_a_sagemaker_container(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert "local to the training container" in unreachable_reason(uri, {contract.ENV_JOB_NAME: "job"})
    assert unreachable_reason(uri, {contract.ENV_JOB_NAME: "job", contract.ENV_BASE_DIR: str(tmp_path)}) is None
    assert unreachable_reason(uri, {}) is None


def test_two_processes_appending_at_once_leave_whole_lines(tmp_path):
    """The launcher and the entry share the relay: each record is one write, so lines never interleave."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from ade_mlflow_plugin.job.relay import Relay\n"
            "r = Relay(Path(sys.argv[1]))\n"
            "for i in range(200): r.append('tags', tags={'k': sys.argv[2] * 5000, 'i': str(i)})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), tag]) for tag in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    records = list(read_records(tmp_path / RELAY_DIR))
    assert len(records) == 400
    assert sorted({r["tags"]["k"][0] for r in records}) == ["a", "b"]
