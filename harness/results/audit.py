"""The claims audit: each ordering claim a paper's table makes, tested on our runs.

A claim (benchmarks.yaml, `suites.*.claims`) says that one cell reaches a higher accuracy than
another. For each comparison the audit takes the two cells' runs exactly as the report does (one
configuration per cell, the latest run per seed), and compares them at the paper's convention
(harness/results/conventions.py: the epoch the paper's selection names, the median where it reports a
median; an unknown selection at ours), with our own figure (--select: last or best-val) beside it.
Statistics (harness/results/stats.py): our difference, Welch's 95% interval and two-sided p-value (the
paired test's on the seeds both sides ran beside it; the verdict is Welch's), the TOST
p-value at the suite's equivalence margin m, Hedges' g, and a verdict:

- confirmed: ours agrees with the claim's direction and p < ALPHA;
- refuted: ours goes the other way and p < ALPHA;
- equivalent: not either, and TOST finds our difference within ±m (p < ALPHA);
- inconclusive: none of these, or fewer than two seeds on a side (no variance to test with); then
  "seeds needed": the seeds a side that would detect the paper's difference (else --effect's) at 80% power;
- diverged: every run of a side diverged (a non-finite loss ended it): that method did not train
  on this recipe, and there is no accuracy to test;
- not run: a side has no finished or diverged run;
- n/a: a side's finished runs lack the figure the paper's convention needs (no best test epoch
  recorded, and no per-epoch test history to read it from).

Beside it: whether the paper's own difference lies in our interval, Holm's adjustment of the
p-values over the comparisons of one suite, whether each paper number lies within our mean ± 2·std,
and a tuning flag where the two sides had unequal `harness sweep` budgets (harness/results/budgets.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.results import budgets
from harness.results.configurations import load_runs, suite_recipes
from harness.results.conventions import aggregate, convention_of, describe, metric_key, same_as_ours, with_max_test
from harness.results.report import fmt, references
from harness.results.stats import ALPHA, hedges_g, holm, paired, pooled_std, seeds_needed, tost, welch
from harness.spec.schema import Claim, Convention, SuiteSpec
from harness.spec.spec import Spec
from harness.tracking.queries import sweep_trials

VERDICTS = ("confirmed", "refuted", "equivalent", "inconclusive", "diverged", "not run", "n/a")


@dataclass
class Audit:
    table: pd.DataFrame  # one row per comparison
    runs: pd.DataFrame  # the runs used
    notes: list[str]  # configurations left out
    departures: dict[str, list[str]]  # suite -> where it cannot follow its paper
    by_suite: dict[str, pd.DataFrame]  # suite -> the runs its claims were tested on
    margins: dict[str, float]  # suite -> its equivalence margin (accuracy points)


def _within(paper: float, values: pd.Series, convention: Convention) -> str:
    if math.isnan(paper) or len(values) < 2:
        return ""
    return "yes" if abs(aggregate(values, convention) - paper) <= 2 * values.std(ddof=1) else "no"


def _summary(values: pd.Series, side: pd.DataFrame, convention: Convention) -> str:
    diverged = int(side["diverged"].sum()) if len(side) else 0
    if len(values) == 0 and len(side) > diverged:  # finished runs without this figure (no test history)
        return "n/a"
    if len(values) == 0 and not diverged:
        return "not run"
    text = fmt(values.mean(), values.std(ddof=1), len(values), diverged)
    median = convention.aggregate == "median-of-k" and len(values) > 1
    return f"median {values.median():.2f}; {text}" if median else text


def compare(better: pd.Series, worse: pd.Series, margin: float, diverged: bool) -> dict:
    """Welch's test, TOST at `margin` and the verdict of mean(better) > mean(worse); `diverged`: both
    sides have runs, and every run of one of them diverged."""
    test = welch(better, worse)
    equivalence = tost(better, worse, margin)
    verdict = test.verdict
    if diverged:
        verdict = "diverged"
    elif verdict == "inconclusive" and equivalence < ALPHA:
        verdict = "equivalent"
    return {"p": test.p, "ci_low": test.ci[0], "ci_high": test.ci[1], "tost_p": equivalence, "verdict": verdict}


def _values(side: pd.DataFrame, key: str) -> pd.Series:
    """The finished runs' figures by seed (a run without one, such as no best test epoch to read, has none)."""
    if side.empty:
        return pd.Series(dtype=float)
    finished = side.loc[~side["diverged"]]
    return finished[f"metrics.{key}"].astype(float).set_axis(finished["tags.seed"].astype(int)).dropna()


