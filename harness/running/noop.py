"""`harness run` on runs that are all finished, answered in about a second.

Resolving a cell (a RunPlan) needs torch, timm and the models, and asking MLflow needs MLflow and
its store's start-up: about 12 s on 2 cores before the answer "already finished". So every plan's
run key is remembered in HOME/plans.json under a request key: the cell, the run options, this
machine, and a fingerprint of the spec and of the harness's code (any change, and the plan is
resolved again). On a SQLite store, the newest active run with that key is read from MLflow's own
tables (runs, tags, latest_metrics, params) with sqlite3. Only when every requested run is found
FINISHED, on the data the request would train on, is the answer given here; anything else falls through to the normal path, which decides.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
from dataclasses import asdict
from pathlib import Path

from harness.data.fingerprint import data_fingerprint
from harness.running.cache import digest, read_json, write_json
from harness.running.paths import data_root
from harness.spec.options import RunOptions
from harness.spec.spec import Spec

HERE = Path(__file__).parents[1]  # harness/
CODE = [*sorted(HERE.rglob("*.py")), *sorted((HERE.parent / "methods").glob("*.py"))]
NOT_IN_REQUEST = ("progress",)  # options that change nothing about what runs


def fingerprint(spec: Spec) -> str:
    return digest(spec, CODE)


def request_key(spec_fingerprint: str, cell_id: str, opts: RunOptions) -> str:
    options = {k: v for k, v in asdict(opts).items() if k not in NOT_IN_REQUEST}
    text = json.dumps({"cell": cell_id, "options": options, "host": socket.gethostname(),
                       "spec_and_code": spec_fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def remember(home: Path, keys: dict[str, str]) -> None:
    """request key -> run key, added to HOME/plans.json."""
    known = read_json(home / "plans.json")
    if not keys.items() <= known.items():
        write_json(home / "plans.json", known | keys)


def data_of(spec: Spec, dataset: str, root: str | None) -> str | None:
    """The fingerprint of the data a request would train on (`root`: its --data-root; harness/data/fingerprint.py)."""
    return data_fingerprint(spec.datasets[dataset], data_root(root))


def finished(home: Path, tracking_uri: str, requests: list[str], data: list[str | None]) -> list[tuple[str, dict]] | None:
    """(run id, latest metrics) of each request's FINISHED run, or None unless all are known and
    FINISHED in a SQLite store, each on the data of the request (`data`: their fingerprints; a run
    that recorded none predates them)."""
    from harness.tracking.tracking import EXPERIMENT

    known = read_json(home / "plans.json") if tracking_uri.startswith("sqlite:///") else {}
    if not known or not all(r in known for r in requests):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    if not database.exists():
        return None
    answers = []
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            for request, fingerprint in zip(requests, data):
                row = db.execute(
                    "SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                    "JOIN experiments e ON e.experiment_id = r.experiment_id "
                    "WHERE t.key = 'run_key' AND t.value = ? AND r.lifecycle_stage = 'active' AND e.name = ? "
                    "ORDER BY r.start_time DESC LIMIT 1", (known[request], EXPERIMENT)).fetchone()
                if row is None or row[1] != "FINISHED":
                    return None
                recorded = db.execute("SELECT value FROM params WHERE run_uuid = ? AND key = 'data.fingerprint'",
                                      (row[0],)).fetchone()
                if recorded is not None and recorded[0] != fingerprint:  # the normal path says why
                    return None
                metrics = dict(db.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = ?",
                                          (row[0],)).fetchall())
                answers.append((row[0], metrics))
    except sqlite3.Error:  # another MLflow schema, a locked or foreign file: the normal path decides
        return None
    return answers
