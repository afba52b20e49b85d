"""The run ledger (docs/ledger.md): runs as JSON Lines that travel without their MLflow store.

Line 1 is the manifest: the format version, record counts by role, the teacher files that travel
beside it and the sha256 of every following line's bytes. Then one record per run, sorted, with
sorted keys, so that exporting the same runs twice gives the same bytes. This module reads, checks
and writes ledgers and answers the report's and the audit's store queries from them (`Ledgers`); it
knows no MLflow (harness/tracking/transfer.py moves runs between ledgers and stores).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from harness.errors import UserError

FORMAT = 1  # bump on any change a reader of the previous version would misread
MAGIC = "kd_harness_ledger"
# the run attributes a record keeps besides its tags, params and metrics
RECORD_FIELDS = ("run_id", "run_name", "status", "start_time", "end_time", "origin", "tags", "params",
                 "metrics", "history")
TEACHERS_SUFFIX = ".teachers"  # FILE.teachers/: the teacher weights `export --with-teachers` adds


def sha256_of(path: Path) -> str:
    """A file's sha256, read in blocks (teacher weights, published checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dumps(value) -> str:
    """One canonical JSON line: sorted keys, no spaces; the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sort_key(record: dict) -> tuple:
    tags = record["tags"]
    return (tags.get("role", ""), tags.get("cell") or tags.get("dataset", ""), tags.get("model", ""),
            tags.get("run_key", ""), int(tags.get("seed") or 0), record["start_time"] or 0, record["run_id"])


def write(path: Path, records: list[dict], teacher_files: dict[str, str] | None = None) -> dict:
    """Write `records` as a ledger at `path`; `teacher_files`: file name -> sha256 of the teacher
    weights placed in PATH.teachers/. Returns the manifest."""
    lines = [dumps(r) for r in sorted(records, key=sort_key)]
    body = "".join(line + "\n" for line in lines).encode()
    counts: dict[str, int] = {}
    for record in records:
        role = record["tags"].get("role", "unknown")
        counts[role] = counts.get(role, 0) + 1
    manifest = {MAGIC: FORMAT, "records": dict(sorted(counts.items())), "sha256": hashlib.sha256(body).hexdigest(),
                "teacher_files": dict(sorted((teacher_files or {}).items()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(dumps(manifest).encode() + b"\n" + body)
    tmp.replace(path)
    return manifest


@dataclass(frozen=True)
class Ledger:
    path: Path
    manifest: dict
    records: list[dict]


def read(path: Path) -> Ledger:
    """A ledger, checked: its format version, its sha256 and each record's fields; anything else is one
    line (UserError) and nothing is returned."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read ledger {name}: {e.strerror or e}") from None
    head, _, body = raw.partition(b"\n")
    try:
        manifest = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{name} is not a kd-harness ledger (its first line is not a JSON manifest)") from None
    if not isinstance(manifest, dict) or MAGIC not in manifest:
        raise UserError(f"{name} is not a kd-harness ledger (no {MAGIC!r} in its manifest)")
    version = manifest[MAGIC]
    if not isinstance(version, int) or version > FORMAT:
        raise UserError(f"{name} is ledger format {version}; this kd-harness reads format {FORMAT} and older: "
                        "upgrade kd-harness")
    if hashlib.sha256(body).hexdigest() != manifest.get("sha256"):
        raise UserError(f"{name}: checksum mismatch (its records do not match the manifest's sha256): "
                        "the file was changed or truncated")
    records = []
    for number, line in enumerate(body.splitlines(), 2):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{name}:{number}: not a JSON record") from None
        missing = [f for f in RECORD_FIELDS if not isinstance(record, dict) or f not in record]
        if missing:
            raise UserError(f"{name}:{number}: a record without {', '.join(missing)}")
        records.append(record)
    if len(records) != sum(manifest.get("records", {}).values()):
        raise UserError(f"{name}: {len(records)} records, the manifest counts {sum(manifest['records'].values())}")
    return Ledger(Path(path), manifest, records)


