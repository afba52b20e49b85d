"""Comparison tables from the MLflow store, beside the papers' numbers (rendered by harness/results/render.py).

Runs come from `mlflow.search_runs` (FINISHED student runs of the requested cells; smoke runs
left out unless asked; for each cell and seed the latest run). Each table cell is
`mean ± std (n)` over seeds of the chosen accuracy; a paper's number stands beside it as a
labelled reference with the difference, flagged when it lies outside mean ± max(2·std, the suite's
tolerance). Where the paper's convention is known (benchmarks.yaml; harness/results/conventions.py) the
difference is taken from our figure at that convention, which the table shows beside our own. Cells
without runs show as missing, never as zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.errors import UserError
from harness.results.commits import commits, dirty_note
from harness.results.configurations import load_runs, suite_recipes
from harness.results.conventions import (SELECTIONS, aggregate, convention_of, describe, metric_key, same_as_ours,
                                 with_max_test)
from harness.results.report_teachers import teacher_accuracies, teacher_notes, teacher_runs
from harness.spec.schema import SuiteSpec
from harness.spec.spec import Spec
from harness.tracking.queries import metric_histories

FORMATS = ("md", "html", "latex", "csv")


@dataclass
class Report:
    title: str
    caption: str
    table: pd.DataFrame  # paper-shaped: rows = methods, columns = dataset/pair
    detail: pd.DataFrame  # one row per cell: every number
    runs: pd.DataFrame  # the runs used
    curves: dict[str, pd.DataFrame]  # cell -> epochs x seeds of test top-1
    notes: list[str]  # configurations left out, cost figures measured under load


def references(suite: SuiteSpec) -> dict[tuple[str, str], tuple[float, str]]:
    """(cell, 'top1'|'top5') -> (accuracy in %, label); errors are turned into accuracies."""
    out = {}
    for ref in suite.references:
        metric = ref.metric.removesuffix("_error")
        value = 100.0 - ref.value if ref.metric.endswith("_error") else ref.value
        label = f"{ref.source}" + (f" (error {ref.value:g}%)" if ref.metric.endswith("_error") else "")
        out[(ref.cell, metric)] = (value, label)
    return out


def fmt(mean: float, std: float, n: int, diverged: int = 0) -> str:
    """'mean ± std (n)' of the finished runs, and how many seeds diverged (no accuracy to average)."""
    if n == 0:
        return f"diverged ({diverged})" if diverged else "missing"
    text = f"{mean:.2f} ± {std:.2f} ({n})" if n > 1 else f"{mean:.2f} (1)"
    return text + (f"; {diverged} diverged" if diverged else "")


NEAR_CHANCE = 2.0  # a seed below this many times chance accuracy collapsed: it learned next to nothing
WIDE_SPREAD = 10.0  # a std over seeds of this many points or more: the seeds disagree, the mean says little


def collapse_note(near_chance: int, std: float) -> str:
    """What sets a cell's finished seeds apart as a result of their own, like diverged ones: seeds
    near chance accuracy, and a spread of tens of points."""
    text = f"; {near_chance} near chance" if near_chance else ""
    return text + (f"; spread ≥ {WIDE_SPREAD:g} points" if std >= WIDE_SPREAD else "")


def summarize(runs: pd.DataFrame, suite: SuiteSpec, select: str, classes: dict[str, int]) -> pd.DataFrame:
    """One row per cell; `classes`: dataset -> its number of classes (chance accuracy is 100/classes)."""
    refs, rows = references(suite), []
    for cell in suite.cells:
        group = runs[runs["tags.cell"] == cell] if not runs.empty else runs
        diverged = int(group["diverged"].sum()) if len(group) else 0
        group = group[~group["diverged"]] if len(group) else group  # accuracies and costs: finished runs only
        n = len(group)
        dataset, pair, method = cell.split("/")
        row = {"cell": cell, "dataset": dataset, "pair": pair, "method": method, "n": n, "diverged": diverged}
        for metric, key in (("top1", SELECTIONS[select][0]), ("top5", SELECTIONS[select][1])):
            values = group[f"metrics.{key}"].astype(float) if n else pd.Series(dtype=float)
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(values)
            convention = convention_of(suite, cell, metric)  # our figure at the paper's convention
            at = group[f"metrics.{metric_key(convention, select, metric)}"].astype(float) if n else values
            ours, std = aggregate(at, convention), _mean_std(at)[1]
            row[f"{metric}_at_paper"] = ours
            row[f"{metric}_convention"] = "" if same_as_ours(convention, select) else describe(convention, select)
            ref = refs.get((cell, metric))
            row[f"{metric}_paper"] = ref[0] if ref else math.nan
            row[f"{metric}_paper_source"] = ref[1] if ref else ""
            row[f"{metric}_delta"] = ours - ref[0] if ref and n else math.nan
            # in units of our std: how far the paper's number lies from our seeds
            row[f"{metric}_z"] = (ours - ref[0]) / std if ref and n > 1 and std > 0 else math.nan
            # flagged: the paper's number lies outside ours ± max(2 std, tolerance); the tolerance stands for
            # the paper's own seed noise, so a tiny std of ours does not flag every row (needs 2+ seeds)
            row[f"{metric}_flag"] = bool(ref and n > 1 and abs(ours - ref[0]) > max(2 * std, suite.tolerance))
        top1 = group[f"metrics.{SELECTIONS[select][0]}"].astype(float) if n else pd.Series(dtype=float)
        row["near_chance"] = int((top1 < NEAR_CHANCE * 100 / classes[dataset]).sum())
        for column, key in (("sec_per_epoch", "mean_epoch_seconds"), ("peak_memory_mb", "peak_memory_mb")):
            row[column] = group[f"metrics.{key}"].astype(float).median() if n else math.nan
        row["cost_under_load"] = bool(n and under_load(group).any())
        for column, key in (("extra_parameters", "extra_parameters"), ("student_parameters", "student_parameters")):
            row[column] = int(group[f"metrics.{key}"].iloc[0]) if n else math.nan
        row["epochs"] = ", ".join(sorted(set(group["params.recipe.epochs"]))) if n else ""
        rows.append(row)
    return with_student_delta(pd.DataFrame(rows))


def _mean_std(values: pd.Series) -> tuple[float, float]:
    return (values.mean() if len(values) else math.nan), (values.std(ddof=1) if len(values) > 1 else math.nan)


LOAD_MARGIN = 0.5  # a run's own threads make the load about their number; more is somebody else's work


def under_load(runs: pd.DataFrame) -> pd.Series:
    """Runs whose epochs saw a 1-minute load average above their own threads (torch's, at most the
    core count) + LOAD_MARGIN: another process shared the cores, so the s/epoch figure measures the
    sharing, not the method. A one-thread run beside another one-thread run counts as shared too,
    although the load then equals the core count. Runs logged before the load was recorded count as
    unknown, not loaded; GPU runs never (their loader workers load the CPU by design)."""
    if "metrics.max_load_1m" not in runs:
        return pd.Series(False, index=runs.index)
    load = runs["metrics.max_load_1m"].astype(float)
    cores = runs["metrics.cpu_count"].astype(float)
    threads = pd.to_numeric(runs["params.env.threads"], errors="coerce") if "params.env.threads" in runs else cores
    own = pd.concat([threads, cores], axis=1).min(axis=1)  # NaN threads (not logged): the core count
    on_gpu = runs.get("params.env.device", pd.Series("cpu", index=runs.index)).astype(str).str.startswith("cuda")
    return ((load > own + LOAD_MARGIN) & ~on_gpu).fillna(False)


def resolution(runs: pd.DataFrame) -> str:
    """'Test set: digits 360 images (one image = 0.28 points). ': how fine an accuracy difference
    each dataset's test set can show, from the runs' logged test-set sizes."""
    if "params.data.test_size" not in runs:
        return ""
    sizes = runs.assign(dataset=runs["tags.cell"].str.split("/").str[0]).dropna(subset=["params.data.test_size"])
    found = sorted({(d, int(n)) for d, n in zip(sizes["dataset"], sizes["params.data.test_size"])})
    if not found:
        return ""
    return "Test set: " + "; ".join(f"{d} {n:,} images (one image = {100 / n:.2g} points)" for d, n in found) + ". "


def paper_table(detail: pd.DataFrame, teachers: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    """Rows = the teacher, then methods (suite order); columns = dataset/pair, each followed by its
    'Δ vs student' where it has a student (baseline) run; cells 'mean ± std (n) [paper p, Δ d]'.
    `teachers`: (dataset, pair) -> its teachers' test top-1."""
    single_pair = detail["pair"].nunique() == 1
    column = detail["dataset"] if single_pair else detail["dataset"] + " " + detail["pair"]
    text = []
    for _, r in detail.iterrows():
        cell = fmt(r.top1_mean, r.top1_std, r.n, r.diverged) + collapse_note(r.near_chance, r.top1_std)
        if not math.isnan(r.top1_paper):
            delta = f", Δ {r.top1_delta:+.2f}" if r.n else ""
            if r.n and r.top1_convention:
                delta = f", ours at its convention {r.top1_at_paper:.2f}{delta}"
            cell += f" [paper {r.top1_paper:.2f}{delta}]" + ("*" if r.top1_flag else "")
        text.append(cell)
    rows, names = [], list(dict.fromkeys(column))
    for (_, r), name, cell in zip(detail.iterrows(), column, text):
        gap = "" if r.method == "baseline" or math.isnan(r.top1_vs_student) else f"{r.top1_vs_student:+.2f}"
        rows.append({"method": r.method, "column": name, "text": cell, "gap": gap})
    student = student_means(detail)
    for name, (dataset, pair) in dict(zip(column, zip(detail["dataset"], detail["pair"]))).items():
        values = pd.Series(teachers.get((dataset, pair), []), dtype=float).dropna()
        if len(values):
            gap = values.mean() - student.get((dataset, pair), math.nan)
            rows.append({"method": "teacher", "column": name, "text": fmt(values.mean(), values.std(ddof=1), len(values)),
                         "gap": "" if math.isnan(gap) else f"{gap:+.2f}"})
    frame = pd.DataFrame(rows)
    methods = (["teacher"] if "teacher" in set(frame["method"]) else []) + list(dict.fromkeys(detail["method"]))
    table = pd.DataFrame(index=methods)
    for name in names:
        part = frame[frame["column"] == name].set_index("method")
        table[name] = part["text"]
        if (part["gap"] != "").any():
            table[f"{name}: Δ vs student" if len(names) > 1 else "Δ vs student"] = part["gap"]
    table = table.fillna("")  # a method the suite has in another column only: not a missing run
    table.index.name = "method"
    return table


