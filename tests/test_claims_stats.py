"""The audit's statistics and conventions: TOST, Hedges' g and the seeds-needed power figure against
independent computations; the equivalent verdict; a paper's convention (best test epoch, median of
runs) against our own figure; the tuning flag; the seeds plan; the forest plots."""

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats as sp

from harness.cli import main
from harness.results import audit as aud
from harness.results import report as rep
from harness.results import stats
from harness.spec.spec import DEFAULT_SPEC, load_spec

SETTING = "digits/resnet20-resnet8"
BASE, KD, AT, FITNET, NST = (f"{SETTING}/{m}" for m in ("baseline", "kd", "at", "fitnet", "nst_poly"))
LAST = {BASE: [90.0, 90.1, 89.9], KD: [92.0, 90.0, 91.0], AT: [90.05, 89.95, 90.0]}


# ---- the statistics against independent computations ----------------------------------------------
def test_tost_is_two_one_sided_welch_tests_written_out():
    a, b, m = pd.Series([90.3, 90.1, 90.4, 90.2]), pd.Series([90.0, 90.2, 89.9]), 0.5
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)  # variances of the means
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch–Satterthwaite
    diff, se = a.mean() - b.mean(), math.sqrt(va + vb)
    lower = sp.t.sf((diff + m) / se, df)  # H0: diff <= -m
    upper = sp.t.cdf((diff - m) / se, df)  # H0: diff >= +m
    assert stats.tost(a, b, m) == pytest.approx(max(lower, upper))
    # a 0.22-point difference: Welch cannot tell it from zero, TOST places it within ±0.5
    assert stats.welch(a, b).verdict == "inconclusive" and stats.tost(a, b, m) < stats.ALPHA
    assert stats.tost(a + 2.0, b, m) > 0.5  # 2 points apart: not within ±0.5
    assert math.isnan(stats.tost(a[:1], b, m))  # one seed: no spread to test with


def test_hedges_g_against_a_hand_computation():
    # s1 = s2 = 0.5, so d = 5 / 0.5 = 10; df = 4: J = Γ(2) / (√2 Γ(3/2)) = 1 / (√2 · √π / 2) = √(2/π)
    g = stats.hedges_g(pd.Series([95.0, 95.5, 94.5]), pd.Series([90.0, 90.5, 89.5]))
    assert g == pytest.approx(10 * math.sqrt(2 / math.pi))
    # unequal sizes: means 2.5 and 4, squared deviations 5 and 8, pooled std √(13/5); df = 5:
    # J = Γ(2.5) / (√2.5 Γ(2)) = (3/4)√π / √2.5
    j = 0.75 * math.sqrt(math.pi) / math.sqrt(2.5)
    assert stats.hedges_g(pd.Series([1.0, 2.0, 3.0, 4.0]), pd.Series([2.0, 4.0, 6.0])) == \
        pytest.approx(j * -1.5 / math.sqrt(13 / 5))
    assert math.isnan(stats.hedges_g(pd.Series([1.0, 1.0]), pd.Series([1.0, 1.0])))  # no spread


def test_seeds_needed_matches_cohens_table_and_a_simulation():
    # Cohen (1988), Table 2.4.1: two-sided α = 0.05, power 0.80: n = 64, 26, 17 a side for d = 0.5, 0.8, 1.0
    assert [stats.seeds_needed(d, 1.0) for d in (0.5, 0.8, 1.0)] == [64, 26, 17]
    assert stats.seeds_needed(-1.0, 2.0) == 64  # only |Δ| / σ counts
    assert stats.seeds_needed(math.nan, 1.0) is None and stats.seeds_needed(1.0, 0.0) is None
    assert stats.seeds_needed(0.01, 1.0) is None  # far beyond MAX_SEEDS
    # the noncentral-t power against simulated experiments: 17 seeds a side, d = 1
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, (20000, 17)), rng.normal(0.0, 1.0, (20000, 17))
    simulated = (sp.ttest_ind(a, b, axis=1).pvalue < stats.ALPHA).mean()
    assert stats.power(1.0, 1.0, 17) == pytest.approx(simulated, abs=0.01)
    assert stats.power(1.0, 1.0, 16) < stats.POWER <= stats.power(1.0, 1.0, 17)


