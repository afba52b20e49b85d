"""`harness list --suite S --estimate`: runs and device-hours before launching, analytic (counted FLOPs
for a named target) or measured (a short bench on this device)."""

import re
import resource
import subprocess
import sys
import time

import pytest
import timm
from safetensors.torch import save_file

import harness.models  # noqa: F401  (registers the models)
from harness.cli import main
from harness.performance.flops import model_cost
from harness.spec.spec import load_spec


def test_measured_estimate_counts_runs_steps_and_only_uncached_teachers(home, tmp_path, capsys):
    spec = load_spec()
    cells = spec.suites["digits"].cells
    assert main(["list", "--suite", "digits", "--estimate", "--measure", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"digits: {len(cells)} student runs per seed, 1 teachers to train (0 cached" in out
    assert "measured on CPU" in out and "estimated device-hours (measured)" in out
    rows = dict(re.findall(r"^  (\S+(?: \S+ \S+)?)\s+([\d,]+)\s+[\d.]+\s+[\d.]+$", out, flags=re.M))
    # digits: 1797 images - 360 test - 300 validation = 1137 training images, batch 64: 17 steps x 15 epochs
    assert rows["digits/resnet20-resnet8/kd"] == f"{15 * 17:,}"
    assert rows["digits/resnet20-resnet8/fitnet"] == f"{(15 + 3) * 17:,}"  # FitNet's hint stage: 20% of 15 epochs
    assert rows["teacher digits/resnet20 (digits)"] == f"{15 * 17:,}"
    assert re.search(r"estimated device-hours \(measured\): [\d.]+ per seed for the students \+ [\d.]+ for the teachers", out)

    # a teacher already in the runs home (imported here) costs nothing
    weights = tmp_path / "resnet20.safetensors"
    save_file(timm.create_model("cifar_resnet20", num_classes=10, in_chans=1).state_dict(), str(weights))
    assert main(["teacher", "digits/resnet20", "--import", str(weights), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["list", "--suite", "digits", "--estimate"]) == 0  # analytic: the same teachers are cached
    out = capsys.readouterr().out
    assert "0 teachers to train (1 cached" in out and "teacher digits" not in out


def test_estimate_needs_a_suite(home, capsys):
    assert main(["list", "--estimate"]) == 2
    assert "--estimate needs --suite" in capsys.readouterr().err


def test_a_networks_flops_are_counted_on_shapes_alone():
    """ResNet-32x4 on CIFAR: 1.08 G multiply-adds per image forward (RepDistiller's figure), 2 FLOPs each;
    a training step's forward and backward about three times that."""
    spec = load_spec()
    cost = model_cost(spec.models["resnet32x4"], spec.datasets["cifar100"])
    assert cost.forward_flops == pytest.approx(2 * 1.083e9, rel=0.01)
    assert cost.train_flops == pytest.approx(3 * cost.forward_flops, rel=0.01)
    assert 0 < cost.forward_ops < cost.train_ops


def analytic_hours(out: str) -> float:
    found = re.search(r"estimated device-hours \(analytic\): [\d.]+ per seed .* = ([\d.]+) for one seed", out)
    return float(found.group(1))


def test_an_analytic_estimate_of_a_cifar_suite_answers_in_seconds(tmp_path):
    """crd_table1 for an H100, on a fresh runs home (its cells' compatibility checked first); CPU
    seconds of the process, so that other jobs' load does not count."""
    def estimate(target: str) -> str:
        command = [sys.executable, "-m", "harness", "--home", str(tmp_path / "home"), "list", "--suite", "crd_table1",
                   "--estimate", "--for", target]
        return subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)

    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    h100 = estimate("h100")
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(f"crd_table1 --estimate --for h100 on a fresh runs home: {cpu:.1f} CPU s, {wall:.1f} s wall")
    assert cpu < 30, f"{cpu:.1f} CPU seconds"
    assert "analytic, for NVIDIA H100 SXM (--for h100)" in h100.stdout
    assert "counting the FLOPs of cifar100/resnet32x4" in h100.stderr  # the progress lines
    rows = re.findall(r"^  cifar100/\S+\s+[\d,]+\s+[\d.]+\s+[\d.]+$", h100.stdout, flags=re.M)
    assert len(rows) == len(load_spec().suites["crd_table1"].cells)
    # the same counts at another target's throughput: two CPU cores, far slower
    assert analytic_hours(h100.stdout) < analytic_hours(estimate("cpu").stdout) / 100
