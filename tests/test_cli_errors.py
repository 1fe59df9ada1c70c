"""Every `ade-mlflow` verb's error paths (issue 19 item 4): one line on stderr, exit 2 for bad input and 1
for a failure, never a traceback.

One row per error path: bad values, unwritable and missing paths, missing entities, and a tracking server
that cannot be reached. The rows run the real console entry (cli.main) in this process against real peers:
a sqlite tracking store, moto for AWS, a closed port for the unreachable server. The subprocess test at the
end (slow) proves the same from the installed console script against a server that accepts connections and
never answers, within a bound far below MLflow's default retries (minutes).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ade_mlflow_plugin.cli import BOUNDED_HTTP, UNREACHABLE_HTTP, main
from ade_mlflow_plugin.backend.fit import PREFIX as FIT_PREFIX  # the memory estimate: printed before the run exists

RUN_ID = "0123456789abcdef0123456789abcdef"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
SAGEMAKER = f'{{"role_arn": "{ROLE}", "bucket": "no-such-bucket-h7", "region": "us-east-1"'
UNREACHABLE = "unreachable"  # rows whose tracking URI is a closed port

# (id, argv, exit code, words the one line must hold). {file}: a regular file (a folder under it cannot
# be made, even by root); {codebase}: a folder whose name holds a space and non-ASCII characters.
ROWS = [
    # ---- usage: click's errors, on one line
    ("unknown-verb", ["bogus"], 2, ["No such command 'bogus'"]),
    ("launch-no-codebase", ["launch"], 2, ["--codebase_path", "launch --help"]),
    ("launch-missing-codebase", ["launch", "--codebase_path", "/nonexistent/code"], 2, ["/nonexistent/code"]),
    ("port-out-of-range", ["webhook-server", "--secret-env", "HOME", "--port", "70000"], 2, ["--port", "70000"]),
    ("poll-interval-zero", ["logs", "some-job", "--poll-interval", "0"], 2, ["--poll-interval"]),
    ("root-is-a-file", ["sync", "m@prod", "--root", "{file}"], 2, ["--root", "is a file"]),
    ("job-root-is-a-file", ["status", "some-job", "--job-root", "{file}"], 2, ["--job-root"]),
    # ---- bad values
    ("keep-zero", ["promote", "m", "1", "--alias", "prod", "--keep", "0"], 2, ["keep_versions", "0"]),
    ("watch-interval-negative", ["watch", "--once", "--interval", "-1"], 2, ["poll_interval_s", "-1"]),
    ("window-zero", ["webhook-server", "--secret-env", "HOME", "--window-s", "0"], 2, ["webhook_window_s"]),
    ("secret-env-unset", ["webhook-server", "--secret-env", "ADE_H7_UNSET"], 2, ["ADE_H7_UNSET"]),
    ("promote-no-target", ["promote", "m", "1"], 2, ["--alias", "--stage"]),
    ("param-not-name-value", ["launch", "--codebase_path", "{codebase}", "--local", "-P", "foo"], 2, ["-P 'foo'"]),
    ("param-bad-number", ["launch", "--codebase_path", "{codebase}", "--local", "-P", "learning_rate=fast"], 2,
     ["learning_rate", "fast"]),
    ("param-undeclared", ["launch", "--codebase_path", "{codebase}", "--local", "-P", "lrr=1"], 2,
     ["lrr", "lora_r"]),
    ("model-name-slash", ["launch", "--codebase_path", "{codebase}", "--local", "--registered_model_name", "a/b"], 2,
     ["registered_model_name", "'/'"]),
    ("count-zero", ["launch", "--codebase_path", "{codebase}", "--local", "--instance_count", "0"], 2,
     ["instance_count"]),
    ("runtime-negative", ["launch", "--codebase_path", "{codebase}", "--local", "--max_runtime", "-5"], 2,
     ["max_runtime_s"]),
    ("config-not-json", ["launch", "--codebase_path", "{codebase}", "--backend-config", "{"], 2, ["not valid JSON"]),
    ("config-file-missing", ["launch", "--codebase_path", "{codebase}", "--backend-config", "/nonexistent.json"], 2,
     ["/nonexistent.json", "not found"]),
    ("config-file-binary", ["launch", "--codebase_path", "{codebase}", "--backend-config", "{binary}"], 2,
     ["{binary}", "cannot be read"]),
    ("contract-env", ["launch", "--codebase_path", "{codebase}", "--backend-config",
                      SAGEMAKER + ', "environment": {"MLFLOW_RUN_ID": "x"}}'], 2, ["environment", "MLFLOW_RUN_ID"]),
    ("checkpoint-not-s3", ["launch", "--codebase_path", "{codebase}", "--backend-config",
                           SAGEMAKER + ', "checkpoint_s3_uri": "/tmp/ck"}'], 2, ["checkpoint_s3_uri", "s3://"]),
    # ---- unwritable paths
    ("job-root-unwritable", ["launch", "--codebase_path", "{codebase}", "--backend-config",
                             '{"mode": "local", "job_root": "{file}/jobs"}'], 2, ["job_root", "not a folder"]),
    ("output-dir-unwritable", ["launch", "--codebase_path", "{codebase}", "--local", "--output_dir", "{file}/out"], 2,
     ["{file}", "not a folder"]),
    ("cursor-unwritable", ["watch", "--once", "--cursor", "{file}/cursor.json"], 1, ["{file}/cursor.json"]),
    ("dataset-out-unwritable", ["prepare-data", "{codebase}", "--out", "{file}/ds", "--num-examples", "5",
                                "--synthetic-ratio", "0.3", "--no-progress"], 2, ["{file}/ds", "--out"]),
    # ---- missing entities (a reachable store)
    ("promote-missing-version", ["promote", "m", "1", "--alias", "prod"], 2, ["m/1", "not found"]),
    ("sync-missing-alias", ["sync", "m@prod"], 2, ["m"]),
    ("sync-missing-run", ["sync", RUN_ID], 2, [RUN_ID, "not found"]),
    ("cost-missing-experiment", ["cost", "-e", "nope"], 2, ["nope", "not found"]),
    ("reconcile-missing-experiment", ["reconcile", "--experiment", "nope"], 2, ["nope", "not found"]),
    ("status-missing-run", ["status", RUN_ID], 2, [RUN_ID, "not found"]),
    ("logs-missing-run", ["logs", RUN_ID], 2, [RUN_ID, "not found"]),
    ("status-missing-job", ["status", "ade-no-such-job"], 2, ["ade-no-such-job"]),
    ("cost-missing-job", ["cost", "ade-no-such-job"], 2, ["ade-no-such-job"]),
    ("sync-run-missing-job", ["sync-run", "ade-no-such-job"], 2, ["ade-no-such-job"]),
    # ---- the tracking server cannot be reached (a closed port): the line names its URI
    ("down-launch", ["launch", "--codebase_path", "{codebase}", "--local"], 1, ["{uri}", "connection refused"]),
    ("down-logs", ["logs", RUN_ID], 1, ["{uri}", "connection refused"]),
    ("down-cost", ["cost", RUN_ID], 1, ["{uri}"]),
    ("down-cost-experiment", ["cost", "-e", "x"], 1, ["{uri}"]),
    ("down-sync-run", ["sync-run", RUN_ID], 1, ["{uri}"]),
    ("down-reconcile", ["reconcile"], 1, ["{uri}"]),
    ("down-promote", ["promote", "m", "1", "--alias", "prod"], 1, ["{uri}"]),
    ("down-sync", ["sync", "m@prod"], 1, ["{uri}"]),
    ("down-sync-run-id", ["sync", RUN_ID], 1, ["{uri}"]),
    ("down-watch", ["watch", "--once"], 1, ["{uri}"]),
    ("down-webhook-register", ["webhook-register", "--url", "http://127.0.0.1:1/", "--secret-env", "HOME"], 1,
     ["{uri}"]),
    # status goes on with the job alone (a warning line), which it cannot find here
    ("down-status", ["status", RUN_ID], 2, [RUN_ID, "cannot be reached"]),
]


# MLflow's own INFO log lines (a fresh sqlite store announces its tables): not errors.
LOG_LINE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO ")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on return: connecting is refused


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the table (a fresh one costs ~2 s of migrations); no row writes to it."""
    return f"sqlite:///{tmp_path_factory.mktemp('cli-errors')}/mlflow.db"


