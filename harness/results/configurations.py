"""Which runs a report or audit takes from the store: FINISHED (or diverged) student runs of the
requested cells, one configuration per cell and one recipe setting for all of them, the latest run
per seed; every group left out is named in a note."""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from harness.errors import UserError
from harness.tracking.queries import student_results


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
              departures: str | None = None, suite: str | None = None,
              all_configurations: bool = False, train_on: str = "train",
              recipes: dict[str, str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """FINISHED student runs of `cells` at one recipe setting, one configuration per cell, the latest
    run per seed; and a note for each group of runs left out.

    Runs of one cell that differ in anything but the seed (a `--set`, `--epochs`, a changed
    default) are different configurations and are never averaged together. Cells are compared with
    each other only at one recipe setting (RECIPE_DEPARTURES): `departures` ('none' for the recipe as
    stated) or else the setting that covers the most cells, then the recipe as stated, then the most
    runs. Per cell the report takes the configuration run under `suite` (whose overrides may set the
    cell apart from its defaults), then one run under no suite, then one at the cell's recipe in
    `recipes` (the suite's: a run reused from a suite that trains the cell at another recipe must not
    stand in for it), then one trained on `train_on` (the
    suite's protocol: runs made before a suite changed its training set are another configuration),
    then one without user overrides, then the one with the most seeds, then the most recent. With `all_configurations` the others are kept
    too, side by side: their runs' cell reads 'CELL [their overrides]' (variant_label)."""
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
            suite_rank(item[1], suite), bool(recipes) and recipe_of(item[1]) != recipes.get(cell),
            train_on not in trained_on(item[1]), item[1]["overrides"].iloc[0] != "",
            -item[1]["tags.seed"].nunique(),
            -item[1]["start_time"].max().value))
        keep = ranked[0][1]
        chosen.append(keep.sort_values("start_time").groupby("tags.seed").tail(1))
        if len(ranked) > 1 and all_configurations:
            for key, group in ranked[1:]:
                variant = group.assign(**{"tags.cell": f"{cell} [{variant_label(key, group)}]"})
                chosen.append(variant.sort_values("start_time").groupby("tags.seed").tail(1))
            notes.append(f"{cell}: {len(ranked)} configurations shown side by side; without a bracket: "
                         f"{describe_configuration(ranked[0][0], keep)}")
        elif len(ranked) > 1:
            others = "; ".join(describe_configuration(key, g) for key, g in ranked[1:])
            notes.append(f"{cell}: {len(ranked)} configurations in the store; shown "
                         f"{describe_configuration(ranked[0][0], keep)}; left out: {others}")
    return pd.concat(chosen), notes


def recipe_of(runs: pd.DataFrame) -> str:
    """The recipe a configuration's runs logged (one per configuration)."""
    return runs["params.recipe_name"].iloc[0] if "params.recipe_name" in runs else ""


def suite_recipes(spec, suite: str, cells: list[str]) -> dict[str, str]:
    """cell -> the recipe `suite` trains it with (its student's recipe under the suite)."""
    out = {}
    for cell in cells:
        dataset, pair, _ = cell.split("/")
        if pair in spec.pairs:
            out[cell] = spec.recipe_for(dataset, spec.pairs[pair].student, suite=suite)[0]
    return out


def trained_on(runs: pd.DataFrame) -> set[str]:
    """The training sets the runs logged (train+val, train); a run that logged none trained on train."""
    return set(runs["params.train_on"].fillna("train")) if "params.train_on" in runs else {"train"}


def describe_configuration(key: str, runs: pd.DataFrame) -> str:
    """'1814d8f1 (2 seeds, suite lpl_table3_sigma10)': the key, its seeds, its overrides and suites."""
    suites = sorted(set(runs["tags.suite"].fillna("")) - {""}) if "tags.suite" in runs else []
    overrides = runs["overrides"].iloc[0]
    extra = ([overrides] if overrides else []) + [f"suite {s}" for s in suites] \
        + [f"trained on {t}" for t in sorted(trained_on(runs) - {"train"})]
    seeds = f"{runs['tags.seed'].nunique()} seeds"
    return f"{key[:8]} ({', '.join([seeds] + extra)})"


def variant_label(key: str, runs: pd.DataFrame) -> str:
    """'kd.tau=3': a configuration's own overrides (the recipe setting is the report's, shared), or its key."""
    own = [item for item in runs["overrides"].iloc[0].split() if item.split("=", 1)[0] not in RECIPE_DEPARTURES]
    return " ".join(own) or f"configuration {key[:8]}"


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
