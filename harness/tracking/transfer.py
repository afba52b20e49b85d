"""Runs between an MLflow store and run ledgers (harness/tracking/ledger.py, docs/ledger.md):
`export_records` reads a store's runs as ledger records, `import_records` writes ledger records into a
store (SQLite or a tracking server), never over a run it already has."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from harness.errors import UserError
from harness.tracking.ledger import Ledger, origin_of
from harness.tracking.queries import ORIGIN_RUN_ID
from harness.tracking.tracking import EXPERIMENT, Tracker

# the tags an imported run carries besides its own: where it came from (ledger.origin_run_id: queries.py)
ORIGIN_TAGS = (ORIGIN_RUN_ID, "ledger.origin_store", "ledger.origin_host", "ledger.sha256")
# tags left out of records: pointers into the exporting store's artifacts, which do not travel
LOCAL_TAGS = ("mlflow.log-model.history",)
EXPORTED_STATUSES = ("FINISHED", "FAILED")  # a RUNNING or KILLED run is unfinished work: it stays home


def public_store(uri: str) -> str:
    """The store's URI without a password (a PostgreSQL URL's credentials never enter a ledger)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}"
                                     + (f":{parts.port}" if parts.port else "")))


def _client(uri: str):
    return Tracker(uri).client  # the experiment exists afterwards; unusable URIs are one line


def _record(client, run, store: str) -> dict:
    """One run as a ledger record; a run that was itself imported keeps its original identity."""
    tags = {k: v for k, v in run.data.tags.items() if k not in LOCAL_TAGS and k not in ORIGIN_TAGS}
    imported = run.data.tags.get(ORIGIN_RUN_ID)
    worker = run.data.tags.get("worker", "")
    origin = ({"run_id": imported, "store": run.data.tags.get("ledger.origin_store", ""),
               "host": run.data.tags.get("ledger.origin_host", "")} if imported else
              {"run_id": run.info.run_id, "store": store, "host": worker.rsplit(":", 1)[0] if worker else ""})
    history = {}
    for key in sorted(run.data.metrics):
        points = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, key))
        if [(s, v) for s, _, v in points] != [(0, run.data.metrics[key])]:
            history[key] = [[s, v] for s, _, v in points]
    return {"run_id": origin["run_id"], "run_name": run.info.run_name, "status": run.info.status,
            "start_time": run.info.start_time, "end_time": run.info.end_time, "origin": origin, "tags": tags,
            "params": dict(run.data.params), "metrics": dict(run.data.metrics), "history": history}


@dataclass
class Exported:
    records: list[dict]
    teacher_files: list[str]  # the cached teacher weights (paths) the exported students distilled from


def export_records(uri: str, cells: list[str] | None = None, run_ids: list[str] | None = None,
                   with_trials: bool = False) -> Exported:
    """The store's finished and failed runs of `cells` (or the runs `run_ids`, or every run), with the
    teacher runs their students distilled from and the sweep runs their tuning budget is counted on."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=50000,
                              order_by=["attributes.start_time ASC"])
    by_id = {r.info.run_id: r for r in runs} | {r.data.tags[ORIGIN_RUN_ID]: r for r in runs
                                                if ORIGIN_RUN_ID in r.data.tags}
    if run_ids:
        unknown = [i for i in run_ids if i not in by_id]
        if unknown:
            raise UserError(f"no run {unknown[0]} in the store {public_store(uri)}")
        chosen = [by_id[i] for i in run_ids]
    else:
        roles = ("student", "trial") if with_trials else ("student",)
        chosen = [r for r in runs if r.data.tags.get("role") in roles and r.info.status in EXPORTED_STATUSES
                  and (cells is None or r.data.tags.get("cell") in cells)]
    teacher_keys = {k for r in chosen for k in r.data.params.get("teacher.key", "").split("+") if k}
    studies = {r.data.tags.get("from_sweep") for r in chosen} - {None, ""}
    teachers = {}
    for r in runs:  # the newest finished teacher run of each key, as the reports read it
        if r.data.tags.get("role") == "teacher" and r.info.status == "FINISHED" \
                and r.data.tags.get("run_key") in teacher_keys:
            teachers[r.data.tags["run_key"]] = r
    sweeps = [r for r in runs if r.data.tags.get("role") == "sweep" and r.data.tags.get("study") in studies]
    selected = {r.info.run_id: r for r in [*chosen, *teachers.values(), *sweeps]}
    store = public_store(uri)
    files = sorted({r.data.params["teacher.path"] for r in chosen if r.data.params.get("teacher.path")}
                   | {r.data.tags["teacher_file"] for r in teachers.values() if r.data.tags.get("teacher_file")})
    return Exported([_record(client, r, store) for r in selected.values()], files)


def _results(record: dict) -> tuple:
    """What two runs of one key must agree on to be the same result: status, failure and accuracies
    (test and validation metrics); times and memory differ between any two machines."""
    metrics = record["metrics"]
    return (record["status"], record["tags"].get("failure"),
            tuple(sorted((k, metrics[k]) for k in metrics if k.startswith(("test", "val")))))


def _describe(record: dict) -> str:
    metrics = record["metrics"]
    top1 = metrics.get("test_top1_last")
    return f"{record['status']}" + (f", test top-1 {top1:.2f}%" if top1 is not None else "") + f" ({origin_of(record)})"


@dataclass
class Imported:
    added: list[str] = field(default_factory=list)  # run ids (original) written
    present: list[str] = field(default_factory=list)  # already in the store with the same results
    conflicts: list[str] = field(default_factory=list)  # one line each: both values, both origins
    seconds: float = 0.0


def _existing(client, experiment_id: str) -> tuple[dict, dict]:
    """The store's records by original run id, and its finished or failed runs by run key."""
    by_origin, by_key = {}, {}
    for run in client.search_runs([experiment_id], max_results=50000):
        record = _record_light(run)
        by_origin[record["run_id"]] = record
        if run.info.status in EXPORTED_STATUSES and run.data.tags.get("run_key"):
            by_key.setdefault(run.data.tags["run_key"], []).append(record)
    return by_origin, by_key


