"""Every cell `harness list` prints can run: the methods' own set-up checks, run on the pair's
models and a random batch of the dataset's shape, before any data or training."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.running.compat import fingerprint, mismatches
from harness.running.probe import cell_mismatch
from harness.spec.spec import load_spec

SPEC = load_spec(None)


def test_list_hides_the_cells_a_method_refuses_and_all_says_why(home, capsys):
    assert main(["list", "--dataset", "digits"]) == 0
    listed = capsys.readouterr().out.split()
    for cell in ("digits/hinton1200-hinton800/kd", "digits/resnet20-resnet8/kr", "digits/resnet20-resnet8/at"):
        assert cell in listed
    for cell in ("digits/hinton1200-hinton800/kr", "digits/hinton1200-hinton800/at",
                 "digits/hinton1200-hinton800/fsp"):
        assert cell not in listed
    assert main(["list", "--dataset", "digits", "--all"]) == 0
    everything = capsys.readouterr().out.splitlines()
    assert ("digits/hinton1200-hinton800/kr  # cannot run: kr needs a teacher built of residual stages of "
            "blocks (a CIFAR ResNet)") in everything
    assert any(line.startswith("digits/hinton1200-hinton800/at  # cannot run: at needs spatial feature maps")
               for line in everything)
    assert len(everything) > len(listed)


def test_the_verdicts_are_cached_under_the_spec_and_code_fingerprint(home, capsys):
    cells = SPEC.cells(dataset="digits")[:3]
    assert all(v is None for v in mismatches(SPEC, cells, home).values())
    stored = json.loads((home / "compat.json").read_text())
    assert stored["fingerprint"] == fingerprint(SPEC) and set(stored["verdicts"]) == {c.id for c in cells}
    stored["verdicts"][cells[0].id] = "a verdict only the cache holds"
    (home / "compat.json").write_text(json.dumps(stored))
    assert mismatches(SPEC, cells, home)[cells[0].id] == "a verdict only the cache holds"  # read, not recomputed
    stored["fingerprint"] = "stale"
    (home / "compat.json").write_text(json.dumps(stored))
    assert mismatches(SPEC, cells, home)[cells[0].id] is None  # another spec or code: computed again


@pytest.mark.parametrize("dataset", ["digits", "mnist"])
def test_every_suite_cell_on_the_small_datasets_can_run(dataset):
    probes: dict = {}
    for name, suite in SPEC.suites.items():
        for cell in map(SPEC.cell, suite.cells):
            if cell.dataset == dataset:
                assert cell_mismatch(SPEC, cell, probes) is None, f"suite {name}: {cell.id}"


@pytest.mark.slow
def test_every_suite_cell_can_run():
    probes: dict = {}
    for name, suite in SPEC.suites.items():
        for cell in map(SPEC.cell, suite.cells):
            assert cell_mismatch(SPEC, cell, probes) is None, f"suite {name}: {cell.id}"
