"""The GPU acceptance check on a CPU, so that its first GPU run proves something (issues #27, #38):
its budgets, its resume check (which must be able to fail), its timers, no host reads inside a
method's step, the commit where .git is absent, and the whole script under the lent machine's
missing packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from harness.performance import bench
from harness.performance.acceptance import COMPILE_SET
from harness.performance.matrix import method_matrix
from harness.performance.resume_check import resume_check
from harness.running.runner import Runner
from harness.spec.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
SPEC = load_spec()


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return Runner(SPEC, home, f"sqlite:///{home / 'unused.db'}")


def test_the_compile_budget_counts_the_whole_section(runner, monkeypatch):
    """Each compile takes 1 s here (a stand-in for inductor): a 0.5 s budget runs the first compiled
    cell and no other (the budget once measured only the last step, so every cell ran)."""
    def slow_compile(fn, **kwargs):
        time.sleep(1.0)
        return fn

    monkeypatch.setattr(torch, "compile", slow_compile)
    rows = method_matrix(runner, "cpu", COMPILE_SET, steps=1, methods=["kd", "at", "fitnet"], budget_s=0.5)
    assert [r["status"] for r in rows] == ["ok"] + ["not run: past the section's 0.5 s"] * 2


def test_the_matrix_stops_at_the_checks_deadline_and_reports_each_method(runner):
    seen = []
    rows = method_matrix(runner, "cpu", {"fp32": {}}, steps=1, methods=["kd", "at"],
                         deadline=time.perf_counter() - 1, on_method=lambda rows: seen.append(len(rows)))
    assert [r["status"] for r in rows] == ["not run: past the check's budget"] * 2 and seen == [1, 2]


@pytest.mark.long
def test_no_method_reads_a_device_value_on_the_host_inside_a_step(runner):
    """Every method's training step (forward, backward, optimizer steps) in fp32: no Tensor.item,
    tolist, bool, int or float from the harness's or a method's code (each is a GPU sync). kr read
    its threshold with .item() in every backward, and mls's linalg.solve checked its status."""
    rows = method_matrix(runner, "cpu", {"fp32": {}}, steps=1)
    assert {r["method"] for r in rows} == set(SPEC.methods)
    assert [r for r in rows if r["status"] != "ok" or r["host_reads_per_step"]] == []


OLD_KR_BACKWARD = """
def backward(ctx, grad):
    (theta,) = ctx.saved_tensors
    p_low, enhance = ctx.shape
    magnitude = grad.abs()
    mean_magnitude = magnitude.mean()
    if theta.item() <= 0:
        theta.data.fill_(mean_magnitude.item())
    below = magnitude < theta
    gain = power_(magnitude.div_(theta.clamp_min(1e-12)), p_low).masked_fill_(~below, enhance)
    return gain.mul_(grad), (theta - mean_magnitude).reshape(theta.shape), None, None
"""


def test_the_host_read_counter_sees_a_read_in_a_methods_backward(runner, monkeypatch):
    """The counter can fail: kr's backward as it was (reading its threshold with .item()), compiled
    as methods/kr.py, is counted."""
    from methods import kr

    namespace = {"power_": kr.power_}
    exec(compile(OLD_KR_BACKWARD, kr.__file__, "exec"), namespace)
    monkeypatch.setattr(kr.SparseRecode, "backward", staticmethod(namespace["backward"]))
    (row,) = method_matrix(runner, "cpu", {"fp32": {}}, steps=1, methods=["kr"])
    assert row["host_reads_per_step"] >= 1 and row["host_reads"] == [f"Tensor.item in {kr.__file__}:backward"]  # per gated stage


def test_mls_solves_without_a_checked_solver(monkeypatch):
    from methods.mls import mls_project

    def checked(*args, **kwargs):
        raise AssertionError("torch.linalg.solve reads its status on the host")

    monkeypatch.setattr(torch.linalg, "solve", checked)
    points = torch.randn(2, 40, 6, requires_grad=True)
    mls_project(points, dim=2, neighbours=8).sum().backward()
    assert torch.isfinite(points.grad).all()


