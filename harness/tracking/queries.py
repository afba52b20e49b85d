"""What reports and the audit read of the runs: from an MLflow store (a tracking URI) or from run
ledgers (a `Ledgers`, harness/tracking/ledger.py), alike. A run imported from a ledger
(harness/tracking/transfer.py) is shown under its original run id, so a report from the store it
was imported into is the report of the store it came from."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.tracking.ledger import Ledgers
from harness.tracking.tracking import EXPERIMENT, tracking_uri_scope

# a finished run's summary metrics, which readers of student_results may ask of every row (a diverged
# run logged none of them: its columns are NaN, and exist even when no shown run finished)
SUMMARY_METRICS = ("test_top1_last", "test_top5_last", "test_top1_best_val", "test_top5_best_val",
                   "test_top1_max_test", "test_top5_max_test", "wall_seconds",
                   "mean_epoch_seconds", "peak_memory_mb", "extra_parameters", "student_parameters")
ORIGIN_RUN_ID = "ledger.origin_run_id"  # the tag an imported run keeps its original run id in


def student_results(source: str | Ledgers):
    """Every FINISHED student run, and every one that diverged (FAILED with a non-finite loss: a result
    of its recipe too), as mlflow.search_runs' DataFrame (read only); the column `diverged` tells
    them apart."""
    if isinstance(source, Ledgers):
        finished = source.frame(source.runs("student", "FINISHED"))
        diverged = source.frame(source.runs("student", "FAILED", "non_finite_loss"))
    else:
        finished, diverged = _store_students(source)
    frames = [frame.assign(diverged=flag) for frame, flag in ((finished, False), (diverged, True)) if not frame.empty]
    runs = pd.concat(frames, ignore_index=True) if frames else finished.assign(diverged=False)
    if f"tags.{ORIGIN_RUN_ID}" in runs:  # imported runs: under the id they were made with
        runs["run_id"] = runs[f"tags.{ORIGIN_RUN_ID}"].fillna(runs["run_id"])
    return runs.assign(**{f"metrics.{m}": float("nan") for m in SUMMARY_METRICS if f"metrics.{m}" not in runs})


def _store_students(uri: str):
    import mlflow

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise UserError(f"no MLflow store at {uri}; run some cells first, or pass --tracking-uri/--home")
    with tracking_uri_scope(uri):  # mlflow.search_runs reads the process-wide URI
        found = mlflow.get_experiment_by_name(EXPERIMENT)
        if found is None:
            raise UserError(f"the store {uri} has no kd-harness runs")
        return tuple(mlflow.search_runs([found.experiment_id], output_format="pandas", filter_string=f)
                     for f in ("tags.role = 'student' and attributes.status = 'FINISHED'",
                               "tags.role = 'student' and attributes.status = 'FAILED' "
                               "and tags.failure = 'non_finite_loss'"))


def _store_runs(uri: str, filter_string: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([found.experiment_id], max_results=50000, filter_string=filter_string) if found else []


def finished_teacher_runs(source: str | Ledgers, keys: list[str]) -> dict:
    """run key -> the FINISHED teacher run (MLflow's Run, or its shape) of each of `keys` the source has."""
    if isinstance(source, Ledgers):
        return source.teacher_runs(keys)
    from types import SimpleNamespace

    found = {}
    for run in _store_runs(source, "tags.role = 'teacher' and attributes.status = 'FINISHED'"):
        if run.data.tags.get("run_key") in keys:
            origin = run.data.tags.get(ORIGIN_RUN_ID)
            found[run.data.tags["run_key"]] = run if origin is None else SimpleNamespace(
                info=SimpleNamespace(run_id=origin, status=run.info.status), data=run.data)
    return found


def sweep_trials(source: str | Ledgers, studies: list[str]) -> dict[str, int]:
    """study -> the trials its sweep parent run counted (complete + pruned + failed), for each of
    `studies` whose parent run logged them (harness/tuning/sweep.py, when a sweep ends)."""
    if isinstance(source, Ledgers):
        return source.sweep_trials(studies)
    counts = {}
    for run in _store_runs(source, "tags.role = 'sweep'"):
        study, metrics = run.data.tags.get("study"), run.data.metrics
        if study in studies and "trials_complete" in metrics:
            counts[study] = int(sum(metrics.get(f"trials_{s}", 0) for s in ("complete", "pruned", "fail")))
    return counts


def metric_histories(source: str | Ledgers, run_ids: list[str], key: str) -> dict[str, list]:
    """Each run's logged values of metric `key` (objects with .step and .value), by run id (the
    original run id of an imported run)."""
    if isinstance(source, Ledgers):
        return source.histories(run_ids, key)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(source)
    local = {run_id: run_id for run_id in run_ids}
    for run in _store_runs(source, f"tags.`{ORIGIN_RUN_ID}` != ''") if run_ids else []:
        if run.data.tags[ORIGIN_RUN_ID] in local:
            local[run.data.tags[ORIGIN_RUN_ID]] = run.info.run_id
    return {run_id: client.get_metric_history(local[run_id], key) for run_id in run_ids}
