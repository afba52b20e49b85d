"""The report's figures show their data as it is (issue #32 items 6-8): read from the figures' axes."""

import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from harness.results import plots
from harness.results.report import Report

CELLS = ["digits/resnet20-resnet8/baseline", "digits/resnet20-resnet8/kd", "digits/resnet20-resnet8/fitnet"]


def report(loaded=(False, True, False)) -> Report:
    detail = pd.DataFrame({"cell": CELLS, "n": [3, 3, 3], "top1_mean": [96.1, 96.4, 95.8],
                           "top1_std": [0.3, 0.2, math.nan], "top1_paper": [math.nan, 97.0, math.nan],
                           "sec_per_epoch": [0.21, 5.14, 0.25], "cost_under_load": list(loaded)})
    curves = {CELLS[0]: pd.DataFrame({"0": [60.0, 90.0, 96.1], "1": [62.0, 91.0, 96.0]}, index=[0, 1, 2]),
              # FitNet's hint phase (epochs < 0) sits near chance
              CELLS[2]: pd.DataFrame({"0": [11.0, 22.0, 80.0, 95.8]}, index=[-2, -1, 0, 1])}
    return Report("t", "c", pd.DataFrame(), detail, pd.DataFrame(), curves, [])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_final_accuracy_is_dots_with_intervals_not_bars_from_a_cut_axis():
    ax = plots.accuracy_figure(report()).axes[0]
    assert not ax.patches  # no bars: a bar's height from a cut axis magnifies a one-image difference
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(dots) == 1 and list(dots[0].get_ydata()) == [96.1, 96.4, 95.8]


def test_cost_plot_leaves_out_loaded_figures_and_has_no_labels_to_overlap():
    fig = plots.cost_figure(report())
    ax = fig.axes[0]
    xs = [x for line in ax.lines if line.get_marker() == "o" for x in line.get_xdata()]
    assert sorted(xs) == [0.21, 0.25]  # KD's 5.14 s/epoch came from a shared machine
    assert not ax.texts  # no annotations on the points
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["resnet20-resnet8/baseline",
                                                                   "resnet20-resnet8/fitnet"]
    assert any("under load (†): resnet20-resnet8/kd" in t.get_text() for t in fig.texts)
    unloaded = plots.cost_figure(report(loaded=(False, False, False)))
    assert not unloaded.texts and len(unloaded.axes[0].get_legend().get_texts()) == 3


def test_per_epoch_plot_shows_the_lowest_curve():
    ax = plots.curves_figure(report()).axes[0]
    low = min(y for line in ax.lines for y in line.get_ydata())
    assert low == 11.0 and ax.get_ylim()[0] <= low


def test_plots_renders_three_pngs():
    images = plots.plots(report())
    assert sorted(images) == ["accuracy.png", "cost.png", "curves.png"]
    assert all(png.startswith(b"\x89PNG") for png in images.values())