def student_means(detail: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(dataset, pair) -> the mean test top-1 of the student alone (its baseline cell)."""
    return {(r.dataset, r.pair): r.top1_mean for r in detail.itertuples() if r.method == "baseline"}


def with_student_delta(detail: pd.DataFrame) -> pd.DataFrame:
    """top1_vs_student: each cell's mean test top-1 minus that of the student alone (NaN without one)."""
    student = student_means(detail)
    return detail.assign(top1_vs_student=[m - student.get((d, p), math.nan)
                                          for m, d, p in zip(detail["top1_mean"], detail["dataset"], detail["pair"])])


def curves(tracking_uri: str, runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    runs = runs[~runs["diverged"]]
    histories = metric_histories(tracking_uri, list(runs["run_id"]), "test/top1")
    out = {}
    for cell, group in runs.groupby("tags.cell"):
        series = {}
        for _, run in group.iterrows():
            history = histories[run["run_id"]]
            # align on the main phase: pre-training epochs (FitNet hints, FSP) get negative x
            pre_epochs = len(history) - int(run.get("params.phases.main") or len(history))
            series[run["tags.seed"]] = pd.Series({m.step - pre_epochs: m.value for m in history}, dtype=float)
        out[cell] = pd.DataFrame(series).sort_index()
    return out


def protocol_notes(runs: pd.DataFrame) -> list[str]:
    """How the shown runs trained where it is not our default: on train+val, from the teacher of their
    own seed, with a method schedule that a shortened recipe shortened. A run that recorded no training
    set trained on train (the default says nothing, so reports of default runs are unchanged)."""
    def column(name: str, default: str) -> pd.Series:
        return runs[name].fillna(default) if name in runs else pd.Series(default, index=runs.index)

    notes = []
    train_on = column("params.train_on", "train").value_counts()
    if "train+val" in train_on:
        notes.append(f"training set: {', '.join(f'{k} ({n} runs)' for k, n in train_on.items())}; train+val: every "
                     "training image, no validation split (read at the last epoch); train: without the validation images")
    per_run = int((column("params.teacher_seeds", "shared") == "per-run").sum())
    if per_run:
        notes.append(f"teachers: {per_run} runs distil from the teacher of their own seed (--teacher-seeds per-run), "
                     f"{len(runs) - per_run} from one teacher seed shared by every seed")
    shortened = [c for c in runs.columns if c.startswith("params.schedule_shortened.")]
    for cell, group in runs.dropna(subset=shortened, how="all").groupby("tags.cell") if shortened else ():
        changes = {c.removeprefix("params.schedule_shortened."): v for c in shortened for v in group[c].dropna().unique()}
        notes.append(f"{cell}: shortened schedule ({', '.join(f'{k} {v}' for k, v in changes.items())}), "
                     "the method's epoch-counted settings scaled to the shortened recipe")
    return notes


def build(spec: Spec, tracking_uri: str, suite: str | None, cells: list[str] | None, select: str,
          include_smoke: bool = False, departures: str | None = None, all_configurations: bool = False) -> Report:
    if suite is not None:
        suite_spec = spec.suites[suite]
        if select == "best-val" and suite_spec.protocol.train_on == "train+val":
            raise UserError(f"suite {suite} trains on train+val: its runs have no validation split to select an "
                            "epoch by; use --select last")
        cells = suite_spec.cells
    else:
        suite_spec = SuiteSpec(title="Selected cells", source="kd-harness", cells=cells)
    runs, notes = load_runs(tracking_uri, cells, include_smoke, departures, suite, all_configurations,
                            suite_spec.protocol.train_on, suite_recipes(spec, suite, cells) if suite else None)
    if runs.empty:
        hint = f" ({notes[0]})" if notes else ""
        raise UserError(f"no finished runs for {'suite ' + suite if suite else 'these cells'} in {tracking_uri}"
                        f"{hint}; run them with `harness run` first")
    shown = set(runs["tags.cell"])  # each cell, then its other configurations (CELL [overrides]) side by side
    rows = [c for cell in cells for c in [cell] + sorted(v for v in shown if v.startswith(f"{cell} ["))]
    suite_spec = suite_spec.model_copy(update={"cells": rows})
    if any(convention_of(suite_spec, c, m).selection == "best-test" for c in cells for m in ("top1", "top5")):
        runs = with_max_test(tracking_uri, runs)
    detail = summarize(runs, suite_spec, select, {name: d.num_classes for name, d in spec.datasets.items()})
    recipes = sorted(set(runs["params.recipe_name"]))
    epochs = sorted(set(runs["params.recipe.epochs"]), key=int)
    devices = sorted(set(runs["params.env.device_name"]))
    caption = (f"Test top-1 accuracy (%) at {SELECTIONS[select][2]}, mean ± sample std over seeds (n); "
               "'k diverged': seeds whose loss became non-finite (their runs FAILED), not in n; 'k near chance': "
               f"seeds below {NEAR_CHANCE:g}x chance accuracy (collapsed: in n, but they learned next to nothing); "
               f"'spread ≥ {WIDE_SPREAD:g} points': seeds that disagree by tens of points. "
               "Teacher row: the test top-1 (last epoch) of the teachers the shown students learned from; "
               "Δ vs student: a row's mean minus the student alone (the baseline cell of its dataset and pair). "
               f"{resolution(runs)}"
               f"Recipe(s): {', '.join(recipes)}, {', '.join(epochs)} epochs. "
               f"Paper numbers are references from {suite_spec.source}, converted to accuracy where the paper "
               "reports error; Δ = ours − paper (z: Δ in units of our std), ours taken at the paper's "
               "convention where benchmarks.yaml declares one (the epoch it selected, the median where it reports "
               "one: 'ours at its convention'), else at ours; * marks a paper number outside "
               f"ours ± max(2·std, {suite_spec.tolerance:g} points); † marks a "
               "s/epoch figure from runs that shared the machine (1-min load average above the run's own threads, "
               f"at most the core count, + {LOAD_MARGIN}): not a cost figure. "
               f"Hardware: {', '.join(devices)}. Commit(s): {', '.join(sorted(set(commits(runs))))}.")
    by_setting, teacher_found = teacher_runs(tracking_uri, runs)
    notes = ([f"departure from the paper: {d}" for d in suite_spec.departures] + protocol_notes(runs) + dirty_note(runs)
             + teacher_notes(by_setting, teacher_found) + notes)
    table = paper_table(detail, teacher_accuracies(by_setting, teacher_found))
    return Report(suite_spec.title, caption, table, detail, runs, curves(tracking_uri, runs), notes)
