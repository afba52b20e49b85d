"""Which cells can run, for `harness list`: the methods' own set-up checks (harness/probe.py)
on every listed cell, cached in the runs home under a fingerprint of the spec and of the code of
models and methods. Building a ResNet-1001 or an ImageNet pair takes seconds, so a warm cache
lists without importing torch at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from harness.spec import Cell, Spec

HERE = Path(__file__).parent
CODE = [HERE / "probe.py", *sorted((HERE / "models").glob("*.py")), *sorted((HERE.parent / "methods").glob("*.py"))]


def fingerprint(spec: Spec) -> str:
    """Changes when the spec or the code that decides compatibility changes."""
    digest = hashlib.sha256(spec.model_dump_json().encode())
    for path in CODE:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def mismatches(spec: Spec, cells: list[Cell], home: Path | None) -> dict[str, str | None]:
    """cell id -> why it cannot run (None: it can), cached in HOME/compat.json."""
    cache_path = home / "compat.json" if home is not None else None
    key = fingerprint(spec)
    cached = {}
    if cache_path is not None and cache_path.exists():
        try:
            stored = json.loads(cache_path.read_text())
            cached = stored["verdicts"] if stored.get("fingerprint") == key else {}
        except (ValueError, KeyError):
            cached = {}
    missing = [cell for cell in cells if cell.id not in cached]
    if missing:
        from harness.probe import cell_mismatch
        from methods import validate_defaults

        validate_defaults(spec)
        probes: dict = {}
        cached = cached | {cell.id: cell_mismatch(spec, cell, probes) for cell in missing}
    verdicts = {cell.id: cached[cell.id] for cell in cells}
    if cache_path is not None and missing:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")  # two processes may list at once
        tmp.write_text(json.dumps({"fingerprint": key, "verdicts": cached}))
        tmp.replace(cache_path)
    return verdicts
