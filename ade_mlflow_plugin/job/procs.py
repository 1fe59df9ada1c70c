"""Process groups and trees from /proc (Linux, where jobs run): who is still alive after a stop.

An entry's processes do not all share one group: `sh -c` may sit between the launcher and Python,
and torchrun starts each worker in a session of its own. A stop must wait for, and a last-resort kill
must reach, all of them.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Iterator

PROC = Path("/proc")


def _stats() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, pgid) of every process, zombies included."""
    found = {}
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        found[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return found


def _live(state: str) -> bool:
    return state not in ("Z", "X")  # a zombie no longer runs; its parent (or init) reaps it


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group."""
    return [pid for pid, (state, _, group) in _stats().items() if group == pgid and _live(state)]


def descendants(pid: int) -> list[int]:
    """Live processes below pid, whatever their group or session."""
    children: dict[int, list[int]] = {}
    stats = _stats()
    for child, (_, parent, _) in stats.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if _live(stats[child][0]):
            found.append(child)
        todo += children.get(child, [])
    return found


def wait_for_group(pgid: int, poll_s: float = 0.2) -> None:
    """Block until no live process is left in the group, reaping orphans when this is PID 1."""
    if not PROC.is_dir():
        return  # not Linux: the direct child's exit is all there is to wait for
    while group_members(pgid):
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # as a container's PID 1 the orphans are ours to reap
                pass
        except ChildProcessError:
            pass
        time.sleep(poll_s)


def kill_tree(pid: int, pgids: tuple[int, ...] = ()) -> set[int]:
    """SIGKILL pid, everything below it and the given groups (orphans that left the tree stay in them);
    returns whom it signalled."""
    targets = set(descendants(pid)) | {pid}
    for pgid in pgids:
        targets |= set(group_members(pgid))
    for target in targets:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return targets


def wait_gone(pids: set[int], timeout_s: float, poll_s: float = 0.05) -> set[int]:
    """Wait (at most timeout_s) until none of pids runs; returns those still running. A SIGKILLed process
    dies when the kernel next schedules it, which on a loaded machine is not at once."""
    deadline = time.monotonic() + timeout_s
    left = set(pids)
    while left:
        stats = _stats()
        left = {pid for pid in left if pid in stats and _live(stats[pid][0])}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return left


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block is done (then arrive as usual). Around imports of large
    packages (mlflow): the launcher's handler raises, and a stop landing mid-import would leave a
    half-imported module that could not end the run afterwards."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
