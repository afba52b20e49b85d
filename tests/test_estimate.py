"""`harness list --suite S --estimate`: runs and device-hours from a short bench, before launching."""

import re

import timm
from safetensors.torch import save_file

import harness.models  # noqa: F401  (registers the models)
from harness.cli import main
from harness.spec.spec import load_spec


def test_estimate_counts_runs_steps_and_only_uncached_teachers(home, tmp_path, capsys):
    spec = load_spec()
    cells = spec.suites["digits"].cells
    assert main(["list", "--suite", "digits", "--estimate", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"digits: {len(cells)} student runs per seed, 1 teachers to train (0 cached" in out
    rows = dict(re.findall(r"^  (\S+(?: \S+ \S+)?)\s+([\d,]+)\s+[\d.]+\s+[\d.]+$", out, flags=re.M))
    # digits: 1797 images - 360 test - 300 validation = 1137 training images, batch 64: 17 steps x 15 epochs
    assert rows["digits/resnet20-resnet8/kd"] == f"{15 * 17:,}"
    assert rows["digits/resnet20-resnet8/fitnet"] == f"{(15 + 3) * 17:,}"  # FitNet's hint stage: 20% of 15 epochs
    assert rows["teacher digits/resnet20 (digits)"] == f"{15 * 17:,}"
    assert re.search(r"estimated device-hours: [\d.]+ per seed for the students \+ [\d.]+ for the teachers", out)

    # a teacher already in the runs home (imported here) costs nothing
    weights = tmp_path / "resnet20.safetensors"
    save_file(timm.create_model("cifar_resnet20", num_classes=10, in_chans=1).state_dict(), str(weights))
    assert main(["teacher", "digits/resnet20", "--import", str(weights), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["list", "--suite", "digits", "--estimate", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "0 teachers to train (1 cached" in out and "teacher digits" not in out


def test_estimate_needs_a_suite(home, capsys):
    assert main(["list", "--estimate"]) == 2
    assert "--estimate needs --suite" in capsys.readouterr().err
