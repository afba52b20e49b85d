"""Every cell `harness list` prints can run: the methods' own set-up checks, run on the pair's
models and a random batch of the dataset's shape, before any data or training."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import pytest

from harness.cli import main
from harness.running import probe
from harness.running.compat import CACHE_FORMAT, SEED, Keys, library_versions, mismatches, write_seed
from harness.running.probe import cell_mismatch
from harness.spec.cells import Cell
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


def test_verdicts_are_cached_per_cell_and_adding_a_method_checks_only_its_cells(home, monkeypatch):
    cells = [Cell("digits", "resnet20-resnet8", method) for method in ("kd", "at", "fitnet")]
    assert all(v is None for v in mismatches(SPEC, cells, home, seed=None).values())
    stored = json.loads((home / "compat.json").read_text())
    assert set(stored["verdicts"]) == {c.id for c in cells} and len(stored["models"]) == 2  # teacher, student
    stored["verdicts"][cells[0].id][1] = "a verdict only the cache holds"
    (home / "compat.json").write_text(json.dumps(stored))
    assert mismatches(SPEC, cells, home, seed=None)[cells[0].id] == "a verdict only the cache holds"  # read, not recomputed

    # a new method (kd under another name): only its cell is checked, and no model is built
    methods = dict(SPEC.methods) | {"kd_hot": SPEC.methods["kd"]}
    spec = SPEC.model_copy(update={"methods": methods})
    checked = []
    monkeypatch.setattr(probe, "cell_mismatch", lambda spec, cell, *args: checked.append(cell.id))
    monkeypatch.setattr(probe, "model_signature", lambda *args: pytest.fail("a model was built"))
    new = Cell("digits", "resnet20-resnet8", "kd_hot")
    verdicts = mismatches(spec, cells + [new], home, seed=None)
    assert checked == [new.id] and verdicts[cells[0].id] == "a verdict only the cache holds"


def test_a_runs_home_of_an_older_harness_is_checked_afresh(home):
    """compat.json as the harness wrote it before the per-cell cache ({fingerprint, verdicts: cell ->
    None}): `harness list` on such a home crashed; now its cache is set aside."""
    cells = [Cell("digits", "resnet20-resnet8", "kd")]
    home.mkdir(parents=True)
    (home / "compat.json").write_text(json.dumps({"fingerprint": "0" * 16, "verdicts": {cells[0].id: None}}))
    assert mismatches(SPEC, cells, home, seed=None) == {cells[0].id: None}
    assert json.loads((home / "compat.json").read_text())["verdicts"][cells[0].id][1] is None


def test_a_cell_is_checked_again_when_its_pair_changes(home):
    cells = [c for c in SPEC.cells(dataset="digits") if c.pair == "resnet20-resnet8"][:2]
    mismatches(SPEC, cells, home, seed=None)
    pairs = dict(SPEC.pairs)
    pairs["resnet20-resnet8"] = pairs["resnet20-resnet8"].model_copy(
        update={"stages": pairs["resnet20-resnet8"].stages.model_copy(update={"teacher": [99]})})
    changed = SPEC.model_copy(update={"pairs": pairs})
    assert all("stage taps [99] do not fit" in v for v in mismatches(changed, cells, home, seed=None).values())


def test_a_method_from_outside_methods_is_keyed_by_its_file(tmp_path, monkeypatch):
    (tmp_path / "my_kd.py").write_text("from methods.kd import KD as MyKD\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    methods = dict(SPEC.methods) | {"my_kd": SPEC.methods["kd"].model_copy(update={"class_": "my_kd.MyKD"})}
    spec, cell = SPEC.model_copy(update={"methods": methods}), Cell("digits", "resnet20-resnet8", "my_kd")
    before = Keys(spec).cell(cell)
    (tmp_path / "my_kd.py").write_text("from methods.kd import KD as MyKD  # edited\n")
    assert Keys(spec).cell(cell) != before


def seed_of_these_libraries():
    """The seed's keys name the versions of torch, timm and torchvision: another release (a fresh
    install resolving a newer timm) makes every entry stale, correctly, until the seed is rewritten."""
    made_with = json.loads(SEED.read_text())["versions"]
    if made_with != library_versions():
        pytest.skip(f"harness/compat_seed.json was made with {made_with}, this is {library_versions()}: "
                    "bash scripts/seed_compat.sh")


def test_a_cold_list_on_a_fresh_runs_home_is_quick(tmp_path):
    """The first `harness list` of a runs home (CI, a new machine, a container): every answer from the
    shipped seed. CPU seconds of the process, so that other jobs' load does not count."""
    seed_of_these_libraries()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", "--home", str(tmp_path / "home"), "list", "--all"],
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == len(SPEC.cells())
    print(f"cold harness list --all: {cpu:.1f} CPU s, {wall:.1f} s wall")
    assert cpu < 5, f"{cpu:.1f} CPU seconds ({wall:.1f} s wall): is harness/compat_seed.json stale?"


def test_the_shipped_seed_is_what_a_fresh_check_gives(tmp_path):
    """harness/compat_seed.json must be today's answers, computed afresh (never edited by hand)."""
    seed_of_these_libraries()
    write_seed(SPEC, tmp_path / "seed.json")
    assert (tmp_path / "seed.json").read_text() == SEED.read_text(), \
        "harness/compat_seed.json is stale: run bash scripts/seed_compat.sh and commit it"


def test_a_seed_answers_only_for_its_own_keys(tmp_path):
    """An entry under the key of today's code and spec is taken as it is; one under another key (a
    stale seed) is computed again, not believed."""
    cells = SPEC.cells(dataset="digits", method="kd")
    keys = Keys(SPEC)
    seed = {"format": CACHE_FORMAT, "models": {},
            "verdicts": {cells[0].id: [keys.cell(cells[0]), "from the seed"],
                         cells[1].id: ["another-key", "from a stale seed"]}}
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    verdicts = mismatches(SPEC, cells[:2], tmp_path / "home", seed=tmp_path / "seed.json")
    assert verdicts[cells[0].id] == "from the seed"
    assert verdicts[cells[1].id] == cell_mismatch(SPEC, cells[1])


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
