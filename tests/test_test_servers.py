"""The test suite's own process hygiene: what a test starts dies with the test run, even on SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT

_PARENT = """
import sys, time
sys.path.insert(0, {root!r})
from tests.servers import popen_dying_with_parent
child = popen_dying_with_parent([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state in /proc says it is gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


def test_a_server_started_by_a_killed_test_run_does_not_outlive_it():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT.format(root=str(REPO_ROOT))],
                              stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    parent.send_signal(signal.SIGKILL)  # what a CI timeout does to pytest
    parent.wait()
    deadline = time.monotonic() + 30
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(child_pid)
    if alive:
        os.kill(child_pid, signal.SIGKILL)
    assert not alive, "the child outlived its killed parent"
