"""A SIGTERM ends the process that trains, after its checkpoint: the harness's handler only asks the
run to stop, and the Interrupted it then raises is not an Exception, so that a test process (pytest)
or a script around `run_cell` ends too instead of going on to its next test (issue #41)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

INNER = '''
from pathlib import Path

from harness import run_cell


def test_trains_until_stopped():
    run_cell("digits/resnet20-resnet8/baseline", smoke=True, epochs=100_000)


def test_after():
    Path("MARKER").write_text("the session went on after the SIGTERM")
'''


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.long
def test_a_sigterm_ends_a_pytest_session_that_trains(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    home = tmp_path / "home"
    env = os.environ | {"KD_HARNESS_HOME": str(home), "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_inner.py"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: any(home.glob("runs/*/checkpoints/ckpt-*")), 300, proc)  # training, handler installed
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # stopped after the step it was in, checkpoint written: pytest's own end for an interruption
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "Interrupted: stopped at epoch" in out, out
    assert not (tmp_path / "MARKER").exists(), out
