"""A paper's convention (benchmarks.yaml: a reference's `convention`, else its suite's) as our figure:
which summary metric of our runs (the epoch the paper's selection names) and whether seeds are
combined by their mean or their median. An unknown selection is compared at our own (--select)."""

from __future__ import annotations

import math

import pandas as pd

from harness.spec.schema import Convention, SuiteSpec
from harness.tracking.queries import metric_histories

# --select: our own figure, never chosen on the test set
SELECTIONS = {"last": ("test_top1_last", "test_top5_last", "last epoch"),
              "best-val": ("test_top1_best_val", "test_top5_best_val", "the epoch of best validation accuracy")}
# a paper's selection may be test-selected: the best test epoch, an optimistic figure
PAPER_SELECTIONS = SELECTIONS | {
    "best-test": ("test_top1_max_test", "test_top5_max_test", "the best test epoch (test-selected, optimistic)")}


def convention_of(suite: SuiteSpec, cell: str, metric: str) -> Convention:
    """The convention of the suite's reference for (cell, 'top1'|'top5'), else the suite's."""
    for ref in suite.references:
        if ref.cell == cell and ref.metric.removesuffix("_error") == metric and ref.convention is not None:
            return ref.convention
    return suite.convention


def selection(convention: Convention, select: str) -> str:
    return select if convention.selection == "unknown" else convention.selection


def metric_key(convention: Convention, select: str, metric: str) -> str:
    """The summary metric that gives our figure under the convention: 'test_top1_max_test', say."""
    return PAPER_SELECTIONS[selection(convention, select)][0 if metric == "top1" else 1]


def aggregate(values: pd.Series, convention: Convention) -> float:
    """Our seeds' median where the paper reports a median of runs, else their mean (for a single run
    of the paper's, the mean is what one run is expected to give)."""
    if len(values) == 0:
        return math.nan
    return float(values.median() if convention.aggregate == "median-of-k" else values.mean())


def same_as_ours(convention: Convention, select: str) -> bool:
    """Whether the convention's figure is our own (--select, mean over seeds)."""
    return selection(convention, select) == select and convention.aggregate != "median-of-k"


def describe(convention: Convention, select: str) -> str:
    """Where our figure under the convention comes from: 'the best test epoch (test-selected,
    optimistic), as the paper; median over seeds, as the paper's median of 5'."""
    if convention.selection == "unknown":
        epoch = f"{SELECTIONS[select][2]}, ours (the paper's selection is unknown)"
    else:
        epoch = f"{PAPER_SELECTIONS[convention.selection][2]}, as the paper"
    runs = {"median-of-k": f"median over seeds, as the paper's median of {convention.k}",
            "mean-of-k": f"mean over seeds, as the paper's mean of {convention.k}",
            "single": "mean over seeds (the paper: a single run)",
            "unknown": "mean over seeds (the paper's number of runs is unknown)"}[convention.aggregate]
    return f"{epoch}; {runs}"


def with_max_test(uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` where every finished run has test_top1_max_test and test_top5_max_test: runs whose summary
    lacks them (logged before the engine recorded them) get the maximum of their per-epoch test/top1 and
    test/top5 over the main phase (pre-training phases of FitNet hints, FSP left out, as for the best
    validation epoch), read from the metric histories."""
    runs = runs.copy()
    for metric in ("top1", "top5"):
        column = f"metrics.test_{metric}_max_test"
        missing = runs.index[runs[column].isna() & ~runs["diverged"]]
        if len(missing) == 0:
            continue
        histories = metric_histories(uri, list(runs.loc[missing, "run_id"]), f"test/{metric}")
        for i in missing:
            history = sorted(histories[runs.at[i, "run_id"]], key=lambda m: m.step)
            main = pd.to_numeric(runs.loc[i].get("params.phases.main"), errors="coerce")  # NaN: not logged
            start = 0 if pd.isna(main) else max(len(history) - int(main), 0)
            runs.at[i, column] = max((m.value for m in history[start:]), default=math.nan)
    return runs
