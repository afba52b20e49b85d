"""Process-level helpers of a run: a file lock, and signals that ask training to stop."""

from __future__ import annotations

import fcntl
import signal
import threading
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(path: Path, wait: bool = False):
    """An exclusive file lock; yields whether it is held (a busy lock: False, or wait for it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def stop_on_signals(stop: threading.Event):
    """SIGTERM and SIGINT ask the trainer to checkpoint and stop after the current step (it then
    raises Interrupted, which ends the process: monitor.py). Only while a run trains: the handlers
    there before are put back on leaving, and at once after the first signal, so that a second one
    does what it would have done without the harness (by default: end the process now)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    def ask_to_stop(signum, frame) -> None:
        stop.set()
        restore()

    for s in previous:
        signal.signal(s, ask_to_stop)
    try:
        yield
    finally:
        restore()
