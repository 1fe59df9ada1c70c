"""Ctrl-C at the moment a job's processes start: held back until they and their supervisors all run."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """A Ctrl-C (SIGINT) that lands inside the block is raised as it ends, not halfway through it: a job's
    processes and the threads that supervise them start together, or (interrupted before) not at all. A
    handler, not a blocked signal mask, so that the processes started inside inherit SIGINT's default
    action (a caught signal is reset at exec). Nested blocks defer to the outermost; off the main thread,
    where no signal handler runs, it does nothing."""
    if (threading.current_thread() is not threading.main_thread() or _deferred_sigints
            or signal.getsignal(signal.SIGINT) is None):  # None: a handler Python did not set cannot be put back
        yield
        return
    _deferred_sigints.append(0)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: _deferred_sigints.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        pending = len(_deferred_sigints) > 1
        _deferred_sigints.clear()
        if pending:  # delivered again under the handler the caller had: KeyboardInterrupt, as usual
            signal.raise_signal(signal.SIGINT)


#: While a sigint_deferred() block is active: a marker, then each SIGINT it holds back.
_deferred_sigints: list[int] = []