# ---- a store of known runs ---------------------------------------------------------------------------
def _log(client, experiment, cell, last, tags=None, max_test=None, history=None):
    for seed, value in enumerate(last):
        run = client.create_run(experiment, tags={"role": "student", "cell": cell, "seed": str(seed),
                                                  "smoke": "False"} | (tags or {}))
        params = {"recipe_name": "digits", "recipe.epochs": "3", "phases.main": "3", "env.device_name": "test-cpu",
                  "env.git_commit": "abcdef0123456789", "env.device": "cpu", "env.torch": "2.14.1"}
        summary = {"test_top1_last": value, "test_top5_last": 100.0, "test_top1_best_val": value - 0.5,
                   "test_top5_best_val": 100.0, "wall_seconds": 6.0, "mean_epoch_seconds": 20.0,
                   "peak_memory_mb": 1.0, "extra_parameters": 0, "student_parameters": 1}
        if max_test is not None:
            summary |= {"test_top1_max_test": value + max_test, "test_top5_max_test": 100.0}
        curve = history(value) if history is not None else [value - 1, value]
        metrics = [Metric(k, v, 0, 3) for k, v in summary.items()]
        metrics += [Metric("test/top1", v, 0, e) for e, v in enumerate(curve)]
        metrics += [Metric("test/top5", 100.0, 0, e) for e in range(len(curve))]
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()], metrics=metrics,
                         tags=[RunTag("mlflow.runName", cell)])
        client.set_terminated(run.info.run_id, "FINISHED")


