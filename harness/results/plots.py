"""A built Report's figures (harness/results/report.py): accuracy per epoch, final accuracy, accuracy
against cost. Each figure shows all of its data: no curve is cut off by the axes, final accuracies
are dots with their spread (a bar's height from a cut axis would magnify a one-image difference),
and a s/epoch figure measured under load (†) is named beside the cost plot, not drawn as a cost."""

from __future__ import annotations

import io
import math

from harness.results.report import Report


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(report: Report):
    """Test top-1 per epoch, mean ± std over seeds; the y axis reaches the lowest shown value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lows = []
    for cell, frame in report.curves.items():
        mean, std = frame.mean(axis=1), frame.std(axis=1, ddof=1).fillna(0)
        ax.plot(mean.index, mean.values, label=cell.split("/", 1)[1])
        ax.fill_between(mean.index, (mean - std).values, (mean + std).values, alpha=0.2)
        lows.append((mean - std).min())
    ax.set(xlabel="epoch of the main phase (pre-training phases < 0)", ylabel="test top-1 (%)",
           title="Test accuracy per epoch (mean ± std over seeds)")
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 2), 100)
    ax.legend(fontsize=7)
    return fig


def accuracy_figure(report: Report):
    """Each cell's final test top-1 as a dot with ± std over seeds, the paper's number beside it."""
    plt = _pyplot()
    d = report.detail[report.detail["n"] > 0]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = list(range(len(d)))
    ax.errorbar(x, d["top1_mean"], yerr=d["top1_std"].fillna(0), fmt="o", capsize=4, color="tab:blue",
                label="ours: mean ± std over seeds")
    if d["top1_paper"].notna().any():
        ax.scatter(x, d["top1_paper"], color="tab:red", marker="_", s=400, label="paper (reference)", zorder=3)
    ax.set_xticks(x, [c.split("/", 1)[1] for c in d["cell"]], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="test top-1 (%)", title="Final accuracy (dots: mean; bars: std over seeds)")
    ax.legend(fontsize=7)
    return fig


def cost_figure(report: Report):
    """Test top-1 against the median s/epoch, one marker and legend entry per cell (no labels to
    overlap); cells whose s/epoch was measured under load are left out and named below the plot."""
    plt = _pyplot()
    d = report.detail[(report.detail["n"] > 0) & report.detail["sec_per_epoch"].notna()]
    shown, loaded = d[~d["cost_under_load"].astype(bool)], d[d["cost_under_load"].astype(bool)]
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = plt.get_cmap("tab20")
    for i, r in enumerate(shown.itertuples()):
        ax.errorbar(r.sec_per_epoch, r.top1_mean, yerr=0 if math.isnan(r.top1_std) else r.top1_std, fmt="o",
                    color=colours(i % 20), capsize=3, label=r.cell.split("/", 1)[1])
    ax.set(xlabel="seconds per epoch (median)", ylabel="test top-1 (%)", title="Accuracy against training cost")
    if len(shown):
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    if len(loaded):
        names = ", ".join(c.split("/", 1)[1] for c in loaded["cell"])
        fig.text(0.01, 0.01, f"left out, s/epoch measured under load (†): {names}", fontsize=7)
    return fig


def plots(report: Report) -> dict[str, bytes]:
    """PNG bytes of the three figures, by file name."""
    out = {name: _png(make(report)) for name, make in
           (("curves.png", curves_figure), ("accuracy.png", accuracy_figure), ("cost.png", cost_figure))}
    _pyplot().close("all")
    return out


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()
