"""Which cells can run, for `harness list`: the methods' own set-up checks (harness/running/probe.py)
on every listed cell, cached in the runs home (compat.json) by what decides each answer:

- per model: its features' shapes and signs on the dataset's probe batch at the pair's stage taps
  (the only thing a set-up check reads of a model), keyed by the dataset's and the model's spec, the
  taps and the code of the models and the probe; built once per model, not once per pair;
- per cell: its verdict, keyed by its models' keys, the pair's spec, and each method part's spec
  and code (its file in methods/ or outside, the files of methods/ it imports, the shared ones).

So adding a method checks only that method's cells, from cached model signatures, without building
a model; a warm cache lists without importing torch at all. A fresh runs home starts from the seed
shipped with the package (harness/compat_seed.json: the built-in spec's answers at this commit, made by
scripts/seed_compat.sh and checked against a fresh computation by tests/test_compat.py): only its
entries whose keys match the code and spec in use are taken, so a stale seed costs time, never a
wrong answer.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path

from harness.running.cache import digest_of, file_digest, read_json, write_json
from harness.spec.cells import Cell, method_parts
from harness.spec.spec import Spec

HERE = Path(__file__).parents[1]  # harness/
METHODS = HERE.parent / "methods"
SEED = HERE / "compat_seed.json"
MODEL_CODE = [HERE / "running" / "probe.py", *sorted((HERE / "models").glob("*.py"))]
SHARED_METHOD_CODE = [METHODS / "__init__.py", METHODS / "base.py", METHODS / "common.py"]
IMPORT = re.compile(r"^\s*from methods\.(\w+) import", re.M)


def method_files(class_path: str) -> list[Path]:
    """The code of a method's class: methods/MODULE.py and the files of methods/ it imports,
    transitively; a class from outside methods/, its module's file (found without running it)."""
    module = class_path.rpartition(".")[0]
    if not module.startswith("methods."):
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):  # no such module: the method's validation says so
            return []
        return [Path(found.origin)] if found is not None and found.has_location else []
    files, todo = set(), [module.removeprefix("methods.")]
    while todo:
        path = METHODS / f"{todo.pop()}.py"
        if path not in files and path.exists():
            files.add(path)
            todo += IMPORT.findall(path.read_text())
    return sorted(files)


def library_versions() -> dict[str, str]:
    """The libraries that build the models, which decide their shapes too."""
    return {name: importlib.metadata.version(name) for name in ("torch", "timm", "torchvision")}


class Keys:
    """The cache keys of one spec's models and cells, each computed once."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.model_code = digest_of(file_digest(MODEL_CODE), library_versions())
        self.models: dict[tuple, str] = {}
        self.methods: dict[str, str] = {}

    def members(self, cell: Cell) -> list[tuple[str, list[int]]]:
        """(model, stage taps) of the cell's teachers, then its student."""
        pair = self.spec.pairs[cell.pair]
        return [(name, pair.stages.teacher) for name, _ in pair.teacher_members(0)] + \
            [(pair.student, pair.stages.student)]

    def model(self, dataset: str, name: str, stages: list[int]) -> str:
        key = (dataset, name, tuple(stages))
        if key not in self.models:
            self.models[key] = digest_of(self.model_code, self.spec.datasets[dataset].model_dump(mode="json"),
                                         self.spec.models[name].model_dump(mode="json"), stages)
        return self.models[key]

    def method(self, name: str) -> str:
        if name not in self.methods:
            method = self.spec.methods[name]
            code = file_digest(method_files(method.class_) + SHARED_METHOD_CODE)
            self.methods[name] = digest_of(method.model_dump(mode="json"), code)
        return self.methods[name]

    def cell(self, cell: Cell) -> str:
        return digest_of([self.model(cell.dataset, name, stages) for name, stages in self.members(cell)],
                         self.spec.pairs[cell.pair].model_dump(mode="json"),
                         [self.method(name) for name in method_parts(cell.method)])


