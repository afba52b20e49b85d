"""torchrun --nproc-per-node 2 -m harness run: DistributedDataParallel over gloo on CPU.

The MLP pair has no batch norm, so two ranks on half-batches must train the same model as one
process on the whole batch, up to rounding; rank 0 alone writes MLflow and checkpoints; a stop
reaches every rank at the same step and the run resumes to the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness.errors import UserError
from harness.running.runner import Runner
from harness.spec.options import RunOptions
from harness.spec.spec import load_spec
from harness.training import distributed

pytestmark = pytest.mark.long  # torchrun process groups that train: minutes

REPO = Path(__file__).resolve().parent.parent
MLP_CELL = "digits/hinton1200-hinton800/kd"


def harness_command(home: Path, args: list[str], nproc: int | None = 2, **popen):
    env = dict(os.environ, KD_HARNESS_HOME=str(home), OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                "-m"] if nproc else [sys.executable, "-m"]  # --standalone: a free local port
    return subprocess.Popen(launcher + ["harness"] + args + ["--no-progress"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run(home: Path, args: list[str], nproc: int | None = 2) -> subprocess.CompletedProcess:
    process = harness_command(home, args, nproc)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def student_runs(home: Path):
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.role = 'student'")
    return client, runs


def history(client, run, key):
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def test_two_ranks_train_the_same_model_as_one_process(tmp_path):
    args = ["run", "--cell", MLP_CELL, "--epochs", "3", "--teacher-epochs", "2"]
    ddp = run(tmp_path / "ddp", args)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("finished; test top-1") == 1  # rank 0 speaks for both
    single = run(tmp_path / "single", args, nproc=None)
    assert single.returncode == 0, single.stderr[-3000:]
    client, (ddp_run,) = student_runs(tmp_path / "ddp")
    single_client, (single_run,) = student_runs(tmp_path / "single")
    assert ddp_run.info.status == "FINISHED"
    params = ddp_run.data.params
    assert params["distributed.world_size"] == "2" and params["distributed.backend"] == "gloo"
    assert params["world_size"] == "2" and "world_size" not in single_run.data.params
    assert params["recipe.lr"] == single_run.data.params["recipe.lr"]  # the global batch keeps the lr
    for key in ("train/loss", "train/loss_kd", "train/top1", "val/top1", "test/top1"):
        ours, reference = history(client, ddp_run, key), history(single_client, single_run, key)
        assert len(ours) == 3  # each epoch logged once, by rank 0
        assert ours == pytest.approx(reference, rel=1e-4, abs=1e-3), key


def test_batch_norm_pair_with_a_hint_phase_under_two_ranks(tmp_path):
    """fitnet's hint stage leaves the classifier unused: DDP must be told, and must cope."""
    result = run(tmp_path, ["run", "--cell", "digits/resnet20-resnet8/fitnet", "--smoke"])
    assert result.returncode == 0, result.stderr[-3000:]
    client, (student,) = student_runs(tmp_path)
    assert student.info.status == "FINISHED"
    assert len(history(client, student, "train/loss")) == 2  # hint stage + main stage


def test_a_stop_reaches_both_ranks_and_the_run_resumes_to_the_same_result(tmp_path):
    args = ["run", "--cell", MLP_CELL, "--epochs", "40", "--teacher-epochs", "1"]
    reference = run(tmp_path / "reference", args)
    assert reference.returncode == 0, reference.stderr[-3000:]
    home = tmp_path / "stopped"
    process = harness_command(home, args, start_new_session=True)
    deadline = time.time() + 300
    while not list(home.glob("runs/*/checkpoints/ckpt-000002.pt")) or len(list(home.glob("teachers/*"))) == 0:
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    client, runs = student_runs(home)
    os.killpg(process.pid, signal.SIGTERM)  # as a scheduler would: every process of the job
    process.communicate(timeout=120)
    assert process.returncode != 0
    client, (stopped,) = student_runs(home)
    assert stopped.info.status == "KILLED"
    epochs_done = len(history(client, stopped, "train/loss"))
    assert 0 < epochs_done < 40
    resumed = run(home, args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from epoch" in resumed.stderr
    client, (finished,) = student_runs(home)
    ref_client, (uninterrupted,) = student_runs(tmp_path / "reference")
    assert finished.info.run_id == stopped.info.run_id
    for key in ("val/top1", "test/top1"):  # the same weights, epoch after epoch
        assert history(client, finished, key) == history(ref_client, uninterrupted, key), key
    # the interrupted epoch's mean loss adds the ranks' partial sums in another order: rounding only
    resumed_losses = history(client, finished, "train/loss")
    assert resumed_losses == pytest.approx(history(ref_client, uninterrupted, "train/loss"), rel=1e-6)
    assert resumed_losses[-1] == history(ref_client, uninterrupted, "train/loss")[-1]


def test_the_batch_must_divide_into_the_ranks(home):
    runner = Runner(load_spec(), home, f"sqlite:///{home / 'mlflow.db'}", distributed.Context(0, 3, 0))
    with pytest.raises(UserError, match="does not divide into 3 processes"):
        runner.plan(runner.spec.cell(MLP_CELL), RunOptions(smoke=True))
