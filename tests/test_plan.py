"""RunPlan: a cell resolved once, reading no data. The run keys of runs made before the plan
existed are pinned: a finished run must stay finished after any reshaping of harness/."""

from __future__ import annotations

import pytest

from harness.running.runner import Runner
from harness.spec.options import RunOptions
from harness.spec.spec import load_spec

# (cell, options) -> run_key, each read off a FINISHED run made by commits before RunPlan
# (6c3cb73, 27b56fa: the NMT Table 1 and LPL Table III runs; ddfc024: smoke runs)
PINNED = [
    ("mnist/hinton1200-hinton800/kd", dict(seed=0, suite="nmt_table1"), "a045890ffd604544"),
    ("mnist/hinton1200-hinton800/fitnet", dict(seed=1, suite="nmt_table1"), "847e04b0e0822ead"),
    ("mnist/hinton1200-hinton800/baseline", dict(seed=0, suite="nmt_table1"), "cf30199ea518c084"),
    ("mnist/maxout3-maxout6/lpl", dict(seed=0, epochs=2, teacher_epochs=2, teacher_cache=True), "c9fabc71178a0cc0"),
    ("digits/resnet20-resnet8/kr", dict(smoke=True), "c607729449170dad"),
    ("digits/resnet20-resnet8/fitnet", dict(smoke=True), "dbacf3c91ebe42b8"),
    ("digits/hinton1200x3-hinton800/mt", dict(smoke=True), "35264f63bcc5da4f"),
]


@pytest.mark.parametrize("cell, options, key", PINNED, ids=[p[0] for p in PINNED])
def test_run_keys_of_earlier_runs_are_unchanged(home, tmp_path, cell, options, key):
    runner = Runner(load_spec(), home, f"sqlite:///{home / 'mlflow.db'}")
    opts = RunOptions(device="cpu", data_root=str(tmp_path / "no-data-here"), **options)
    plan = runner.plan(runner.spec.cell(cell), opts)  # no data read: the folder does not even exist
    assert plan.run_key == key
    assert not (tmp_path / "no-data-here").exists() and not (home / "teachers").exists()


def test_a_suite_sets_a_method_per_pair_over_its_method_wide_value(home, tmp_path):
    """ReviewKD's script weights its loss per pair (reviewKD.sh): reviewkd_cifar100's pair_overrides."""
    runner = Runner(load_spec(), home, f"sqlite:///{home / 'mlflow.db'}")

    def lam(cell, **options):
        opts = RunOptions(device="cpu", data_root=str(tmp_path), **options)
        return runner.plan(runner.spec.cell(cell), opts).objective.parts["reviewkd"].params.lam

    assert lam("cifar100/resnet56-resnet20/reviewkd", suite="reviewkd_cifar100") == 0.6   # the pair's
    assert lam("cifar100/resnet32x4-resnet8x4/reviewkd", suite="reviewkd_cifar100") == 5.0  # the suite's
    assert lam("cifar100/resnet56-resnet20/reviewkd") == 1.0                                # the method's default
    assert lam("cifar100/resnet56-resnet20/reviewkd", suite="reviewkd_cifar100",
               overrides={"reviewkd": {"lam": 2.0}}) == 2.0                                 # the user's --set


def test_an_explicit_epoch_count_wins_over_smokes_one_epoch():
    from harness.running.plan import shortened

    recipe = load_spec().recipes["digits"]
    assert shortened(recipe, None, smoke=True).epochs == 1
    assert shortened(recipe, 6, smoke=True).epochs == 6 and shortened(recipe, 6, smoke=True).batch_size == 32
    assert shortened(recipe, 6, smoke=False).epochs == 6
