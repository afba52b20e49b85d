"""Work sharing: several `harness run --suite` workers split a suite through the store; a live
claim is left alone, a dead worker's run is taken over and resumed; a race between two new claims
has one winner."""

import os
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from harness.running import workshare


def _run(status, worker, heartbeat=None, start=0, run_id="r"):
    tags = {"worker": worker} | ({"heartbeat": str(heartbeat)} if heartbeat is not None else {})
    return SimpleNamespace(info=SimpleNamespace(status=status, start_time=start, run_id=run_id),
                           data=SimpleNamespace(tags=tags))


def test_liveness_and_the_first_claim(monkeypatch):
    monkeypatch.setenv("KD_HARNESS_CLAIM_TIMEOUT", "60")
    now = time.time()
    assert workshare.is_live(_run("RUNNING", "other:1", now - 10))
    assert not workshare.is_live(_run("RUNNING", "other:1", now - 100))  # stale: its worker is dead
    here = socket.gethostname()
    assert workshare.is_live(_run("RUNNING", f"{here}:{os.getppid()}", now - 100))  # alive here, whatever the beat
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not workshare.is_live(_run("RUNNING", f"{here}:{gone.pid}", now))  # dead here, however fresh
    assert not workshare.is_live(_run("RUNNING", "other:1"))  # no heartbeat: from before work sharing
    assert not workshare.is_live(_run("KILLED", "other:1", now))
    assert not workshare.is_live(_run("RUNNING", workshare.WORKER, now))  # our own
    ours = _run("RUNNING", workshare.WORKER, now, start=5, run_id="b")
    theirs = _run("RUNNING", "other:1", now, start=5, run_id="a")
    dead = _run("RUNNING", "other:2", now - 100, start=1, run_id="0")
    assert workshare.first_claim([ours, theirs, dead]) is theirs  # same start: the run id decides
    assert workshare.first_claim([ours, dead]) is ours


def _store_runs(home):
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def _harness(*args, env):
    return subprocess.Popen([sys.executable, "-m", "harness", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_workers_split_a_suite_and_train_each_run_once(home):
    env = os.environ | {"KD_HARNESS_HOME": str(home)}
    args = ("run", "--suite", "digits", "--smoke", "--no-progress")
    subprocess.run([sys.executable, "-m", "harness", "teacher", "digits/resnet20", "--smoke", "--no-progress"],
                   env=env, check=True, capture_output=True)
    workers = [_harness(*args, env=env) for _ in range(2)]
    outputs = [w.communicate(timeout=1200) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-2000:] for o in outputs]
    trained = [{line.split(":")[0] for line in out.splitlines() if ": finished;" in line} for out, _ in outputs]
    cells = 7
    assert len(trained[0] | trained[1]) == cells and not trained[0] & trained[1]  # each run trained once
    assert trained[0] and trained[1]  # both workers trained: neither only waited
    _, runs = _store_runs(home)
    students = [r for r in runs if r.data.tags["role"] == "student"]
    assert len(students) == cells and all(r.info.status == "FINISHED" for r in students)


@pytest.mark.slow
def test_a_killed_workers_run_is_taken_over_and_resumed(home):
    env = os.environ | {"KD_HARNESS_HOME": str(home)}
    args = ("run", "--cell", "digits/resnet20-resnet8/baseline", "--epochs", "4", "--no-progress")
    first = _harness(*args, env=env)
    client, deadline = MlflowClient(f"sqlite:///{home / 'mlflow.db'}"), time.time() + 600
    run = None
    while time.time() < deadline:  # wait until its first epoch is logged (and checkpointed)
        time.sleep(1)
        if (home / "mlflow.db").exists():
            _, runs = _store_runs(home)
            run = next((r for r in runs if r.data.tags.get("role") == "student"), None)
            if run is not None and client.get_metric_history(run.info.run_id, "epoch"):
                break
    assert run is not None and run.data.tags["worker"].endswith(f":{first.pid}")
    os.kill(first.pid, signal.SIGKILL)  # no chance to checkpoint or mark the run: a lost machine
    first.wait()
    second = subprocess.run([sys.executable, "-m", "harness", *args], env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from epoch" in second.stderr
    _, runs = _store_runs(home)
    (student,) = [r for r in runs if r.data.tags["role"] == "student"]
    assert student.info.run_id == run.info.run_id and student.info.status == "FINISHED"
    assert student.data.tags["worker"] != run.data.tags["worker"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [0, 1, 2, 3]