@pytest.fixture
def store(home, tmp_path):
    """BASE, KD, AT at known accuracies; KD retrained from a 20-trial sweep, whose summary lacks the best
    test epoch (an older engine): its per-epoch history has it, after a pre-training epoch that must not count."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.create_experiment("kd-harness")
    _log(client, experiment, BASE, LAST[BASE], max_test=1.0)
    _log(client, experiment, AT, LAST[AT], max_test=1.0)
    _log(client, experiment, KD, LAST[KD], tags={"from_sweep": "kd-study", "sweep_trial": "7"},
         history=lambda v: [99.9, v - 2, v + 0.5, v])
    _log(client, experiment, NST, [91.0, 91.2], history=lambda v: [])  # neither the summary nor a history
    parent = client.create_run(experiment, tags={"role": "sweep", "study": "kd-study", "cell": KD})
    for name, count in (("complete", 15), ("pruned", 4), ("fail", 1)):
        client.log_metric(parent.info.run_id, f"trials_{name}", count, step=0)
    client.set_terminated(parent.info.run_id, "FINISHED")
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    refs = [{"cell": KD, "value": 91.5, "metric": "top1", "source": "T, KD"},
            {"cell": BASE, "value": 90.0, "metric": "top1", "source": "T, baseline"}]
    claims = [{"better": "kd", "than": "baseline", "setting": SETTING, "source": "T"},
              {"better": "at", "than": "baseline", "setting": SETTING, "source": "T"},
              {"better": "fitnet", "than": "baseline", "setting": SETTING, "source": "T"}]
    raw["suites"]["plain"] = {"title": "Plain", "source": "T", "cells": [BASE, KD, AT, FITNET],
                              "references": refs, "claims": claims}
    raw["suites"]["conv"] = {"title": "Conv", "source": "T", "cells": [BASE, KD, NST], "references": refs,
                             "claims": claims[:1] + [{"better": "nst_poly", "than": "baseline", "setting": SETTING,
                                                      "source": "T"}],
                             "convention": {"selection": "best-test", "aggregate": "median-of-k", "k": 3}}
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(raw))
    return uri, path


def test_equivalent_is_a_verdict_apart_from_inconclusive(store):
    uri, path = store
    table = aud.audit(load_spec(path), uri, ["plain"]).table.set_index("claim")
    at, kd = table.loc["at > baseline"], table.loc["kd > baseline"]
    assert at["verdict"] == "equivalent" and at["tost_p"] < stats.ALPHA and at["p"] >= stats.ALPHA
    assert math.isnan(at["seeds_needed"])  # settled: no seeds to plan
    assert kd["verdict"] == "inconclusive" and kd["tost_p"] >= stats.ALPHA
    assert kd["g"] == pytest.approx(stats.hedges_g(pd.Series(LAST[KD]), pd.Series(LAST[BASE])))
    # seeds to detect the paper's +1.5 with our pooled std: squared deviations 2 (KD) and 0.02 (baseline), df 4
    assert kd["pooled_std"] == pytest.approx(math.sqrt(2.02 / 4))
    assert kd["seeds_needed"] == stats.seeds_needed(1.5, math.sqrt(2.02 / 4))
    assert table.loc["fitnet > baseline", "verdict"] == "not run"
    assert kd["convention_is_ours"] and kd["ours_verdict"] == kd["verdict"]


def test_a_papers_convention_against_our_own_figure(store):
    """The paper reports the median of 3 runs at the best test epoch: ours at that convention (KD's best
    test epoch read from its history, the pre-training epoch left out), our last-epoch mean beside it."""
    uri, path = store
    spec = load_spec(path)
    table = aud.audit(spec, uri, ["conv"]).table.set_index("claim")
    row = table.loc["kd > baseline"]
    # best test epochs: KD 92.5, 90.5, 91.5 (history), baseline 91.0, 91.1, 90.9 (summary); medians 91.5 and 91.0
    assert row["diff"] == pytest.approx(0.5)
    assert row["ours_better"] == "median 91.50; 91.50 ± 1.00 (3)"
    assert not row["convention_is_ours"] and row["ours_diff"] == pytest.approx(1.0)  # last epoch, means
    assert row["compared_at"] == ("the best test epoch (test-selected, optimistic), as the paper; "
                                  "median over seeds, as the paper's median of 3")
    # NST's runs record no best test epoch and have no history to read it from: n/a, not a number
    nst = table.loc["nst_poly > baseline"]
    assert (nst["ours_better"], nst["verdict"]) == ("n/a", "n/a")
    detail = rep.build(spec, uri, "conv", None, "last").detail.set_index("cell")
    assert detail.loc[NST, "top1_mean"] == pytest.approx(91.1) and math.isnan(detail.loc[NST, "top1_at_paper"])
    assert detail.loc[KD, "top1_mean"] == pytest.approx(91.0)  # our own figure is unchanged
    assert detail.loc[KD, "top1_at_paper"] == pytest.approx(91.5)
    assert detail.loc[KD, "top1_delta"] == pytest.approx(0.0)  # 91.5 against the paper's 91.5
    table = rep.build(spec, uri, "conv", None, "last").table
    assert table.loc["kd", "digits"] == "91.00 ± 1.00 (3) [paper 91.50, ours at its convention 91.50, Δ +0.00]"


def test_a_claim_whose_better_side_alone_was_swept_is_flagged(store):
    uri, path = store
    table = aud.audit(load_spec(path), uri, ["plain"]).table.set_index("claim")
    assert table.loc["kd > baseline", "tuning"] == ("better side tuned by sweep kd-study (20 trials); "
                                                    "other side not tuned")
    assert table.loc["at > baseline", "tuning"] == ""  # neither side tuned


def test_seeds_plan_prints_the_runs_that_would_settle_the_claim(store, capsys):
    uri, path = store
    needed = stats.seeds_needed(1.5, math.sqrt(2.02 / 4))
    assert main(["--spec", str(path), "--tracking-uri", uri, "audit", "--suite", "plain", "--seeds-plan"]) == 0
    out = capsys.readouterr().out
    # each missing seed costs mean_epoch_seconds 20 x 3 epochs = 1 min
    assert f"harness run --cell {BASE} --seeds {needed}   # {needed - 3} more run(s), about {needed - 3} min" in out
    assert f"# total: about {needed - 3} min of student training" in out
    # KD's runs are a sweep's retrained best trial: `harness run` would train another configuration
    assert f"# --cell {KD}: retrained from sweep kd-study" in out and f"harness run --cell {KD}" not in out
    assert f"{AT} " not in out  # equivalent: settled
    assert main(["--spec", str(path), "--tracking-uri", uri, "audit", "--seeds-plan"]) == 2
    assert "--seeds-plan needs --suite" in capsys.readouterr().err


def test_forest_plots_beside_the_markdown_and_in_the_html_report(store, tmp_path, capsys):
    uri, path = store
    out = tmp_path / "CLAIMS.md"
    assert main(["--spec", str(path), "--tracking-uri", uri, "audit", "--suite", "plain", "conv",
                 "--out", str(out)]) == 0
    text = out.read_text()
    for suite in ("plain", "conv"):
        assert f"![{suite}: forest plot of our differences](CLAIMS-{suite}-forest.png)" in text
        assert Image.open(tmp_path / f"CLAIMS-{suite}-forest.png").size[1] > 200
    assert "equivalent 1, inconclusive 2" in text and "| **equivalent** |" in text
    assert "Equivalence margin m = ±0.5 points." in text
    report = tmp_path / "report"
    assert main(["--spec", str(path), "--tracking-uri", uri, "report", "--suite", "plain", "--out", f"{report}/"]) == 0
    assert (report / "claims-forest.png").exists()
    assert (report / "report.html").read_text().count("data:image/png;base64,") == 4


def test_seeds_plan_reproduces_a_cells_configuration():
    """A suite's recipe or override binds a cell to `--suite`; a run's departures become flags."""
    from harness.results import seeds_plan

    spec = load_spec()
    assert seeds_plan.suite_bound(spec, "lpl_table3_sigma10", "mnist/maxout3-maxout6/lpl")  # lpl's sigma override
    assert not seeds_plan.suite_bound(spec, "lpl_table3_sigma10", "mnist/maxout3-maxout6/kd")
    assert seeds_plan.suite_bound(spec, "nst_table3", "imagenet/resnet101-incbnfull/kd")  # the suite's recipe
    runs = pd.DataFrame({"overrides": ["kd.tau=2.0 epochs=2 teacher_epochs=1"]})
    assert seeds_plan.flags([runs]) == "--set kd.tau=2.0 --epochs 2 --teacher-epochs 1"
    assert seeds_plan.missing(pd.DataFrame({"tags.seed": ["0", "2"]}), 4) == 2  # seeds 1 and 3


def test_the_paired_test_gains_power_when_seeds_are_correlated_and_keeps_its_level():
    """Seeds of one pair share the split, the teacher and the student's start: a per-seed effect common
    to both methods. Simulated so, the paired test finds a 0.5-point difference far more often than
    Welch's, and under no difference it rejects about ALPHA of the time."""
    rng = np.random.default_rng(0)
    found = {"welch": 0, "paired": 0, "paired_null": 0}
    trials, seeds = 400, 5
    for _ in range(trials):
        shared = rng.normal(0, 1.0, seeds)  # what the seed does to both methods alike
        better = pd.Series(70.5 + shared + rng.normal(0, 0.2, seeds))
        worse = pd.Series(70.0 + shared + rng.normal(0, 0.2, seeds))
        null = pd.Series(70.0 + shared + rng.normal(0, 0.2, seeds))
        found["welch"] += stats.welch(better, worse).verdict == "confirmed"
        found["paired"] += stats.paired(better, worse).verdict == "confirmed"
        found["paired_null"] += stats.paired(null, worse).verdict != "inconclusive"
    assert found["paired"] / trials > 0.6 and found["welch"] / trials < 0.2, found
    assert found["paired_null"] / trials < 2 * stats.ALPHA, found


