"""Spec overlays: datasets, models, pairs, methods, recipes, suites and grids added to the built-in
spec from the user's YAML files (--spec-extra, $KD_HARNESS_SPEC_EXTRA) and from installed packages
(entry points of the group `kd_harness.methods`), as lm-evaluation-harness's --include_path adds tasks.

An overlay holds any of the spec's sections and, optionally, `replaces: [SECTION.NAME, ...]`: the
names it redefines on purpose (any other name that exists already is refused). An overlay file's
folder goes on sys.path, so that its methods' `class:` may name a module beside it.

A method whose class lives outside the repository's methods/ package is outside code: the git commit does
not cover it, so `code_fingerprint` (its module file's sha256, and its distribution's name and
version) names it in the run key. Finding the file imports nothing of the method (no torch).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import types
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from harness.errors import UserError

SECTIONS = ("datasets", "models", "pairs", "methods", "recipes", "suites", "grids")
GROUP = "kd_harness.methods"


@dataclass(frozen=True)
class Overlay:
    where: str  # the file, or "package NAME (entry point EP)": what messages and runs name
    raw: dict
    folder: Path | None = None  # put on sys.path: its methods' modules import from there


def read_yaml(path: Path) -> dict:
    """A spec file's mapping, or one line saying why not."""
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read benchmarks file {path}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping with datasets, models, pairs, methods, recipes")
    return raw


def extra_paths(given: list[str] | None) -> list[Path]:
    """--spec-extra files, then $KD_HARNESS_SPEC_EXTRA's (os.pathsep-separated)."""
    from_env = [p for p in os.environ.get("KD_HARNESS_SPEC_EXTRA", "").split(os.pathsep) if p]
    return [Path(p).resolve() for p in [*(given or []), *from_env]]


def file_overlay(path: Path) -> Overlay:
    return Overlay(str(path), read_yaml(path), path.parent)


def entry_point_overlays() -> list[Overlay | str]:
    """Each installed package's overlay, or a line saying why it cannot be read. An entry point names
    a dict (the overlay), a YAML file's path, or a module whose OVERLAY is one of these."""
    found: list[Overlay | str] = []
    for ep in metadata.entry_points(group=GROUP):
        where = f"package {ep.dist.name if ep.dist else '?'} (entry point {ep.name})"
        try:
            value = ep.load()
        except Exception as e:  # any failure of someone else's import: named, never fatal
            found.append(f"{where}: cannot import: {type(e).__name__}: {' '.join(str(e).split())}")  # one line
            continue
        value = getattr(value, "OVERLAY", value) if isinstance(value, types.ModuleType) else value
        try:
            if isinstance(value, dict):
                found.append(Overlay(where, value))
            elif isinstance(value, (str, os.PathLike)):
                found.append(Overlay(where, read_yaml(Path(value))))
            else:
                found.append(f"{where}: gives a {type(value).__name__}, not an overlay (a dict or a YAML file's path)")
        except UserError as e:
            found.append(f"{where}: {e}")
    return found


def merge(raw: dict, origins: dict[str, str], replaced: dict[str, str], overlay: Overlay,
          base: str) -> tuple[dict, dict[str, str], dict[str, str]]:
    """The spec's mapping with the overlay's sections added; origins: SECTION.NAME -> where it was
    defined, for every name not built in (`base`: the built-in spec's file); replaced: SECTION.NAME ->
    the overlay that redefined it."""
    unknown = sorted(set(overlay.raw) - set(SECTIONS) - {"replaces"})
    if unknown:
        raise UserError(f"{overlay.where}: unknown section {unknown[0]!r} (an overlay has "
                        f"{', '.join(SECTIONS)} and replaces)")
    replaces = overlay.raw.get("replaces") or []
    if not (isinstance(replaces, list) and all(isinstance(r, str) for r in replaces)):
        raise UserError(f"{overlay.where}: replaces is a list of SECTION.NAME, e.g. [methods.kd]")
    for key in replaces:
        section, _, name = key.partition(".")
        if name not in (overlay.raw.get(section) or {}) or name not in (raw.get(section) or {}):
            raise UserError(f"{overlay.where}: replaces {key}, which must be defined both before and in the overlay")
    merged, origins, replaced = dict(raw), dict(origins), dict(replaced)
    for section in SECTIONS:
        entries = overlay.raw.get(section) or {}
        if not isinstance(entries, dict):
            raise UserError(f"{overlay.where}: {section} must be a mapping of names")
        known = dict(merged.get(section) or {})
        for name, body in entries.items():
            key = f"{section}.{name}"
            if name in known and key not in replaces:
                raise UserError(f"{overlay.where}: {key} is already defined in {origins.get(key, base)}; "
                                f"add 'replaces: [{key}]' to the overlay to replace it on purpose")
            if key in replaces:
                replaced[key] = overlay.where
            known[name], origins[key] = body, overlay.where
        merged[section] = known
    return merged, origins, replaced


def method_source(class_path: str) -> Path | None:
    """The file of the module that holds a method's class, for a class outside the repository's methods/
    package (None for built-in or unfindable classes: importing them says why). Runs no method code but
    a package's __init__ (finding methods.x would import methods/__init__.py, and torch: it is not asked)."""
    module = class_path.rpartition(".")[0]
    if not module or module.partition(".")[0] == "methods":
        return None
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(found.origin).resolve() if found and found.origin and os.path.isfile(found.origin) else None


def code_fingerprint(class_path: str) -> dict | None:
    """What names an outside method's code in a run key and its record: the module, its file's sha256,
    and its installed distribution's name and version (if any); None for a built-in method."""
    path = method_source(class_path)
    if path is None:
        return None
    module = class_path.rpartition(".")[0]
    out = {"module": module, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    distributions = metadata.packages_distributions().get(module.partition(".")[0], [])
    if distributions:
        out |= {"package": distributions[0], "version": metadata.version(distributions[0])}
    return out
