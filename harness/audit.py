"""The claims audit: each ordering claim a paper's table makes, tested on our runs.

A claim (benchmarks.yaml, `suites.*.claims`) says that one cell reaches a higher accuracy than
another. For each comparison the audit takes the two cells' runs exactly as the report does (one
configuration per cell, the latest run per seed), and gives our means ± std (n), the difference,
Welch's two-sided t-test p-value, and a verdict:

- confirmed: ours agrees with the claim's direction and p < ALPHA;
- refuted: ours goes the other way and p < ALPHA;
- inconclusive: p >= ALPHA, or fewer than two seeds on a side (no variance to test with);
- diverged: every run of a side diverged (a non-finite loss ended it): that method did not train
  on this recipe, and there is no accuracy to test;
- not run: a side has no finished or diverged run.

Beside it: the 95% confidence interval of our difference (Welch) and whether the paper's own
difference lies in it (a "no" with an interval that excludes it is our evidence against the size of
the paper's effect, even where the verdict is inconclusive); Holm's adjustment of the p-values over
the comparisons of one suite (one paper table tests several claims at once: at α = 0.05 each, some
"confirmed" verdicts are expected by chance); the paper's own numbers for both cells and whether
each lies within our mean ± 2·std.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.commits import commits, dirty_note
from harness.report import SELECTIONS, fmt, load_runs, references
from harness.spec import Spec

ALPHA = 0.05
VERDICTS = ("confirmed", "refuted", "inconclusive", "diverged", "not run")


@dataclass
class Audit:
    table: pd.DataFrame  # one row per comparison
    runs: pd.DataFrame  # the runs used
    notes: list[str]  # configurations left out
    departures: dict[str, list[str]]  # suite -> where it cannot follow its paper


@dataclass
class Welch:
    p: float
    verdict: str
    ci: tuple[float, float]  # (1 - ALPHA) confidence interval of mean(better) - mean(worse)


def welch(better: pd.Series, worse: pd.Series) -> Welch:
    """The test of the claim mean(better) > mean(worse)."""
    none = (math.nan, math.nan)
    if len(better) == 0 or len(worse) == 0:
        return Welch(math.nan, "not run", none)
    if len(better) < 2 or len(worse) < 2:
        return Welch(math.nan, "inconclusive", none)
    from scipy.stats import ttest_ind

    diff = better.mean() - worse.mean()
    if better.std(ddof=1) == 0 and worse.std(ddof=1) == 0:  # no spread at all: the t statistic is undefined
        return Welch(math.nan, "inconclusive", (diff, diff)) if diff == 0 else \
            Welch(0.0, "confirmed" if diff > 0 else "refuted", (diff, diff))
    test = ttest_ind(better, worse, equal_var=False)
    ci = test.confidence_interval(1 - ALPHA)
    p = float(test.pvalue)
    verdict = "inconclusive" if p >= ALPHA else "confirmed" if diff > 0 else "refuted"
    return Welch(p, verdict, (float(ci.low), float(ci.high)))


def holm(p: pd.Series) -> pd.Series:
    """Holm's step-down adjusted p-values (NaN stays NaN): the k-th smallest of m is multiplied by
    m - k + 1, then made non-decreasing in that order and capped at 1."""
    tested = p.dropna().sort_values()
    m = len(tested)
    adjusted = (tested * [m - k for k in range(m)]).cummax().clip(upper=1.0)
    return adjusted.reindex(p.index)


def _within(paper: float, values: pd.Series) -> str:
    if math.isnan(paper) or len(values) < 2:
        return ""
    return "yes" if abs(values.mean() - paper) <= 2 * values.std(ddof=1) else "no"


def _summary(values: pd.Series, diverged: int) -> str:
    if len(values) == 0 and not diverged:
        return "not run"
    return fmt(values.mean(), values.std(ddof=1), len(values), diverged)


def audit(spec: Spec, tracking_uri: str, suites: list[str], select: str = "last",
          include_smoke: bool = False, departures: str | None = None) -> Audit:
    comparisons = [(name, claim, better, worse) for name in suites for claim in spec.suites[name].claims
                   for better, worse in claim.pairs()]
    refs = {key: value for name in suites for key, value in references(spec.suites[name]).items()}
    loaded, notes = {}, []
    for name in suites:  # each suite (one paper table) at one recipe setting, chosen as the report does
        cells = sorted({c for suite, _, better, worse in comparisons if suite == name for c in (better, worse)})
        loaded[name], suite_notes = load_runs(tracking_uri, cells, include_smoke, departures, name) if cells \
            else (pd.DataFrame(), [])
        notes += [f"{name}: {n}" for n in suite_notes]
    rows = []
    for suite, claim, better, worse in comparisons:
        key = {"top1": SELECTIONS[select][0], "top5": SELECTIONS[select][1]}[claim.metric]
        runs = loaded[suite]
        side = {cell: runs[runs["tags.cell"] == cell] if not runs.empty else runs for cell in (better, worse)}
        values = {cell: side[cell].loc[~side[cell]["diverged"], f"metrics.{key}"].astype(float) if len(side[cell])
                  else pd.Series(dtype=float) for cell in side}
        diverged = {cell: int(side[cell]["diverged"].sum()) if len(side[cell]) else 0 for cell in side}
        test = welch(values[better], values[worse])
        if all(len(side[c]) for c in side) and any(not len(values[c]) for c in side):
            test = Welch(math.nan, "diverged", test.ci)
        paper = {cell: refs.get((cell, claim.metric), (math.nan, ""))[0] for cell in (better, worse)}
        paper_diff = paper[better] - paper[worse]
        ran = len(values[better]) and len(values[worse])
        rows.append({
            "suite": suite, "source": claim.source, "metric": claim.metric,
            "claim": f"{_short(better, worse)[0]} > {_short(better, worse)[1]}",
            "better": better, "than": worse,
            "ours_better": _summary(values[better], diverged[better]),
            "ours_than": _summary(values[worse], diverged[worse]),
            "diff": values[better].mean() - values[worse].mean() if ran else math.nan,
            "ci_low": test.ci[0], "ci_high": test.ci[1], "paper_diff": paper_diff,
            "paper_diff_in_ci": "" if math.isnan(paper_diff) or math.isnan(test.ci[0])
            else "yes" if test.ci[0] <= paper_diff <= test.ci[1] else "no",
            "p": test.p, "verdict": test.verdict,
            "paper_within_2sd": "/".join(_within(paper[c], values[c]) or "-" for c in (better, worse)),
        })
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = table.groupby("suite", sort=False)["p"].transform(holm)
    used = [r for r in loaded.values() if not r.empty]
    runs = pd.concat(used).drop_duplicates("run_id") if used else pd.DataFrame()
    return Audit(table, runs, notes, {name: spec.suites[name].departures for name in suites})


def _short(better: str, worse: str) -> tuple[str, str]:
    """Method names when both cells share dataset and pair, else the pair/method parts."""
    b, w = better.split("/"), worse.split("/")
    if b[:2] == w[:2]:
        return b[2], w[2]
    return "/".join(b[1:]), "/".join(w[1:])


def render_markdown(result: Audit, title: str, caption: str) -> str:
    t = result.table
    lines = [f"# {title}", "", caption, ""]
    counts = t["verdict"].value_counts()
    lines.append("Verdicts: " + ", ".join(f"{v} {counts.get(v, 0)}" for v in VERDICTS) + f" (of {len(t)}).")
    if not t.empty:
        decided = t[t["verdict"].isin(("confirmed", "refuted"))]
        held = decided[decided["p_holm"] < ALPHA]["verdict"].value_counts()
        lines.append(f"After Holm's correction within each suite: confirmed {held.get('confirmed', 0)}, "
                     f"refuted {held.get('refuted', 0)}.")
    for suite, group in t.groupby("suite", sort=False):
        lines += ["", f"## {suite}", ""]
        if result.departures.get(suite):
            lines += ["Departures from the paper: " + "; ".join(result.departures[suite]) + ".", ""]
        lines += ["| claim | setting | source | ours (better) | ours (than) | Δ ours [95% CI] | Δ paper "
                  "| paper Δ in CI | p (Welch) | p (Holm) | verdict | paper within ±2σ (better/than) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for _, r in group.iterrows():
            setting = "/".join(r.better.split("/")[:2]) if r.better.split("/")[:2] == r.than.split("/")[:2] else ""
            ci = f" [{_num(r.ci_low, '+.2f')}, {_num(r.ci_high, '+.2f')}]" if not math.isnan(r.ci_low) else ""
            lost = " (not after Holm)" if r.verdict in ("confirmed", "refuted") and r.p_holm >= ALPHA else ""
            lines.append(
                f"| {r.claim} ({r.metric}) | {setting} | {r.source} | {r.ours_better} | {r.ours_than} | "
                f"{_num(r['diff'], '+.2f')}{ci} | {_num(r.paper_diff, '+.2f')} | {r.paper_diff_in_ci or '-'} | "
                f"{_num(r.p, '.3g')} | {_num(r.p_holm, '.3g')} | **{r.verdict}**{lost} | {r.paper_within_2sd} |")
    if result.notes:
        lines += ["", "## Configurations left out", ""] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n" + render_runs(result)


def caption(result: Audit, select: str, command: str) -> str:
    runs = result.runs
    where = ""
    if not runs.empty:
        where = (f" Runs: {len(runs)} ({runs['tags.cell'].nunique()} cells); commit(s) "
                 f"{', '.join(sorted(set(commits(runs))))}; hardware "
                 f"{', '.join(sorted(set(runs['params.env.device_name'])))}."
                 + "".join(f" {note}." for note in dirty_note(runs)))
    return (f"Regenerated from the MLflow store by `{command}`. Accuracy: test top-1 (%) at "
            f"{SELECTIONS[select][2]}, mean ± sample std over seeds (n), one configuration per cell and one "
            f"recipe setting per suite (the report's rules). Verdict: Welch's two-sided t-test, α = {ALPHA}: "
            "confirmed / refuted when p < α in the claim's / the opposite direction, inconclusive otherwise "
            "or with fewer than 2 seeds a side, diverged when every run of a side diverged (a non-finite loss; "
            "'k diverged' counts such seeds, not in n), not run when a side has no run. Δ ours [95% CI]: our "
            "difference and Welch's confidence interval of it; \"paper Δ in CI\": whether the paper's own "
            "difference lies in that interval (\"no\" where the interval excludes the paper's effect size). "
            "p (Holm): Holm's step-down adjustment over the tested claims of the same suite; a verdict "
            "marked \"not after Holm\" does not survive it. Δ paper = the paper's own difference (its numbers "
            "are labelled references, converted from error to accuracy where needed)." + where)


def render_runs(result: Audit) -> str:
    """The runs behind the audit, for provenance."""
    if result.runs.empty:
        return ""
    lines = ["", "## Runs used", "", "| cell | seed | MLflow run id | commit | departures from the cell's defaults |",
             "| --- | --- | --- | --- | --- |"]
    runs = result.runs.sort_values(["tags.cell", "tags.seed"])
    for (_, r), commit in zip(runs.iterrows(), commits(runs)):
        lines.append(f"| {r['tags.cell']} | {r['tags.seed']} | {r['run_id']} | {commit} | "
                     f"{r['overrides'] or 'none'} |")
    return "\n".join(lines) + "\n"


def _num(value: float, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)