def _record_light(run) -> dict:
    """A stored run's identity and results, without its metric histories."""
    origin_id = run.data.tags.get(ORIGIN_RUN_ID, run.info.run_id)
    origin = {"run_id": origin_id, "store": run.data.tags.get("ledger.origin_store", "this store"),
              "host": run.data.tags.get("ledger.origin_host", "")}
    return {"run_id": origin_id, "status": run.info.status, "origin": origin, "tags": run.data.tags,
            "metrics": run.data.metrics}


def import_records(uri: str, ledgers: list[Ledger], keep_both: bool = False) -> Imported:
    """Write every record of `ledgers` the store lacks; a record whose run (or run key) the store has
    with the same results is skipped, with other results reported as a conflict and skipped (or,
    `keep_both`, written beside it). Ledgers are read and checked before anything is written."""
    from mlflow.entities import Metric, Param

    started = time.perf_counter()
    tracker = Tracker(uri)
    client = tracker.client
    by_origin, by_key = _existing(client, tracker.experiment_id)
    outcome = Imported()
    for ledger in ledgers:
        for record in ledger.records:
            known = by_origin.get(record["run_id"])
            same_key = by_key.get(record["tags"].get("run_key"), []) if record["status"] in EXPORTED_STATUSES else []
            if known is not None and _results(known) == _results(record) \
                    or any(_results(r) == _results(record) for r in same_key):
                outcome.present.append(record["run_id"])
                continue
            clash = known or next((r for r in same_key if r["status"] == record["status"]), None)
            if clash is not None:
                outcome.conflicts.append(
                    f"{record['tags'].get('cell') or record['tags'].get('run_key')} seed {record['tags'].get('seed')}: "
                    f"the store has {_describe(clash)}; {ledger.path} has {_describe(record)}")
                if not keep_both or known is not None:
                    continue
            origin = record["origin"]
            tags = record["tags"] | {ORIGIN_RUN_ID: record["run_id"], "ledger.origin_store": origin.get("store", ""),
                                     "ledger.origin_host": origin.get("host", ""),
                                     "ledger.sha256": ledger.manifest["sha256"]}
            run = client.create_run(tracker.experiment_id, start_time=record["start_time"], tags=tags,
                                    run_name=record["run_name"])
            run_id, stamp = run.info.run_id, record["start_time"] or 0
            metrics = [Metric(k, float(v), stamp, int(s)) for k, points in record["history"].items() for s, v in points]
            metrics += [Metric(k, float(v), stamp, 0) for k, v in record["metrics"].items() if k not in record["history"]]
            client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in record["params"].items()])
            client.set_terminated(run_id, status=record["status"], end_time=record["end_time"])
            by_origin[record["run_id"]] = record
            outcome.added.append(record["run_id"])
    outcome.seconds = time.perf_counter() - started
    return outcome