def _row(suite: SuiteSpec, name: str, claim: Claim, better: str, worse: str, runs: pd.DataFrame, select: str,
         trials: dict[str, int], effect: float | None) -> dict:
    refs = references(suite)
    side = {cell: runs[runs["tags.cell"] == cell] if not runs.empty else runs for cell in (better, worse)}
    conv = {cell: convention_of(suite, cell, claim.metric) for cell in side}
    values = {cell: _values(side[cell], metric_key(conv[cell], select, claim.metric)) for cell in side}
    own = {cell: _values(side[cell], metric_key(Convention(), select, claim.metric)) for cell in side}
    diverged = bool(len(side[better]) and len(side[worse])) and any(side[c]["diverged"].all() for c in side)
    paper = {cell: refs.get((cell, claim.metric), (math.nan, ""))[0] for cell in side}
    paper_diff = paper[better] - paper[worse]
    margin = suite.equivalence_margin
    result = compare(values[better], values[worse], margin, diverged)
    pairs = paired(values[better], values[worse])
    target = effect if math.isnan(paper_diff) and effect is not None else paper_diff  # what seeds are planned for
    summaries = {cell: _summary(values[cell], side[cell], conv[cell]) for cell in side}
    if "n/a" in summaries.values():
        result["verdict"] = "n/a"
    ours = compare(own[better], own[worse], margin, diverged)
    finite = len(values[better]) and len(values[worse])
    spread = pooled_std(values[better], values[worse])
    label = describe(conv[better], select) if conv[better] == conv[worse] else \
        f"better: {describe(conv[better], select)}; than: {describe(conv[worse], select)}"
    short = _short(better, worse)
    return {
        "suite": name, "source": claim.source, "metric": claim.metric, "claim": f"{short[0]} > {short[1]}",
        "setting": "/".join(better.split("/")[:2]) if better.split("/")[:2] == worse.split("/")[:2] else "",
        "better": better, "than": worse, "compared_at": label,
        "ours_better": summaries[better], "ours_than": summaries[worse],
        "n_better": len(values[better]), "n_than": len(values[worse]),
        "diff": aggregate(values[better], conv[better]) - aggregate(values[worse], conv[worse]) if finite else math.nan,
        "paper_diff": paper_diff,
        "paper_diff_in_ci": "" if math.isnan(paper_diff) or math.isnan(result["ci_low"])
        else "yes" if result["ci_low"] <= paper_diff <= result["ci_high"] else "no",
        "g": hedges_g(values[better], values[worse]), "pooled_std": spread,
        "seeds_needed": seeds_needed(target, spread) if result["verdict"] == "inconclusive" else None,
        "planned_for": target, "p_paired": pairs.p, "paired_ci_low": pairs.ci[0], "paired_ci_high": pairs.ci[1],
        "n_paired": len(values[better].index.intersection(values[worse].index)),
        "convention_is_ours": same_as_ours(conv[better], select) and same_as_ours(conv[worse], select),
        "ours_diff": own[better].mean() - own[worse].mean() if len(own[better]) and len(own[worse]) else math.nan,
        "ours_ci_low": ours["ci_low"], "ours_ci_high": ours["ci_high"], "ours_verdict": ours["verdict"],
        "tuning": budgets.flag(side[better], side[worse], trials),
        "paper_within_2sd": "/".join(_within(paper[c], values[c], conv[c]) or "-" for c in (better, worse)),
    } | {k: result[k] for k in ("p", "ci_low", "ci_high", "tost_p", "verdict")}


def _load(spec: Spec, uri: str, name: str, cells: list[str], include_smoke: bool, departures: str | None,
          select: str) -> tuple[pd.DataFrame, list[str]]:
    """The suite's runs (the report's rules), with the best test epoch's accuracy where a convention needs it."""
    if not cells:
        return pd.DataFrame(), []
    suite = spec.suites[name]
    runs, notes = load_runs(uri, cells, include_smoke, departures, name, train_on=suite.protocol.train_on,
                            recipes=suite_recipes(spec, name, cells))
    needs = {metric_key(convention_of(suite, c, m), select, m) for c in cells for m in ("top1", "top5")}
    if not runs.empty and needs & {"test_top1_max_test", "test_top5_max_test"}:
        runs = with_max_test(uri, runs)
    return runs, notes


def audit(spec: Spec, tracking_uri: str, suites: list[str], select: str = "last",
          include_smoke: bool = False, departures: str | None = None, effect: float | None = None) -> Audit:
    """`effect`: the difference (accuracy points) that seeds are planned for where a claim has no paper
    difference (ad-hoc and --with-method claims)."""
    comparisons = [(name, claim, better, worse) for name in suites for claim in spec.suites[name].claims
                   for better, worse in claim.pairs()]
    loaded, notes = {}, []
    for name in suites:  # each suite (one paper table) at one recipe setting, chosen as the report does
        cells = sorted({c for suite, _, better, worse in comparisons if suite == name for c in (better, worse)})
        loaded[name], suite_notes = _load(spec, tracking_uri, name, cells, include_smoke, departures, select)
        notes += [f"{name}: {n}" for n in suite_notes]
    used = [r for r in loaded.values() if not r.empty]
    runs = pd.concat(used).drop_duplicates("run_id") if used else pd.DataFrame()
    swept = budgets.studies(runs)
    trials = sweep_trials(tracking_uri, swept) if swept else {}
    table = pd.DataFrame([_row(spec.suites[suite], suite, claim, better, worse, loaded[suite], select, trials, effect)
                          for suite, claim, better, worse in comparisons])
    if not table.empty:
        table["p_holm"] = table.groupby("suite", sort=False)["p"].transform(holm)
    return Audit(table, runs, notes, {name: spec.suites[name].departures for name in suites}, loaded,
                 {name: spec.suites[name].equivalence_margin for name in suites})


def _short(better: str, worse: str) -> tuple[str, str]:
    """Method names when both cells share dataset and pair, else the pair/method parts."""
    b, w = better.split("/"), worse.split("/")
    if b[:2] == w[:2]:
        return b[2], w[2]
    return "/".join(b[1:]), "/".join(w[1:])