@pytest.fixture
def places(tmp_path: Path, store: str, aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    file = tmp_path / "a-file"
    file.write_text("not a folder\n")
    codebase = tmp_path / "code base ü"
    codebase.mkdir()
    (codebase / "app.py").write_text("def add(a, b):\n    return a + b\n")
    monkeypatch.setenv("ADE_MODELS_ROOT", str(tmp_path / "models"))
    monkeypatch.delenv("ADE_H7_UNSET", raising=False)
    for name in {**BOUNDED_HTTP, **UNREACHABLE_HTTP}:  # main sets them: restored after the test
        monkeypatch.setenv(name, os.environ[name]) if name in os.environ else monkeypatch.delenv(name, raising=False)
    binary = tmp_path / "config.json"
    binary.write_bytes(b"\xff\xfe{\x00")
    yield {"file": str(file), "codebase": str(codebase), "uri": store, "binary": str(binary)}
    mlflow.set_tracking_uri(None)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """cli.main as the console script runs it: (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        main(argv)
    code = ended.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


def assert_one_line(stderr: str, code: int, expected_code: int, words: list[str]) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("ade-mlflow: error: ")]
    others = [line for line in stderr.splitlines()
              if line.strip() and not line.startswith(("ade-mlflow: error: ", "WARNING", FIT_PREFIX))
              and not LOG_LINE.match(line)]
    assert len(errors) == 1 and not others, stderr
    assert code == expected_code, stderr
    for word in words:
        assert word in errors[0], errors[0]


@pytest.mark.parametrize("case_id,argv,expected_code,words", ROWS, ids=[row[0] for row in ROWS])
def test_each_error_is_one_line(case_id: str, argv: list[str], expected_code: int, words: list[str],
                                places: dict[str, str], capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    if case_id.startswith("down-"):
        places["uri"] = f"http://127.0.0.1:{closed_port()}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", places["uri"])
        mlflow.set_tracking_uri(places["uri"])
    code, stderr = run_cli([fill(arg, places) for arg in argv], capsys)
    assert_one_line(stderr, code, expected_code, [fill(word, places) for word in words])


def fill(text: str, places: dict[str, str]) -> str:
    """The row's {placeholders} filled in (str.format would trip on inline JSON's braces)."""
    for name, value in places.items():
        text = text.replace("{" + name + "}", value)
    return text


def test_the_launch_program_is_the_same_command(places: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m ade_mlflow_plugin.launch` (launch.main) probes and words its errors the same way."""
    from ade_mlflow_plugin.launch import main as launch_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        launch_main(["--codebase_path", places["codebase"], "--local", "-P", "foo"])
    assert ended.value.code == 2
    assert_one_line(capsys.readouterr().err, 2, 2, ["-P 'foo'"])


