"""Comparison tables from the MLflow store, beside the papers' numbers (rendered by harness/render.py).

Runs come from `mlflow.search_runs` (FINISHED student runs of the requested cells; smoke runs
left out unless asked; for each cell and seed the latest run). Each table cell is
`mean ± std (n)` over seeds of the chosen accuracy; a paper's number stands beside it as a
labelled reference with the difference, flagged when it lies outside mean ± max(2·std, the suite's
tolerance). Cells without runs show as missing, never as zero.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import pandas as pd

from harness.commits import commits, dirty_note
from harness.errors import UserError
from harness.schema import SuiteSpec
from harness.spec import Spec
from harness.tracking import finished_teacher_runs, metric_histories, student_results

SELECTIONS = {"last": ("test_top1_last", "test_top5_last", "last epoch"),
              "best-val": ("test_top1_best_val", "test_top5_best_val", "the epoch of best validation accuracy")}
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


RECIPE_DEPARTURES = ("epochs", "teacher_epochs")  # departures that change every cell's recipe, not one method's


def recipe_setting(overrides: str) -> str:
    """The part of a run's departures (its `overrides` tag) that applies to every cell: 'epochs=2
    teacher_epochs=2', or '' for the recipe as the spec states it."""
    return " ".join(item for item in overrides.split() if item.split("=", 1)[0] in RECIPE_DEPARTURES)


def parse_setting(text: str) -> str:
    """A `--departures` value as the runs' tags write it: 'none', or NAME=VALUE items of RECIPE_DEPARTURES."""
    if text.strip() == "none":
        return ""
    items = text.split()
    bad = [i for i in items if "=" not in i or i.split("=", 1)[0] not in RECIPE_DEPARTURES]
    if bad or not items:
        raise UserError(f"--departures {text!r}: expected 'none' or items like 'epochs=2 teacher_epochs=2' "
                        f"(names: {', '.join(RECIPE_DEPARTURES)})")
    return " ".join(sorted(items))


