"""Which cells can run, for `harness list`: the methods' own set-up checks (harness/running/probe.py)
on every listed cell, cached in the runs home under a fingerprint of the spec and of the code of
models and methods. Building a ResNet-1001 or an ImageNet pair takes seconds, so a warm cache
lists without importing torch at all.
"""

from __future__ import annotations

from pathlib import Path

from harness.running.cache import digest, read_json, write_json
from harness.spec.cells import Cell
from harness.spec.spec import Spec

HERE = Path(__file__).parents[1]  # harness/
CODE = [HERE / "running" / "probe.py", *sorted((HERE / "models").glob("*.py")),
        *sorted((HERE.parent / "methods").glob("*.py"))]


def fingerprint(spec: Spec) -> str:
    """Changes when the spec or the code that decides compatibility changes."""
    return digest(spec, CODE)


def mismatches(spec: Spec, cells: list[Cell], home: Path | None) -> dict[str, str | None]:
    """cell id -> why it cannot run (None: it can), cached in HOME/compat.json."""
    cache_path = home / "compat.json" if home is not None else None
    key = fingerprint(spec)
    stored = read_json(cache_path) if cache_path is not None else {}
    cached = stored.get("verdicts", {}) if stored.get("fingerprint") == key else {}
    missing = [cell for cell in cells if cell.id not in cached]
    if missing:
        from harness.running.probe import cell_mismatch
        from methods import validate_defaults

        validate_defaults(spec)
        probes: dict = {}
        cached = cached | {cell.id: cell_mismatch(spec, cell, probes) for cell in missing}
        if cache_path is not None:
            write_json(cache_path, {"fingerprint": key, "verdicts": cached})
    return {cell.id: cached[cell.id] for cell in cells}
