"""The teachers behind a report's students (harness/results/report.py): a note per teacher, and per
dataset and pair the teachers' test top-1, the main table's teacher row."""

from __future__ import annotations

import math

import pandas as pd

from harness.tracking.queries import finished_teacher_runs


def teacher_runs(tracking_uri: str, runs: pd.DataFrame) -> tuple[dict[tuple[str, str], list[str]], dict]:
    """(dataset, pair) -> the teacher run keys the shown students of that setting learned from; and
    run key -> the FINISHED teacher run this store has of it."""
    by_setting: dict[tuple[str, str], set] = {}
    if "params.teacher.key" in runs:
        for cell, value in zip(runs["tags.cell"], runs["params.teacher.key"]):
            if isinstance(value, str) and value:
                dataset, pair, _ = cell.split("/")
                by_setting.setdefault((dataset, pair), set()).update(k for k in value.split("+") if k)
    keys = sorted(set().union(*by_setting.values())) if by_setting else []
    found = finished_teacher_runs(tracking_uri, keys) if keys else {}
    return {setting: sorted(keys) for setting, keys in by_setting.items()}, found


def teacher_accuracies(by_setting: dict[tuple[str, str], list[str]], found: dict) -> dict[tuple[str, str], list[float]]:
    """(dataset, pair) -> the test top-1 (last epoch) of each of its teachers that this store has."""
    return {setting: [found[k].data.metrics.get("test_top1_last", math.nan) for k in keys if k in found]
            for setting, keys in by_setting.items()}


def teacher_notes(by_setting: dict[tuple[str, str], list[str]], found: dict) -> list[str]:
    """One line per teacher the shown students learned from: what it is, its test top-1, its run."""
    notes = []
    for key in sorted({k for keys in by_setting.values() for k in keys}):
        run = found.get(key)
        if run is None:
            notes.append(f"teacher {key}: no finished run in this store (its file was trained elsewhere)")
            continue
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        notes.append(f"teacher {tags.get('dataset')}/{tags.get('model')} seed {tags.get('seed')}, "
                     f"{params.get('recipe.epochs')} epochs: {metrics.get('test_top1_last', math.nan):.2f}% test "
                     f"top-1 (MLflow run {run.info.run_id})")
    return notes
