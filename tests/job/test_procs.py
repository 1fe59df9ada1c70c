"""/proc process bookkeeping: a stop must see processes in other groups and sessions."""
from __future__ import annotations

import subprocess
import sys
import time

from ade_mlflow_plugin.job.procs import descendants, group_members, kill_tree

# A parent that starts a grandchild in a session of its own (as torchrun does with its workers).
TREE = ("import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
        "print(p.pid, flush=True); time.sleep(60)")


def test_descendants_cross_sessions_and_kill_tree_ends_them_all():
    parent = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        grandchild = int(parent.stdout.readline())
        assert descendants(parent.pid) == [grandchild]
        assert group_members(parent.pid) == [parent.pid]  # the grandchild left the group
        assert group_members(grandchild) == [grandchild]
        kill_tree(parent.pid)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while group_members(grandchild):  # reparented and reaped by init, or a zombie: no longer live
            assert time.monotonic() < deadline, "the grandchild survived kill_tree"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