CACHE_FORMAT = 2  # HOME/compat.json's shape: models' signatures and per-cell [key, verdict]


def signatures_in(home: Path) -> dict:
    """The models' cached signatures (what `harness list` has probed in this runs home, and the seed's)."""
    return cache_of(SEED).get("models", {}) | cache_of(home / "compat.json").get("models", {})


def pair_probe(spec: Spec, keys: Keys, signatures: dict, dataset: str, pair: str):
    """The pair's probe from its models' signatures, each computed (into `signatures`) only if missing."""
    from harness.running.probe import model_signature, signature_probe

    members = []
    for name, stages in keys.members(Cell(dataset, pair, "")):
        key = keys.model(dataset, name, stages)
        if key not in signatures:
            signatures[key] = model_signature(spec, dataset, name, stages)
        members.append(signatures[key])
    return signature_probe(spec, pair, members)


def cache_of(path: Path | None) -> dict:
    """A compatibility cache's content; empty when missing, unreadable or of another format."""
    stored = read_json(path) if path is not None else {}
    return stored if stored.get("format") == CACHE_FORMAT else {}


def mismatches(spec: Spec, cells: list[Cell], home: Path | None, seed: Path | None = SEED) -> dict[str, str | None]:
    """cell id -> why it cannot run (None: it can), cached in HOME/compat.json; what the home lacks is
    taken from `seed` where its keys match."""
    cache_path = home / "compat.json" if home is not None else None
    stored, shipped = cache_of(cache_path), cache_of(seed)
    signatures, verdicts = shipped.get("models", {}) | stored.get("models", {}), stored.get("verdicts", {})
    seeded = shipped.get("verdicts", {})
    keys = Keys(spec)
    wanted = {cell.id: keys.cell(cell) for cell in cells}
    for cell_id, key in wanted.items():  # signatures are keyed by content; a verdict names its key
        if verdicts.get(cell_id, [None])[0] != key and seeded.get(cell_id, [None])[0] == key:
            verdicts[cell_id] = seeded[cell_id]
    missing = [cell for cell in cells if verdicts.get(cell.id, [None])[0] != wanted[cell.id]]
    if missing:
        from harness.running.probe import cell_mismatch
        from methods import validate_defaults

        validate_defaults(spec)
        probes: dict = {}
        for cell in missing:
            verdicts[cell.id] = [wanted[cell.id], cell_mismatch(
                spec, cell, probes, lambda spec, dataset, pair: pair_probe(spec, keys, signatures, dataset, pair))]
        if cache_path is not None:
            write_json(cache_path, {"format": CACHE_FORMAT, "models": signatures, "verdicts": verdicts})
    return {cell.id: verdicts[cell.id][1] for cell in cells}


def write_seed(spec: Spec, path: Path = SEED) -> None:
    """The seed: every built-in cell of `spec` (none from an overlay or an installed package) computed
    afresh in a throwaway runs home, its cache written to `path` (scripts/seed_compat.sh)."""
    import tempfile

    cells = [cell for cell in spec.cells()
             if not any(spec.origin(section, name) for section, name in
                        [("datasets", cell.dataset), ("pairs", cell.pair)]
                        + [("methods", part) for part in method_parts(cell.method)])]
    with tempfile.TemporaryDirectory() as home:
        mismatches(spec, cells, Path(home), seed=None)
        fresh = cache_of(Path(home) / "compat.json")
    # one line per model and per cell, so that a change to the seed reads as the cells it changed
    sections = [f'"{name}": {{\n' + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}"
                                                for k, v in sorted(fresh[name].items())) + "\n}"
                for name in ("models", "verdicts")]
    head = f'"format": {CACHE_FORMAT},\n"versions": {json.dumps(library_versions(), sort_keys=True)}'
    path.write_text("{\n" + ",\n".join([head, *sections]) + "\n}\n")
