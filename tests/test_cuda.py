"""On a GPU (`python -m pytest -m cuda`): every method under fp32/bf16/fp16, bit-identical resume
with --deterministic, a one-process torchrun, and peak memory counted per run. The default run
hides GPUs (tests/conftest.py), so these skip there, saying why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.performance.acceptance import main as acceptance, method_matrix
from harness.running.runner import Runner
from harness.spec.spec import load_spec

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with -m cuda on one)")]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def runner(tmp_path):
    return Runner(load_spec(), tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_every_method_trains_finite_on_cuda(runner, amp):
    rows = method_matrix(runner, "cuda", {amp: {"amp": amp}}, steps=3)
    assert [r for r in rows if r["status"] != "ok"] == []


def test_a_killed_run_resumes_bit_identically_on_cuda(tmp_path):
    assert acceptance(["--device", "cuda", "--out", str(tmp_path), "--bench-steps", "3"]) in (0, 1)
    report = __import__("json").loads((tmp_path / "acceptance.json").read_text())
    assert report["resume"]["identical"], report["resume"]


def test_one_process_torchrun_trains_a_cell_on_cuda(tmp_path):
    env = dict(os.environ, KD_HARNESS_HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                             "-m", "harness", "run", "--cell", "digits/resnet20-resnet8/kd", "--smoke", "--no-progress"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_peak_memory_is_counted_per_run(runner):
    from harness.spec.options import RunOptions

    plan = runner.plan(runner.spec.cell("digits/resnet20-resnet8/baseline"), RunOptions(smoke=True, device="cuda"))
    big = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB before the run
    del big
    summary = plan.trainer(None).run()
    assert summary["peak_memory_mb"] < 1024