@pytest.fixture
def health_server() -> Iterator[str]:
    """A server answering /health as MLflow's does (200 "OK"), in a thread."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_reachable_server_gets_bounded_retries(health_server: str) -> None:
    """The probe passes; MLflow's retries the user did not set are bounded (its defaults: 7, factor 2)."""
    from ade_mlflow_plugin.cli import bound_tracking_calls

    environ = {"MLFLOW_TRACKING_URI": health_server, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "3"}
    assert bound_tracking_calls(environ) is None
    assert environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == BOUNDED_HTTP["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "3"  # the user's own setting stays


def test_a_file_store_is_not_probed() -> None:
    from ade_mlflow_plugin.cli import bound_tracking_calls

    environ = {"MLFLOW_TRACKING_URI": "sqlite:///x.db"}
    assert bound_tracking_calls(environ) is None


@pytest.fixture
def silent_server() -> tuple[str, socket.socket]:
    """A server that accepts connections (the kernel's backlog) and never answers: the worst case,
    where only timeouts end a request."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", sock
    sock.close()


# Bound for the whole command, start-up included: far below MLflow's default retries (7 with backoff
# factor 2 and a 120 s timeout: minutes), generous for a loaded machine (it takes ~10 s idle).
SILENT_SERVER_BOUND_S = 45


@pytest.mark.slow
@pytest.mark.parametrize("argv,expected_code", [(["promote", "m", "1", "--alias", "prod"], 1),
                                                (["status", RUN_ID], 2)])
def test_a_silent_tracking_server_fails_fast_naming_it(argv: list[str], expected_code: int, tmp_path: Path,
                                                       silent_server: tuple[str, socket.socket]) -> None:
    uri, _ = silent_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    env["MLFLOW_TRACKING_URI"] = uri
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ade_mlflow_plugin.cli", *argv], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert_one_line(done.stderr, done.returncode, expected_code, [])
    assert uri in done.stderr, done.stderr
    assert elapsed < SILENT_SERVER_BOUND_S, f"{elapsed:.0f} s: {done.stderr}"