@pytest.mark.long
def test_the_resume_check_kills_mid_training_and_fails_a_broken_resume():
    """A kill timed from the child's progress (its first epoch reported) lands in the second of 4
    epochs: SIGKILL, resumed from epoch 1, the same history; with the optimizer's state dropped on
    resuming, the check fails."""
    good = resume_check("cpu", "digits/hinton1200-hinton800/kd", 4)
    assert good["status"] == "ok", good
    assert good["exit_signal"] == "SIGKILL" and good["resumed_from"] == [1, 0] and good["epochs_logged"] == [4, 4]
    broken = resume_check("cpu", "digits/hinton1200-hinton800/kd", 4, forget_optimizer=True)
    assert broken["exit_signal"] == "SIGKILL" and broken["resumed_from"] == [1, 0]
    assert broken["status"] == "FAIL: the resumed run's history differs" and broken["max_abs_diff"]["train/loss"] > 0


class PrefetchingLoader:
    """DataLoader's shape: `workers` threads, each decoding a batch in `seconds`, at most `ahead`
    batches ahead of the consumer, started by the first draw."""

    def __init__(self, workers: int, ahead: int, seconds: float, total: int):
        self.workers, self.ahead, self.seconds, self.total = workers, ahead, seconds, total
        self.ready = self.taken = self.issued = 0
        self.lock = threading.Condition()
        self.threads: list[threading.Thread] = []

    def _work(self):
        while True:
            with self.lock:
                self.lock.wait_for(lambda: self.issued >= self.total or self.issued < self.taken + self.ahead)
                if self.issued >= self.total:
                    return
                self.issued += 1
            time.sleep(self.seconds)
            with self.lock:
                self.ready += 1
                self.lock.notify_all()

    def next_batch(self):
        if not self.threads:
            self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)]
            for thread in self.threads:
                thread.start()
        with self.lock:
            self.lock.wait_for(lambda: self.ready > self.taken)
            self.taken += 1
            self.lock.notify_all()


def test_the_folder_timer_reads_the_steady_state_not_the_prefetched_batches():
    """8 workers at 80 ms a batch decode 100 batches/s. Timed as before (the first of 8 batches, then
    the 7 that the workers had decoded beside it) it read several times that; the steady window reads
    the workers' pace."""
    workers, seconds = 8, 0.08
    truth = workers / seconds
    old = PrefetchingLoader(workers, workers * bench.PREFETCH_FACTOR, seconds, total=8)
    assert bench.steady_images_per_s(old.next_batch, 1, 1, 7, torch.device("cpu")) > 3 * truth
    warmup, timed = bench.steady_window(workers)
    assert warmup >= workers * bench.PREFETCH_FACTOR and timed >= 4 * warmup
    loader = PrefetchingLoader(workers, workers * bench.PREFETCH_FACTOR, seconds, total=warmup + timed)
    assert 0.7 * truth < bench.steady_images_per_s(loader.next_batch, 1, warmup, timed, torch.device("cpu")) < 1.1 * truth


def test_the_commit_comes_from_the_environment_or_a_commit_file_without_git(tmp_path, monkeypatch):
    from harness.tracking.provenance import _git_state

    monkeypatch.delenv("KD_HARNESS_COMMIT", raising=False)
    assert _git_state(tmp_path) == ("unknown", False)  # a copied tree, nothing stated
    (tmp_path / "COMMIT").write_text("a" * 40 + "+dirty\n")  # as scripts/gpu_carry.sh writes it
    assert _git_state(tmp_path) == ("a" * 40, True)
    monkeypatch.setenv("KD_HARNESS_COMMIT", "b" * 40)
    assert _git_state(tmp_path) == ("b" * 40, False)


def test_the_cublas_workspace_is_set_when_the_harness_is_imported():
    """torch reads it once, at its first cuBLAS call: set at import, before any entry point runs."""
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    code = "import os, harness.performance.acceptance; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == ":4096:8", result.stderr[-2000:]


