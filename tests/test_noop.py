"""A finished cell answered without torch or MLflow (harness/running/noop.py), and never wrongly."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

from mlflow.tracking import MlflowClient

from harness.running import noop
from harness.spec.options import RunOptions
from harness.spec.spec import load_spec

CELL = "digits/hinton1200-hinton800/baseline"
ASK = ("run", "--cell", CELL, "--smoke", "--no-progress")
PROBE = ("import sys; from harness.cli import main; code = main(sys.argv[1:]); "
         "print('imported torch:', 'torch' in sys.modules, 'mlflow:', 'mlflow' in sys.modules); sys.exit(code)")


def _ask(home, *argv):
    return subprocess.run([sys.executable, "-c", PROBE, "--home", str(home), *argv], capture_output=True, text=True,
                          timeout=600)


def test_a_finished_cell_is_answered_without_torch_or_mlflow_and_a_deleted_one_is_not(home):
    first = _ask(home, *ASK)
    assert first.returncode == 0 and ": finished;" in first.stdout, first.stderr[-2000:]
    again = _ask(home, *ASK)
    assert again.returncode == 0 and ": already finished;" in again.stdout
    assert "imported torch: False mlflow: False" in again.stdout
    assert again.stdout.split("MLflow run ")[1].split()[0] == first.stdout.split("MLflow run ")[1].split()[0]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run_id = first.stdout.split("MLflow run ")[1].split()[0]
    client.delete_run(run_id)  # the store decides: a deleted run is no longer an answer
    third = _ask(home, *ASK)
    assert third.returncode == 0 and ": finished;" in third.stdout and "imported torch: True" in third.stdout
    assert run_id not in third.stdout


def test_the_request_key_follows_the_options_the_spec_and_the_code(monkeypatch):
    spec = load_spec()
    base = noop.request_key(noop.fingerprint(spec), CELL, RunOptions(smoke=True))
    assert noop.request_key(noop.fingerprint(spec), CELL, RunOptions(smoke=True, progress=False)) == base
    assert noop.request_key(noop.fingerprint(spec), CELL, replace(RunOptions(smoke=True), seed=1)) != base
    assert noop.request_key(noop.fingerprint(spec), CELL, RunOptions(smoke=True, epochs=3)) != base
    other = spec.model_copy(update={"recipes": {k: v.model_copy(update={"lr": v.lr * 2})
                                                for k, v in spec.recipes.items()}})
    assert noop.fingerprint(other) != noop.fingerprint(spec)
    before = noop.fingerprint(spec)
    monkeypatch.setattr(noop, "CODE", noop.CODE[1:])  # another version of the code
    assert noop.fingerprint(spec) != before
