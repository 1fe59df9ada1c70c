"""backend.interrupts.sigint_deferred: a Ctrl-C inside a job's start is raised once the start is whole, never halfway
(a launcher running with nothing to supervise it), and what starts inside still hears SIGINT."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ade_mlflow_plugin.backend.interrupts import sigint_deferred


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, as in a terminal (a test run started with nohup ignores it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_inside_is_raised_as_the_block_ends():
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            with sigint_deferred():  # nested: the outermost block raises it
                sum(range(10_000))  # bytecodes where an undeferred SIGINT would have raised
            finished.append("the whole start")
    assert finished == ["the whole start"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the caller's handler is back


def test_no_ctrl_c_no_interrupt_and_children_hear_sigint():
    code = ("import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
            "signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))")
    with sigint_deferred():
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert child.stdout.split() == ["True", "False"]  # SIGINT neither ignored nor blocked in what it started
