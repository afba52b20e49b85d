"""Small JSON caches in the runs home, each valid for one spec and one version of some code."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from harness.spec.spec import Spec


def digest(spec: Spec, code: list[Path]) -> str:
    """Changes when the spec or any of the `code` files changes, or the file of a method from outside
    the repository (part of what the spec means)."""
    sha = hashlib.sha256(spec.model_dump_json().encode())
    for path in [*code, *spec.outside_sources()]:
        sha.update(path.name.encode() + path.read_bytes())
    return sha.hexdigest()[:16]


def read_json(path: Path) -> dict:
    """The cache's content; empty when missing or unreadable (it is then rebuilt)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    """Replaced whole, so that two processes writing at once leave one of their files, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