def load_runs(tracking_uri: str, cells: list[str], include_smoke: bool = False,
              departures: str | None = None, suite: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """FINISHED student runs of `cells` at one recipe setting, one configuration per cell, the latest
    run per seed; and a note for each group of runs left out.

    Runs of one cell that differ in anything but the seed (a `--set`, `--epochs`, a changed
    default) are different configurations and are never averaged together. Cells are compared with
    each other only at one recipe setting (RECIPE_DEPARTURES): `departures` ('none' for the recipe as
    stated) or else the setting that covers the most cells, then the recipe as stated, then the most
    runs. Per cell the report takes the configuration run under `suite` (whose overrides may set the
    cell apart from its defaults), then one run under no suite, then one without user overrides, then
    the one with the most seeds, then the most recent."""
    runs = student_results(tracking_uri)
    if runs.empty:
        return runs, []
    runs = runs[runs["tags.cell"].isin(cells)].copy()
    notes = []
    if not include_smoke:
        smoke = runs["tags.smoke"] == "True"
        if smoke.any():
            notes.append(f"{int(smoke.sum())} --smoke runs of these cells are left out (tiny subsets, 1 epoch); "
                         "--include-smoke counts them")
        runs = runs[~smoke]
    if runs.empty:
        return runs, notes
    runs["configuration"] = [configuration_of(r) for _, r in runs.iterrows()]
    overrides = runs["tags.overrides"] if "tags.overrides" in runs else pd.Series("", index=runs.index)
    runs["overrides"] = overrides.fillna("")
    runs["setting"] = runs["overrides"].map(recipe_setting)
    settings = dict(list(runs.groupby("setting")))
    if departures is not None:
        setting = parse_setting(departures)
        if setting not in settings:
            found = "; ".join(f"{s or 'none'} ({len(g)} runs)" for s, g in settings.items())
            raise UserError(f"no finished runs of these cells at --departures {departures!r}; the store has: {found}")
    else:
        setting = min(settings, key=lambda s: (-settings[s]["tags.cell"].nunique(), s != "", -len(settings[s])))
    others = {s: g for s, g in settings.items() if s != setting}
    if others:
        notes.append(f"runs at {len(settings)} recipe settings; shown: {setting or 'the recipe as stated'} "
                     f"({settings[setting]['tags.cell'].nunique()} cells); left out: "
                     + "; ".join(f"{s or 'the recipe as stated'} ({len(g)} runs, {g['tags.cell'].nunique()} cells)"
                                 for s, g in others.items()) + " (--departures picks one)")
    runs = settings[setting]
    chosen = []
    for cell, group in runs.groupby("tags.cell", sort=False):
        ranked = sorted(group.groupby("configuration"), key=lambda item: (
            suite_rank(item[1], suite), item[1]["overrides"].iloc[0] != "", -item[1]["tags.seed"].nunique(),
            -item[1]["start_time"].max().value))
        keep = ranked[0][1]
        chosen.append(keep.sort_values("start_time").groupby("tags.seed").tail(1))
        if len(ranked) > 1:
            others = "; ".join(describe_configuration(key, g) for key, g in ranked[1:])
            notes.append(f"{cell}: {len(ranked)} configurations in the store; shown "
                         f"{describe_configuration(ranked[0][0], keep)}; left out: {others}")
    return pd.concat(chosen), notes


def describe_configuration(key: str, runs: pd.DataFrame) -> str:
    """'1814d8f1 (2 seeds, suite lpl_table3_sigma10)': the key, its seeds, its overrides and suites."""
    suites = sorted(set(runs["tags.suite"].fillna("")) - {""}) if "tags.suite" in runs else []
    overrides = runs["overrides"].iloc[0]
    extra = ([overrides] if overrides else []) + [f"suite {s}" for s in suites]
    seeds = f"{runs['tags.seed'].nunique()} seeds"
    return f"{key[:8]} ({', '.join([seeds] + extra)})"


def suite_rank(runs: pd.DataFrame, suite: str | None) -> int:
    """0: some run was made for `suite`; 1: some under no suite (the cell's own defaults); 2: only for
    other suites, whose overrides may differ from this one's."""
    tagged = set(runs["tags.suite"].fillna("")) if "tags.suite" in runs else {""}
    return 0 if suite in tagged else 1 if "" in tagged else 2


IGNORED_PARAMS = ("params.env.", "params.teacher.path", "params.seed")


def configuration_of(run: pd.Series) -> str:
    """The run's configuration key (its run key without the seed); runs logged before the tag
    existed get one from their logged settings."""
    key = run.get("tags.config_key")
    if isinstance(key, str) and key:
        return key
    settings = {k: v for k, v in run.items() if k.startswith("params.") and not k.startswith(IGNORED_PARAMS)
                and isinstance(v, str) and v != "None" and not k.endswith(".source")}
    return "legacy-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


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


def summarize(runs: pd.DataFrame, cells: list[str], refs: dict, select: str, tolerance: float = 0.5) -> pd.DataFrame:
    top1_key, top5_key, _ = SELECTIONS[select]
    rows = []
    for cell in cells:
        group = runs[runs["tags.cell"] == cell] if not runs.empty else runs
        diverged = int(group["diverged"].sum()) if len(group) else 0
        group = group[~group["diverged"]] if len(group) else group  # accuracies and costs: finished runs only
        n = len(group)
        dataset, pair, method = cell.split("/")
        row = {"cell": cell, "dataset": dataset, "pair": pair, "method": method, "n": n, "diverged": diverged}
        for metric, key in (("top1", top1_key), ("top5", top5_key)):
            values = group[f"metrics.{key}"].astype(float) if n else pd.Series(dtype=float)
            mean, std = (values.mean(), values.std(ddof=1) if n > 1 else float("nan")) if n else (math.nan, math.nan)
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
            ref = refs.get((cell, metric))
            row[f"{metric}_paper"] = ref[0] if ref else math.nan
            row[f"{metric}_paper_source"] = ref[1] if ref else ""
            row[f"{metric}_delta"] = mean - ref[0] if ref and n else math.nan
            # in units of our std: how far the paper's number lies from our seeds
            row[f"{metric}_z"] = (mean - ref[0]) / std if ref and n > 1 and std > 0 else math.nan
            # flagged: the paper's number lies outside mean ± max(2 std, tolerance); the tolerance stands for
            # the paper's own seed noise, so a tiny std of ours does not flag every row (needs 2+ seeds)
            row[f"{metric}_flag"] = bool(ref and n > 1 and abs(mean - ref[0]) > max(2 * std, tolerance))
        for column, key in (("sec_per_epoch", "mean_epoch_seconds"), ("peak_memory_mb", "peak_memory_mb")):
            row[column] = group[f"metrics.{key}"].astype(float).median() if n else math.nan
        row["cost_under_load"] = bool(n and under_load(group).any())
        for column, key in (("extra_parameters", "extra_parameters"), ("student_parameters", "student_parameters")):
            row[column] = int(group[f"metrics.{key}"].iloc[0]) if n else math.nan
        row["epochs"] = ", ".join(sorted(set(group["params.recipe.epochs"]))) if n else ""
        rows.append(row)
    return pd.DataFrame(rows)


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


def paper_table(detail: pd.DataFrame) -> pd.DataFrame:
    """Rows = methods (suite order), columns = dataset/pair; cells 'mean ± std (n) [paper p, Δ d]'."""
    single_pair = detail["pair"].nunique() == 1
    column = detail["dataset"] if single_pair else detail["dataset"] + " " + detail["pair"]
    text = []
    for _, r in detail.iterrows():
        cell = fmt(r.top1_mean, r.top1_std, r.n, r.diverged)
        if not math.isnan(r.top1_paper):
            delta = f", Δ {r.top1_delta:+.2f}" if r.n else ""
            cell += f" [paper {r.top1_paper:.2f}{delta}]" + ("*" if r.top1_flag else "")
        text.append(cell)
    frame = pd.DataFrame({"method": detail["method"], "column": column, "text": text})
    table = frame.pivot(index="method", columns="column", values="text")
    table = table.reindex(index=list(dict.fromkeys(detail["method"])), columns=list(dict.fromkeys(column)))
    table = table.fillna("")  # a method the suite has in another column only: not a missing run
    table.index.name, table.columns.name = "method", None
    return table


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
            series[run["tags.seed"]] = pd.Series({m.step - pre_epochs: m.value for m in history})
        out[cell] = pd.DataFrame(series).sort_index()
    return out


def teacher_notes(tracking_uri: str, runs: pd.DataFrame) -> list[str]:
    """One line per teacher the shown students learned from: what it is, its test top-1, its run."""
    column = runs["params.teacher.key"] if "params.teacher.key" in runs else pd.Series(dtype=str)
    keys = sorted({key for value in column.dropna() for key in str(value).split("+") if key})
    found = finished_teacher_runs(tracking_uri, keys) if keys else {}
    notes = []
    for key in keys:
        run = found.get(key)
        if run is None:
            notes.append(f"teacher {key}: no finished run in this store (its file was trained elsewhere)")
            continue
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        notes.append(f"teacher {tags.get('dataset')}/{tags.get('model')} seed {tags.get('seed')}, "
                     f"{params.get('recipe.epochs')} epochs: {metrics.get('test_top1_last', math.nan):.2f}% test "
                     f"top-1 (MLflow run {run.info.run_id})")
    return notes


def build(spec: Spec, tracking_uri: str, suite: str | None, cells: list[str] | None, select: str,
          include_smoke: bool = False, departures: str | None = None) -> Report:
    if suite is not None:
        suite_spec = spec.suites[suite]
        cells = suite_spec.cells
    else:
        suite_spec = SuiteSpec(title="Selected cells", source="kd-harness", cells=cells)
    runs, notes = load_runs(tracking_uri, cells, include_smoke, departures, suite)
    if runs.empty:
        hint = f" ({notes[0]})" if notes else ""
        raise UserError(f"no finished runs for {'suite ' + suite if suite else 'these cells'} in {tracking_uri}"
                        f"{hint}; run them with `harness run` first")
    detail = summarize(runs, cells, references(suite_spec), select, suite_spec.tolerance)
    recipes = sorted(set(runs["params.recipe_name"]))
    epochs = sorted(set(runs["params.recipe.epochs"]), key=int)
    devices = sorted(set(runs["params.env.device_name"]))
    caption = (f"Test top-1 accuracy (%) at {SELECTIONS[select][2]}, mean ± sample std over seeds (n); "
               "'k diverged': seeds whose loss became non-finite (their runs FAILED), not in n. "
               f"Recipe(s): {', '.join(recipes)}, {', '.join(epochs)} epochs. "
               f"Paper numbers are references from {suite_spec.source}, converted to accuracy where the paper "
               f"reports error; Δ = ours − paper (z: Δ in units of our std); * marks a paper number outside "
               f"mean ± max(2·std, {suite_spec.tolerance:g} points); † marks a "
               "s/epoch figure from runs that shared the machine (1-min load average above the run's own threads, "
               f"at most the core count, + {LOAD_MARGIN}): not a cost figure. "
               f"Hardware: {', '.join(devices)}. Commit(s): {', '.join(sorted(set(commits(runs))))}.")
    notes = ([f"departure from the paper: {d}" for d in suite_spec.departures] + dirty_note(runs)
             + teacher_notes(tracking_uri, runs) + notes)
    return Report(suite_spec.title, caption, paper_table(detail), detail, runs, curves(tracking_uri, runs), notes)
