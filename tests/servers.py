"""Server processes that tests start, and that die with the test run even when it is killed.

Every `mlflow server` a test needs is started by :func:`start_mlflow_server`. The kernel sends the
server SIGTERM when the process that started it dies (prctl PR_SET_PDEATHSIG), so a test run killed
with SIGKILL (a CI timeout, Ctrl-C twice) leaves no server listening; SIGTERM to the server's parent
stops its workers (FACTS.md), and :func:`stop_server` kills the process group as a backstop.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: ask the kernel for SIGTERM when the parent (the test process) exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers below 500, the process exits, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def start_mlflow_server(root: Path, port: int, backend_store_uri: str, artifacts_destination: str,
                        env: dict[str, str] | None = None, timeout: float = 180.0) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:port, logging to root/server.log; returns once it answers."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend_store_uri, "--artifacts-destination", artifacts_destination,
           "--workers", "1"]
    # No job-execution workers (huey consumers for GenAI jobs the tests never submit): without them the
    # server starts in about half the time and stops in seconds on 2 cores. Webhooks use a thread pool.
    full_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    with open(root / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=timeout, proc=proc)
    except RuntimeError as exc:
        stop_server(proc)
        raise RuntimeError(f"{exc}\n{(root / 'server.log').read_text(errors='replace')[-3000:]}") from None
    return proc


def stop_server(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM (the server stops its workers), then SIGKILL to the whole group as a backstop."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(proc.pid)
    if proc.poll() is None:
        proc.wait()


def _kill_group(pgid: int) -> None:
    try:  # workers too: the port must be free for a restart on the same port
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def popen_dying_with_parent(cmd: list[str], **kwargs: object) -> subprocess.Popen:
    """subprocess.Popen for any helper process a test starts: it gets SIGTERM if the test run dies."""
    previous: Callable[[], None] | None = kwargs.pop("preexec_fn", None)  # type: ignore[assignment]

    def preexec() -> None:
        die_with_parent()
        if previous is not None:
            previous()

    return subprocess.Popen(cmd, preexec_fn=preexec, **kwargs)  # type: ignore[arg-type]