def read_all(paths: list[str | Path]) -> list[Ledger]:
    if not paths:
        raise UserError("--from needs at least one ledger file")
    return [read(Path(p)) for p in paths]


def origin_of(record: dict) -> str:
    """Where a record's run was made: its store and original run id (and host, when known)."""
    origin = record["origin"]
    host = f" on {origin['host']}" if origin.get("host") else ""
    return f"run {origin.get('run_id', record['run_id'])} of {origin.get('store', 'an unknown store')}{host}"


def history_of(record: dict, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged point of a metric; a metric logged once at step 0 is only in `metrics`."""
    if key in record["history"]:
        return [(int(s), float(v)) for s, v in record["history"][key]]
    return [(0, float(record["metrics"][key]))] if key in record["metrics"] else []


class Ledgers:
    """Runs read from ledger files, answering the store queries of harness/tracking/queries.py: what
    `harness report --from` and `harness audit --from` read instead of an MLflow store. A run that
    several ledgers hold (the same original run id) counts once."""

    def __init__(self, paths: list[str | Path]):
        self.ledgers = read_all(paths)
        seen: dict[str, dict] = {}
        for ledger in self.ledgers:
            for record in ledger.records:
                seen.setdefault(record["run_id"], record)
        self.records = list(seen.values())

    def __str__(self) -> str:
        return "ledger " + ", ".join(str(ledger.path) for ledger in self.ledgers)

    def frame(self, records: list[dict]):
        """Records as mlflow.search_runs' DataFrame: run_id, status, start/end time, metrics.*, params.*, tags.*."""
        import pandas as pd

        rows = []
        for r in records:
            row = {"run_id": r["run_id"], "status": r["status"],
                   "start_time": pd.to_datetime(r["start_time"], unit="ms", utc=True),
                   "end_time": pd.to_datetime(r["end_time"], unit="ms", utc=True) if r["end_time"] else pd.NaT}
            row |= {f"metrics.{k}": (math.nan if v is None else float(v)) for k, v in r["metrics"].items()}
            row |= {f"params.{k}": v for k, v in r["params"].items()} | {f"tags.{k}": v for k, v in r["tags"].items()}
            rows.append(row)
        return pd.DataFrame(rows)

    def runs(self, role: str, status: str | None = None, failure: str | None = None) -> list[dict]:
        return [r for r in self.records if r["tags"].get("role") == role and (status is None or r["status"] == status)
                and (failure is None or r["tags"].get("failure") == failure)]

    def teacher_runs(self, keys: list[str]) -> dict:
        """run key -> the FINISHED teacher run, shaped as MLflow's Run (info.run_id, data.tags/params/metrics)."""
        found = {}
        for r in sorted(self.runs("teacher", "FINISHED"), key=lambda r: r["start_time"]):
            if r["tags"].get("run_key") in keys:
                found[r["tags"]["run_key"]] = SimpleNamespace(
                    info=SimpleNamespace(run_id=r["run_id"], status=r["status"]),
                    data=SimpleNamespace(tags=r["tags"], params=r["params"], metrics=r["metrics"]))
        return found

    def histories(self, run_ids: list[str], key: str) -> dict[str, list]:
        by_id = {r["run_id"]: r for r in self.records}
        return {run_id: [SimpleNamespace(step=s, value=v) for s, v in history_of(by_id[run_id], key)]
                for run_id in run_ids}

    def sweep_trials(self, studies: list[str]) -> dict[str, int]:
        counts = {}
        for r in self.runs("sweep"):
            study, metrics = r["tags"].get("study"), r["metrics"]
            if study in studies and "trials_complete" in metrics:
                counts[study] = int(sum(metrics.get(f"trials_{s}", 0) for s in ("complete", "pruned", "fail")))
        return counts
