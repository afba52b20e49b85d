"""On a GPU (`python -m pytest -m cuda`): every method under fp32/bf16/fp16, bit-identical resume
with --deterministic, a one-process torchrun, and peak memory counted per run. The default run
hides GPUs (tests/conftest.py), so these skip there, saying why. Like the acceptance check, they
run where the lent machine has no mlflow or optuna (no store is touched), and no command of theirs
outlasts the 600 s that machine allows one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.performance.matrix import method_matrix
from harness.performance.resume_check import resume_check
from harness.running.runner import Runner
from harness.spec.spec import load_spec

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with -m cuda on one)")]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def runner(tmp_path):
    return Runner(load_spec(), tmp_path, f"sqlite:///{tmp_path / 'unused.db'}")


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_every_method_trains_finite_on_cuda(runner, amp):
    rows = method_matrix(runner, "cuda", {amp: {"amp": amp}}, steps=3)
    assert [r for r in rows if r["status"] != "ok"] == []


def test_a_killed_run_resumes_bit_identically_on_cuda():
    record = resume_check("cuda", "digits/hinton1200-hinton800/kd", 4)
    assert record["status"] == "ok", record


TORCHRUN_CHILD = """
from harness.performance.bench import untrained_teachers
from harness.running.runner import Runner
from harness.spec.options import RunOptions
from harness.spec.spec import load_spec
from harness.training import distributed
import sys
context = distributed.from_environment("cuda")
runner = Runner(load_spec(), sys.argv[1], "sqlite:///unused.db", context=context)
plan = runner.plan(runner.spec.cell("digits/resnet20-resnet8/kd"), RunOptions(smoke=True, progress=False, device="cuda"))
plan.trainer(untrained_teachers(runner, plan)).run()
print("trained on", plan.device)
distributed.shutdown()
"""


def test_one_process_torchrun_trains_a_cell_on_cuda(tmp_path):
    (tmp_path / "child.py").write_text(TORCHRUN_CHILD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                             str(tmp_path / "child.py"), str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=540)
    assert result.returncode == 0 and "trained on cuda" in result.stdout, result.stderr[-3000:]


def test_peak_memory_is_counted_per_run(runner):
    from harness.spec.options import RunOptions

    plan = runner.plan(runner.spec.cell("digits/resnet20-resnet8/baseline"), RunOptions(smoke=True, device="cuda"))
    big = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB before the run
    del big
    summary = plan.trainer(None).run()
    assert summary["peak_memory_mb"] < 1024
