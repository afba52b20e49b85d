"""A built Audit (harness/results/audit.py) as Markdown, and a forest plot per suite: our differences with
their 95% intervals, the paper's differences marked, a zero line and the equivalence band."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from harness.results.audit import VERDICTS, Audit
from harness.results.commits import commits, dirty_note
from harness.results.conventions import SELECTIONS
from harness.results.stats import ALPHA, MAX_SEEDS, POWER

COLUMNS = ("claim", "setting", "source", "ours (better)", "ours (than)", "Δ ours [95% CI]", "Δ paper",
           "paper Δ in CI", "g", "p (Welch)", "paired: Δ [95% CI], p (seeds)", "p (Holm)", "p (TOST ±m)", "verdict", "seeds needed",
           "at our own figure: Δ [95% CI], verdict", "tuning", "paper within ±2σ (better/than)")


def _num(value: float, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _interval(diff: float, low: float, high: float) -> str:
    ci = f" [{_num(low, '+.2f')}, {_num(high, '+.2f')}]" if not math.isnan(low) else ""
    return f"{_num(diff, '+.2f')}{ci}"


def _seeds(r: pd.Series) -> str:
    if r.verdict != "inconclusive":
        return ""
    return str(int(r.seeds_needed)) if not pd.isna(r.seeds_needed) else "n/a"


def _paired(r: pd.Series) -> str:
    if r.n_paired < 2:
        return ""
    diff = (r.paired_ci_low + r.paired_ci_high) / 2  # the interval is symmetric about the mean difference
    return f"{_interval(diff, r.paired_ci_low, r.paired_ci_high)}, {_num(r.p_paired, '.3g')} ({r.n_paired})"


def _line(r: pd.Series) -> str:
    lost = " (not after Holm)" if r.verdict in ("confirmed", "refuted") and r.p_holm >= ALPHA else ""
    ours = "same" if r.convention_is_ours else \
        f"{_interval(r.ours_diff, r.ours_ci_low, r.ours_ci_high)} {r.ours_verdict}"
    cells = (f"{r.claim} ({r.metric})", r.setting, r.source, r.ours_better, r.ours_than,
             _interval(r['diff'], r.ci_low, r.ci_high), _num(r.paper_diff, "+.2f"), r.paper_diff_in_ci or "-",
             _num(r.g, "+.2f"), _num(r.p, ".3g"), _paired(r), _num(r.p_holm, ".3g"), _num(r.tost_p, ".3g"),
             f"**{r.verdict}**{lost}", _seeds(r), ours, r.tuning or "-", r.paper_within_2sd)
    return "| " + " | ".join(cells) + " |"


def _suite(result: Audit, suite: str, group: pd.DataFrame, image: str | None) -> list[str]:
    lines = ["", f"## {suite}", ""]
    if result.departures.get(suite):
        lines += ["Departures from the paper: " + "; ".join(result.departures[suite]) + ".", ""]
    for label, claims in group.groupby("compared_at", sort=False):
        which = "" if claims.shape[0] == group.shape[0] else " (" + ", ".join(claims["claim"]) + ")"
        lines.append(f"Compared at{which}: {label}. Equivalence margin m = "
                     f"±{result.margins[suite]:g} points.")
    flagged = group[group["tuning"] != ""]
    if len(flagged):
        lines.append(f"Tuning: {len(flagged)} claim(s) compare sides tuned unequally by `harness sweep` "
                     "(column 'tuning'); the difference may be the tuning's.")
    lines += [""] + ([f"![{suite}: forest plot of our differences]({image})", ""] if image else [])
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    return lines + [_line(r) for _, r in group.iterrows()]


def render_markdown(result: Audit, title: str, caption: str, images: dict[str, str] | None = None) -> str:
    """The audit; `images`: suite -> the file name of its forest plot, beside the Markdown."""
    t = result.table
    lines = [f"# {title}", "", caption, ""]
    counts = t["verdict"].value_counts() if not t.empty else pd.Series(dtype=int)
    lines.append("Verdicts: " + ", ".join(f"{v} {counts.get(v, 0)}" for v in VERDICTS) + f" (of {len(t)}).")
    if not t.empty:
        decided = t[t["verdict"].isin(("confirmed", "refuted"))]
        held = decided[decided["p_holm"] < ALPHA]["verdict"].value_counts()
        lines.append(f"After Holm's correction within each suite: confirmed {held.get('confirmed', 0)}, "
                     f"refuted {held.get('refuted', 0)}.")
    for suite, group in t.groupby("suite", sort=False) if not t.empty else ():
        lines += _suite(result, suite, group, (images or {}).get(suite))
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
    return (f"Regenerated from the runs listed below by `{command}`. Accuracy: test top-1 (%), mean ± sample std over "
            "seeds (n), one configuration per cell and one recipe setting per suite (the report's rules), taken "
            "at each paper's convention (benchmarks.yaml: the epoch it selected, the last, the best validation "
            "or the best test epoch, which is test-selected and optimistic; the median where it reports a "
            f"median of runs; an unknown selection at ours, {SELECTIONS[select][2]}); 'at our own figure' "
            f"repeats Δ and the verdict at {SELECTIONS[select][2]} with the mean ('same' where that is the "
            f"convention's). Verdict: Welch's two-sided t-test, α = {ALPHA} (the paired t-test on the seeds both "
            "sides ran, per-seed differences, is shown beside it and does not decide: seeds of one pair share the "
            "split, the teacher and mostly the student's initialisation, so it has more power when they are "
            "correlated): confirmed / refuted when p < α in "
            "the claim's / the opposite direction; equivalent when not, and TOST (two one-sided Welch t-tests "
            "against -m and +m, p = the larger) finds the difference within ±m; inconclusive otherwise "
            "or with fewer than 2 seeds a side; diverged when every run of a side diverged (a non-finite loss; "
            "'k diverged' counts such seeds, not in n); not run when a side has no run; n/a when a side's runs "
            "lack the figure the paper's convention needs. Δ ours [95% CI]: our difference and Welch's "
            "confidence interval of the difference of means; \"paper Δ in CI\": whether "
            "the paper's own difference lies in that interval (\"no\" where the interval excludes the paper's "
            "effect size). g: Hedges' g (pooled std, exact small-sample correction). Seeds needed (inconclusive "
            f"claims): seeds a side for {POWER:.0%} power to detect the paper's Δ with a two-sided two-sample "
            f"t-test at α = {ALPHA}, given our pooled std (noncentral t, scipy.stats.nct; --effect's difference "
            f"where a claim has no paper Δ; n/a without either or a spread, or beyond {MAX_SEEDS}). Tuning: sides tuned by `harness sweep` with unequal trial "
            "budgets (a swept side against an untuned one, or fewer trials). p (Holm): Holm's step-down "
            "adjustment over the tested claims of the same suite; a verdict marked \"not after Holm\" does not "
            "survive it. Δ paper = the paper's own difference (its numbers are labelled references, converted "
            "from error to accuracy where needed)." + where)


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


def forest_png(group: pd.DataFrame, suite: str, margin: float) -> bytes:
    """One row per claim of a suite: our Δ with its 95% interval (blue), the paper's Δ (red diamond),
    zero (black line), the equivalence band ±margin (grey), the verdict at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.8 + 0.42 * len(group)))
    ax.axvspan(-margin, margin, color="0.88", label=f"equivalence margin ±{margin:g}")
    ax.axvline(0, color="black", linewidth=1)
    for i, r in enumerate(group.itertuples()):
        if not math.isnan(r.diff):
            error = None if math.isnan(r.ci_low) else [[r.diff - r.ci_low], [r.ci_high - r.diff]]
            ax.errorbar(r.diff, i, xerr=error, fmt="o", color="tab:blue", capsize=3,
                        label="ours: Δ, 95% CI (Welch)" if i == _first(group, "diff") else None)
        if not math.isnan(r.paper_diff):
            ax.scatter(r.paper_diff, i, marker="D", color="tab:red", zorder=3,
                       label="paper's Δ" if i == _first(group, "paper_diff") else None)
        ax.annotate(r.verdict, (1.01, i), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    labels = [f"{r.claim} ({r.metric})" + (f"  [{r.setting}]" if r.setting else "") for r in group.itertuples()]
    ax.set_yticks(range(len(group)), labels, fontsize=8)
    ax.set_ylim(len(group) - 0.5, -0.5)  # the first claim on top
    ax.set_xlabel("Δ accuracy, better − than (points)")
    ax.set_title(f"{suite}: our differences and the paper's", pad=20)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _first(group: pd.DataFrame, column: str) -> int:
    """The position of the first row with a value in `column` (that row's marker carries the legend)."""
    known = [i for i, v in enumerate(group[column]) if not math.isnan(v)]
    return known[0] if known else -1


def forests(result: Audit) -> dict[str, bytes]:
    """suite -> its forest plot (PNG bytes), for every suite with claims."""
    if result.table.empty:
        return {}
    return {suite: forest_png(group, suite, result.margins[suite])
            for suite, group in result.table.groupby("suite", sort=False)}


def write(result: Audit, out: Path, title: str, caption_text: str) -> list[Path]:
    """The Markdown to `out` and each suite's forest plot beside it (OUT-STEM-SUITE-forest.png); the files."""
    plots = forests(result)
    images = {suite: f"{out.stem}-{suite}-forest.png" for suite in plots}
    for suite, png in plots.items():
        (out.parent / images[suite]).write_bytes(png)
    out.write_text(render_markdown(result, title, caption_text, images))
    return [out] + [out.parent / name for name in images.values()]
