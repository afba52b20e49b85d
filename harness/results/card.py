"""A method's report card (`harness card M --out DIR`): the page a researcher puts in an appendix.

For each suite given (each with M's cells and claims "M > X" added, harness/commands/with_method.py):
the audit's verdicts of M against every method of the suite on each pair (wins = confirmed, losses =
refuted, equivalences, the rest), and per pair M's accuracy, Δ vs KD and Δ vs the student (baseline)
with Welch's 95% intervals, the cost of an epoch relative to KD's, extra parameters, peak memory and
seeds; across the pairs of a suite, M's mean rank and the mean Δ vs KD with a bootstrap interval. One
Markdown and one HTML page, with a plot of Δ vs KD against relative cost, one point per pair.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.results import audit as audits
from harness.results import report as reports
from harness.results.stats import ALPHA
from harness.spec.spec import Spec

REFERENCE, STUDENT = "kd", "baseline"  # what Δ and the relative cost are measured against


@dataclass
class Card:
    method: str
    pairs: pd.DataFrame  # one row per suite and pair: accuracy, Δs with intervals, cost, seeds
    claims: pd.DataFrame  # one row per claim "M > X": the audit's figures and verdict
    caption: str


def _against(claims: pd.DataFrame, setting: str, other: str) -> tuple[float, float, float]:
    row = claims[(claims["setting"] == setting) & (claims["than"] == f"{setting}/{other}")]
    if row.empty:
        return math.nan, math.nan, math.nan
    return row["diff"].iloc[0], row["ci_low"].iloc[0], row["ci_high"].iloc[0]


def build(spec: Spec, tracking_uri: str, method: str, suites: list[str], select: str = "last",
          include_smoke: bool = False) -> Card:
    pairs, claims = [], []
    for suite in suites:
        audited = audits.audit(spec, tracking_uri, [suite], select, include_smoke).table
        mine = audited[audited["source"] == f"--with-method {method}"]
        claims.append(mine)
        detail = reports.build(spec, tracking_uri, suite, None, select, include_smoke).detail.set_index("cell")
        for setting in dict.fromkeys(mine["setting"]):
            cell, kd = f"{setting}/{method}", f"{setting}/{REFERENCE}"
            if cell not in detail.index:  # no run of M on this pair: its claims count as not run
                continue
            row = detail.loc[cell]
            cost = row["sec_per_epoch"] / detail.loc[kd, "sec_per_epoch"] if kd in detail.index else math.nan
            vs_kd, vs_student = _against(mine, setting, REFERENCE), _against(mine, setting, STUDENT)
            ranks = detail.loc[detail.index.str.startswith(f"{setting}/"), "top1_mean"].rank(ascending=False)
            pairs.append({"suite": suite, "pair": setting, "top1": row["top1_mean"], "std": row["top1_std"],
                          "seeds": int(row["n"]), "rank": ranks[cell], "ranked": int(ranks.notna().sum()),
                          "delta_kd": vs_kd[0], "kd_low": vs_kd[1], "kd_high": vs_kd[2],
                          "delta_student": vs_student[0], "student_low": vs_student[1], "student_high": vs_student[2],
                          "cost_vs_kd": cost, "under_load": bool(row["cost_under_load"]
                                                                 or (kd in detail.index and detail.loc[kd, "cost_under_load"])),
                          "extra_parameters": row["extra_parameters"],
                          "peak_memory_mb": row["peak_memory_mb"]})
    table = pd.concat(claims) if claims else pd.DataFrame()
    caption = (f"{method} against every method of {', '.join(suites)} on each pair where it can run: test top-1 (%) "
               f"at {'the last epoch' if select == 'last' else 'the best validation epoch'}, mean ± std over seeds; "
               f"Δ vs {REFERENCE} and vs the student ({STUDENT}) with Welch's 95% interval; verdicts as `harness "
               "audit --with-method` gives them (Welch's t-test, TOST for equivalence, Holm-corrected with the "
               "suite's claims); cost: seconds per epoch relative to KD's on the same pair (the same batches, so "
               "per step; † where runs shared a loaded machine: not a cost figure); extra parameters: trained only, "
               "not shipped with the student.")
    return Card(method, pd.DataFrame(pairs), table, caption)


BOOTSTRAP = 2000  # resamples of the pairs for the interval of the mean Δ


def across_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per suite: the mean rank of M among the methods run on each pair (1 = best), and the mean Δ vs KD
    over its pairs with a percentile bootstrap 95% interval (pairs resampled; one pair has none)."""
    rng = np.random.default_rng(0)  # the same runs give the same page
    rows = []
    for suite, group in pairs.groupby("suite", sort=False):
        deltas = group["delta_kd"].dropna().to_numpy()
        means = rng.choice(deltas, (BOOTSTRAP, len(deltas))).mean(axis=1) if len(deltas) > 1 else None
        interval = f" [{np.percentile(means, 2.5):+.2f}, {np.percentile(means, 97.5):+.2f}]" if means is not None else ""
        rows.append({"suite": suite, "pairs": len(group),
                     "mean rank": f"{group['rank'].mean():.1f} (of {group['ranked'].mean():.0f} methods a pair)",
                     f"mean Δ vs {REFERENCE} [bootstrap 95%]": f"{deltas.mean():+.2f}{interval}" if len(deltas) else ""})
    return pd.DataFrame(rows)


