"""Sharing a suite between workers: who trains which run.

A run's MLflow record is its claim. While a worker trains, its run is RUNNING with the tags
`worker` (host:pid) and `heartbeat` (unix seconds, refreshed every HEARTBEAT_SECONDS). Any number of
workers, on one machine or several that share the tracking store, decide from the store alone:
- FINISHED: nothing to do;
- RUNNING with a fresh heartbeat of another worker: claimed, come back later (`Claimed`);
- RUNNING whose worker died (a process of this machine that is gone, or a heartbeat older than
  the claim timeout: SIGKILL, a lost machine) or KILLED: take it
  over and resume from its checkpoint (checkpoints live in the runs home: a worker on another
  machine resumes only if the home is shared, else it restarts the run);
- none: create a run, then look again: if another live claim of the same key was created first
  (two workers raced), withdraw ours (`Claimed`). The store orders the claims, so exactly one wins.
A takeover writes `worker` and reads it back after a short pause; the last writer trains.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager

HEARTBEAT_SECONDS = 30.0


def claim_timeout() -> float:
    """Seconds without a heartbeat after which a RUNNING run's worker counts as dead."""
    return float(os.environ.get("KD_HARNESS_CLAIM_TIMEOUT", 4 * HEARTBEAT_SECONDS))


WORKER = f"{socket.gethostname()}:{os.getpid()}"


class Claimed(Exception):
    """Another live worker trains this run: do something else and come back."""

    def __init__(self, run_key: str, worker: str):
        super().__init__(f"run {run_key} is being trained by worker {worker}")
        self.run_key, self.worker = run_key, worker


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_live(run, now: float | None = None) -> bool:
    """A RUNNING run whose worker is another live process. A worker of this machine is asked
    directly (a SIGKILLed one is dead at once); one elsewhere is dead when its heartbeat is older
    than `claim_timeout()`. A run without a heartbeat predates work sharing: presumed dead."""
    tags = run.data.tags
    worker = tags.get("worker", "")
    if run.info.status != "RUNNING" or worker == WORKER or "heartbeat" not in tags:
        return False
    host, _, pid = worker.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return _process_alive(int(pid))
    return (now or time.time()) - float(tags["heartbeat"]) < claim_timeout()


def claim_tags() -> dict:
    return {"worker": WORKER, "heartbeat": f"{time.time():.0f}"}


def first_claim(runs) -> object | None:
    """Of several live claims of one key, the one the store created first (ties: by run id)."""
    live = [r for r in runs if r.info.status == "RUNNING" and "heartbeat" in r.data.tags
            and (r.data.tags.get("worker") == WORKER or is_live(r))]
    return min(live, key=lambda r: (r.info.start_time, r.info.run_id), default=None)


@contextmanager
def heartbeat(tracker, run_id: str):
    """Refresh the run's heartbeat from a background thread while the block runs."""
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                tracker.set_tags(run_id, {"heartbeat": f"{time.time():.0f}"})
            except Exception:  # a store hiccup must not kill the training; the next beat retries
                pass

    thread = threading.Thread(target=beat, name=f"heartbeat {run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


POLL_SECONDS = 10.0


def starting_order(count: int) -> list[int]:
    """The order in which this worker tries `count` shared runs. Worker i of K (the launcher sets
    $KD_HARNESS_WORKER to "i/K") starts at run i*count/K and wraps around, so K workers begin on
    different runs instead of all racing for the first; a lone worker goes in order."""
    index, _, workers = os.environ.get("KD_HARNESS_WORKER", "0/1").partition("/")
    try:
        start = int(index) * count // max(1, int(workers))
    except ValueError:
        start = 0
    return [(start + i) % count for i in range(count)] if count else []


def until_free(work, *args, **kwargs):
    """`work(...)`, waiting while another worker holds what it needs (a command with nothing else
    to do, e.g. a sweep whose teacher another worker is training)."""
    import sys

    said = False
    while True:
        try:
            return work(*args, **kwargs)
        except Claimed as e:
            if not said:
                print(f"harness: {e}; waiting for it", file=sys.stderr)
                said = True
            time.sleep(POLL_SECONDS)