def test_the_paired_test_takes_the_seeds_both_sides_ran():
    better = pd.Series([71.0, 72.0, 73.5, 99.0], index=[0, 1, 2, 7])  # seed 7 has no partner
    worse = pd.Series([70.0, 71.5, 72.0], index=[0, 1, 2])
    test = stats.paired(better, worse)
    assert test.ci[0] < 1.0 < test.ci[1] and abs(sum(test.ci) / 2 - 1.0) < 1e-9  # mean of 1.0, 0.5, 1.5
    assert stats.paired(better[:1], worse[:1]).verdict == "inconclusive"
    assert stats.paired(better[[7]], worse).verdict == "not run"


def test_the_paired_test_sits_beside_welch_and_effect_sizes_seeds_where_no_paper_difference_is(store):
    from harness.spec.schema import Claim

    uri, path = store
    spec = load_spec(path)
    claim = Claim(better="kd", than=["at"], setting=SETTING, source="--with-method kd")  # AT has no paper number
    plain = spec.suites["plain"].model_copy(update={"claims": [claim]})
    spec = spec.model_copy(update={"suites": spec.suites | {"plain": plain}})
    row = aud.audit(spec, uri, ["plain"]).table.iloc[0]
    assert row["verdict"] == "inconclusive" and math.isnan(row["paper_diff"]) and pd.isna(row["seeds_needed"])
    planned = aud.audit(spec, uri, ["plain"], effect=1.0).table.iloc[0]
    assert planned["seeds_needed"] == stats.seeds_needed(1.0, planned["pooled_std"]) > 2
    assert planned["n_paired"] == 3
    assert planned["p_paired"] == pytest.approx(sp.ttest_rel(LAST[KD], LAST[AT]).pvalue)
    assert planned["p"] == row["p"] and planned["verdict"] == row["verdict"]  # the verdict is Welch's either way