def test_the_cuda_tests_do_not_need_mlflow_and_stay_under_the_command_limit():
    text = (REPO / "tests" / "test_cuda.py").read_text()
    assert '"harness", "run"' not in text and "mlflow" not in text.replace("no mlflow", "")
    timeouts = [int(t) for t in __import__("re").findall(r"timeout=(\d+)", text)]
    assert timeouts and max(timeouts) <= 540


def stand_ins(folder: Path) -> Path:
    """Modules that raise ImportError for what the lent machine lacks."""
    folder.mkdir()
    for name in ("mlflow", "optuna", "submitit", "psutil"):
        (folder / f"{name}.py").write_text(f"raise ImportError('no {name} on the lent GPU machine')\n")
    return folder


@pytest.mark.long
def test_the_acceptance_script_runs_on_the_cpu_without_mlflow_or_optuna(tmp_path):
    out = tmp_path / "acceptance"
    env = {k: v for k, v in os.environ.items() if k != "KD_HARNESS_DATA"}
    env["PYTHONPATH"] = str(stand_ins(tmp_path / "absent"))
    started = time.perf_counter()
    # the CPU compiles nothing by default
    result = subprocess.run(["bash", "scripts/gpu_acceptance.sh", "--device", "cpu", "--budget", "420", "--sections",
                             "resume", "bench", "folder", "methods", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert time.perf_counter() - started < 420 + 90
    assert sorted(p.name for p in out.iterdir()) == ["ACCEPTANCE.md", "acceptance.json", "acceptance.log"]
    report = json.loads((out / "acceptance.json").read_text())
    assert not report["errors"] and report["sections"].pop("compile") == "not asked for"
    assert all(s.startswith("done") for s in report["sections"].values()), report["sections"]
    assert {row["method"] for row in report["methods"]} == set(SPEC.methods)
    assert all(row["status"] == "ok" and row["host_reads_per_step"] == 0 for row in report["methods"])
    assert {row["options"] for row in report["methods"]} == {"fp32"}  # the CPU's: tests/test_gpu_path.py checks AMP
    resume = report["resume"]
    assert resume["status"] == "ok" and resume["exit_signal"] == "SIGKILL" and resume["resumed_from"] == [1, 0]
    assert report["bench"][0]["harness_over_bare"] > 0 and report["bench"][0]["epoch_seconds_50k"] > 0
    assert report["folder"]["images_per_s"] > 0 and report["versions"]["git_commit"] != "unknown"
    text = (out / "ACCEPTANCE.md").read_text()
    assert "## Every method under each option set" in text and "harness kd step / bare kd loop" in text


def test_the_script_stops_at_its_budget_with_a_report(tmp_path):
    """Past its budget no section starts: each says so in the report, and the script exits 0."""
    out = tmp_path / "acceptance"
    result = subprocess.run(["bash", "scripts/gpu_acceptance.sh", "--device", "cpu", "--budget", "0",
                             "--sections", "bench", "methods", str(out)], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "acceptance.json").read_text())
    assert report["sections"] == {"resume": "not asked for", "bench": "not run: past the budget", "folder": "not asked for",
                                  "methods": "not run: past the budget", "compile": "not asked for"}
    assert report["versions"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and "## Sections" in (out / "ACCEPTANCE.md").read_text()


@pytest.mark.long
def test_the_script_is_stopped_at_its_hard_limit_and_exits_0_with_its_report(tmp_path):
    """A section that outlasts budget + grace (a resume check of 2,000 epochs) is killed: the report
    written so far stays, says it was stopped, and the exit is 0."""
    out = tmp_path / "acceptance"
    env = dict(os.environ, KD_ACCEPTANCE_GRACE_S="15")
    result = subprocess.run(["bash", "scripts/gpu_acceptance.sh", "--device", "cpu", "--budget", "30", "--sections",
                             "resume", "--epochs", "2000", str(out)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((out / "acceptance.json").read_text())["sections"]["resume"] == "running"
    assert "Killed at the hard limit of 45 s" in (out / "ACCEPTANCE.md").read_text()