def _num(value, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _interval(diff: float, low: float, high: float) -> str:
    return f"{_num(diff, '+.2f')} [{_num(low, '+.2f')}, {_num(high, '+.2f')}]" if not math.isnan(low) else _num(diff, "+.2f")


def tables(card: Card) -> list[tuple[str, pd.DataFrame]]:
    """(heading, table) for the page: the per-pair summary, the verdict counts, every claim."""
    p = card.pairs
    summary = pd.DataFrame({
        "suite": p["suite"], "pair": p["pair"],
        "top-1": [f"{_num(m, '.2f')} ± {_num(s, '.2f')} ({n})" for m, s, n in zip(p["top1"], p["std"], p["seeds"])],
        f"Δ vs {REFERENCE} [95% CI]": [_interval(*v) for v in zip(p["delta_kd"], p["kd_low"], p["kd_high"])],
        "Δ vs student [95% CI]": [_interval(*v) for v in zip(p["delta_student"], p["student_low"], p["student_high"])],
        f"cost vs {REFERENCE}": [_num(c, ".2f") + ("x" if not math.isnan(c) else "") + (" †" if load else "")
                                 for c, load in zip(p["cost_vs_kd"], p["under_load"])],
        "extra parameters": [_num(x, ",.0f") for x in p["extra_parameters"]],
        "peak memory (MB)": [_num(x, ".0f") for x in p["peak_memory_mb"]]})
    c = card.claims
    counts = c.groupby("suite")["verdict"].value_counts().unstack(fill_value=0) if not c.empty else pd.DataFrame()
    if not c.empty:
        held = c[c["p_holm"] < ALPHA].groupby("suite")["verdict"]
        counts = counts.rename(columns={"confirmed": "wins", "refuted": "losses"})
        counts["wins after Holm"] = held.apply(lambda v: int((v == "confirmed").sum())).reindex(counts.index).fillna(0)
        counts["losses after Holm"] = held.apply(lambda v: int((v == "refuted").sum())).reindex(counts.index).fillna(0)
        counts = counts.astype(int).reset_index()
    c = c[c["verdict"] != "not run"] if not c.empty else c  # counted above; no figures to show
    claims = pd.DataFrame({"suite": c["suite"], "claim": c["claim"], "pair": c["setting"],
                           "Δ [95% CI]": [_interval(*v) for v in zip(c["diff"], c["ci_low"], c["ci_high"])],
                           "p (Welch)": [_num(x, ".3g") for x in c["p"]],
                           "p (Holm)": [_num(x, ".3g") for x in c["p_holm"]],
                           "verdict": [v + (" (not after Holm)" if v in ("confirmed", "refuted") and not p < ALPHA else "")
                                       for v, p in zip(c["verdict"], c["p_holm"])]}) \
        if not c.empty else pd.DataFrame()
    return [("Per pair", summary), ("Across pairs", across_pairs(p) if not p.empty else pd.DataFrame()),
            ("Verdicts (wins = confirmed, losses = refuted)", counts),
            ("Every claim with runs on both sides", claims)]


def plot(card: Card) -> bytes:
    """Δ vs KD (with its interval) against the cost relative to KD, one labelled point per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = card.pairs
    fig, ax = plt.subplots(figsize=(6, 4))
    x = p["cost_vs_kd"].fillna(1.0)
    error = [(p["delta_kd"] - p["kd_low"]).fillna(0), (p["kd_high"] - p["delta_kd"]).fillna(0)]
    ax.errorbar(x, p["delta_kd"], yerr=error, fmt="o", capsize=3)
    for xi, yi, label in zip(x, p["delta_kd"], p["pair"]):
        if not math.isnan(yi):
            ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"seconds per epoch relative to {REFERENCE} (1 = same; unknown drawn at 1)")
    ax.set_ylabel(f"Δ top-1 vs {REFERENCE} (points)")
    ax.set_title(f"{card.method}: gain over {REFERENCE} against cost")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def write(card: Card, out: Path) -> list[Path]:
    """DIR/M.md, DIR/M.html (the plot inline) and DIR/M-cost.png."""
    out.mkdir(parents=True, exist_ok=True)
    image = plot(card)
    png = out / f"{card.method}-cost.png"
    png.write_bytes(image)
    sections = tables(card)
    markdown = [f"# {card.method}: report card", "", card.caption, "", f"![Δ vs {REFERENCE} against cost]({png.name})"]
    for heading, table in sections:
        markdown += ["", f"## {heading}", "", table.to_markdown(index=False, disable_numparse=True) if not table.empty else "(none)"]
    page = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(card.method)}: report card</title>",
            "<style>body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px}</style>",
            f"<h1>{html.escape(card.method)}: report card</h1><p>{html.escape(card.caption)}</p>",
            f"<img alt='Δ vs {REFERENCE} against cost' src='data:image/png;base64,{base64.b64encode(image).decode()}'>"]
    for heading, table in sections:
        page += [f"<h2>{html.escape(heading)}</h2>", table.to_html(index=False) if not table.empty else "<p>(none)</p>"]
    written = [out / f"{card.method}.md", out / f"{card.method}.html", png]
    written[0].write_text("\n".join(markdown) + "\n")
    written[1].write_text("\n".join(page) + "\n")
    return written
