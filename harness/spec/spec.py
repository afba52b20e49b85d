"""benchmarks.yaml: the validated spec (sections in harness/spec/schema.py, cell ids in harness/spec/cells.py).

Everything a run needs is resolved from this file: datasets, models, pairs, methods (class,
defaults with their paper source, search space), recipes and suites (cells with the papers'
numbers as labelled references).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from harness.errors import UserError
from harness.spec import overlays
from harness.spec.cells import Cell, method_parts, require_known
from harness.spec.schema import DatasetSpec, GridSpec, MethodSpec, ModelSpec, PairSpec, RecipeSpec, Strict, SuiteSpec

DEFAULT_SPEC = Path(__file__).resolve().parents[1] / "benchmarks.yaml"  # the repository root links to it
NAME = r"[a-z0-9][a-z0-9_.]*"
NAME_RE = re.compile(rf"^{NAME}$")


class Spec(Strict):
    datasets: dict[str, DatasetSpec]
    models: dict[str, ModelSpec]
    pairs: dict[str, PairSpec]
    methods: dict[str, MethodSpec]
    recipes: dict[str, RecipeSpec]
    suites: dict[str, SuiteSpec] = {}
    grids: dict[str, GridSpec] = Field({}, description="named grids for `harness sweep --grid`")
    # set by load_spec: SECTION.NAME -> the overlay that added it (built-in names are absent), and
    # SECTION.NAME -> the overlay that replaced a name on purpose (harness/spec/overlays.py)
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)
    _replaced: dict[str, str] = PrivateAttr(default_factory=dict)

    def origin(self, section: str, name: str) -> str | None:
        """Where SECTION.NAME comes from: an overlay file or package, or None when built in."""
        return self._origins.get(f"{section}.{name}")

    def outside_sources(self) -> list[Path]:
        """The files of the methods whose code lives outside the repository (for caches keyed on code)."""
        return [path for method in self.methods.values() if (path := overlays.method_source(method.class_))]

    def outside(self, methods: list[str]) -> tuple[dict, dict]:
        """For a run of these methods: the fingerprints of those whose code lives outside the repository
        (the git commit does not cover it, so it enters the run key; empty for built-in methods, whose
        keys stay as they were), and what the run records of the overlays (recorded, not keyed: their
        content is in the run's config already)."""
        code = {name: found for name in methods if (found := overlays.code_fingerprint(self.methods[name].class_))}
        origins = {f"methods.{name}": where for name in methods if (where := self.origin("methods", name))}
        recorded = {"spec_origins": origins} if origins else {}
        return code, recorded | ({"spec_replaced": dict(self._replaced)} if self._replaced else {})

    @model_validator(mode="after")
    def _cross_references(self):
        for section in ("datasets", "models", "methods", "recipes", "suites"):
            for name in getattr(self, section):
                if not NAME_RE.match(name):
                    raise ValueError(f"{section}.{name}: names use lowercase letters, digits, '_' and '.'")
        for name, d in self.datasets.items():
            for key in ("recipe", "teacher_recipe"):
                ref = getattr(d, key)
                if ref is not None and ref not in self.recipes:
                    raise ValueError(f"datasets.{name}.{key}: unknown recipe {ref!r}")
            if d.teacher_dataset is not None:
                other = self.datasets.get(d.teacher_dataset)
                if other is None:
                    raise ValueError(f"datasets.{name}.teacher_dataset: unknown dataset {d.teacher_dataset!r}")
                same = ("source", "num_classes", "in_chans", "img_size", "val_size", "split_seed", "test_size")
                if any(getattr(d, k) != getattr(other, k) for k in same) or other.teacher_dataset is not None:
                    raise ValueError(f"datasets.{name}.teacher_dataset: {d.teacher_dataset!r} must share the "
                                     f"source, classes, image shape and splits ({', '.join(same)})")
        for name, m in self.models.items():
            for d, ref in m.recipes.items():
                if d not in self.datasets or ref not in self.recipes:
                    raise ValueError(f"models.{name}.recipes: unknown dataset {d!r} or recipe {ref!r}")
            for d in m.published:
                if d not in self.datasets:
                    raise ValueError(f"models.{name}.published: unknown dataset {d!r}")
        for name, p in self.pairs.items():
            if name != p.name:
                raise ValueError(f"pairs.{name}: a pair is named TEACHER-STUDENT (TEACHERxN-STUDENT with N "
                                 f"teachers), here {p.name}")
            for role in ("teacher", "student"):
                if getattr(p, role) not in self.models:
                    raise ValueError(f"pairs.{name}.{role}: unknown model {getattr(p, role)!r}")
            for i, member in enumerate(p.more_teachers):
                if member.model not in self.models:
                    raise ValueError(f"pairs.{name}.more_teachers[{i}]: unknown model {member.model!r}")
            members = p.teacher_members(0)
            if len(set(members)) != len(members):
                raise ValueError(f"pairs.{name}.more_teachers: each teacher needs its own (model, seed); the first "
                                 "teacher trains at seed 0 by default")
            for d in p.datasets:
                if d not in self.datasets:
                    raise ValueError(f"pairs.{name}.datasets: unknown dataset {d!r}")
        for name, g in self.grids.items():
            if g.method not in self.methods:
                raise ValueError(f"grids.{name}.method: unknown method {g.method!r}")
            if any(not values for values in g.grid.values()):
                raise ValueError(f"grids.{name}.grid: every parameter needs at least one value")
        for name, s in self.suites.items():
            for key in ("recipe", "teacher_recipe"):
                ref = getattr(s, key)
                if ref is not None and ref not in self.recipes:
                    raise ValueError(f"suites.{name}.{key}: unknown recipe {ref!r}")
            for model, ref in s.model_recipes.items():
                if model not in self.models or ref not in self.recipes:
                    raise ValueError(f"suites.{name}.model_recipes: unknown model {model!r} or recipe {ref!r}")
            for method in s.overrides:
                if method not in self.methods:
                    raise ValueError(f"suites.{name}.overrides: unknown method {method!r}")
            for pair, methods in s.pair_overrides.items():
                unknown = [m for m in methods if m not in self.methods]
                if pair not in self.pairs or unknown:
                    raise ValueError(f"suites.{name}.pair_overrides: unknown pair {pair!r} or method "
                                     f"{', '.join(map(repr, unknown)) or '-'}")
            for cell in s.cells:
                try:
                    self.cell(cell)
                except UserError as e:
                    raise ValueError(f"suites.{name}.cells: {e}") from None
            for ref in s.references:
                if ref.cell not in s.cells:
                    raise ValueError(f"suites.{name}.references: {ref.cell!r} is not one of the suite's cells")
            for i, claim in enumerate(s.claims):
                for cell in (c for pair in claim.pairs() for c in pair):
                    try:
                        self.cell(cell)
                    except UserError as e:
                        raise ValueError(f"suites.{name}.claims[{i}]: {e}") from None
        return self

    # ---- cells ---------------------------------------------------------------------------
    def cell(self, cell_id: str) -> Cell:
        """Parse DATASET/TEACHER-STUDENT/METHOD strictly; suggest close names on error."""
        parts = cell_id.split("/")
        if len(parts) != 3 or not all(parts):
            raise UserError(f"cell id {cell_id!r} is malformed: expected DATASET/TEACHER-STUDENT/METHOD, "
                            "e.g. mnist/hinton1200-hinton800/kd")
        dataset, pair, method = parts
        require_known(dataset, self.datasets, "dataset")
        require_known(pair, self.pairs, "teacher-student pair")
        if dataset not in self.pairs[pair].datasets:
            raise UserError(f"pair {pair!r} is not defined for dataset {dataset!r} "
                            f"(it runs on: {', '.join(self.pairs[pair].datasets)})")
        for part in method_parts(method):
            require_known(part, self.methods, "method")
        return Cell(dataset, pair, method)

    def cells(self, suite: str | None = None, dataset: str | None = None, method: str | None = None) -> list[Cell]:
        if suite is not None:
            require_known(suite, self.suites, "suite")
            found = [self.cell(c) for c in self.suites[suite].cells]
        else:
            found = [Cell(d, p, m) for p, pair in self.pairs.items() for d in pair.datasets for m in self.methods]
        if dataset is not None:
            require_known(dataset, self.datasets, "dataset")
            found = [c for c in found if c.dataset == dataset]
        if method is not None:
            found = [c for c in found if c.method == method]
        return found

    def recipe_for(self, dataset: str, model: str, suite: str | None = None,
                   teacher: bool = False) -> tuple[str, RecipeSpec]:
        """The suite's recipe for this model, else the suite's, else the model's for this dataset, else
        the dataset's."""
        d = self.datasets[dataset]
        suite_spec = self.suites[suite] if suite is not None else None
        suite_recipe = (suite_spec.model_recipes.get(model)
                        or (suite_spec.teacher_recipe if teacher else suite_spec.recipe)) if suite_spec else None
        dataset_recipe = (d.teacher_recipe or d.recipe) if teacher else d.recipe
        name = suite_recipe or self.models[model].recipes.get(dataset) or dataset_recipe
        return name, self.recipes[name]


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    return f"{loc}: {message}{more}" if loc else f"{message}{more}"


def load_spec(path: str | os.PathLike | None = None, extra: list[str] | None = None,
              check: Callable[[str, MethodSpec], object] | None = None) -> Spec:
    """Read and validate benchmarks.yaml (path, else $KD_HARNESS_SPEC, else the repo's file), with the
    installed packages' overlays, then the overlay files (`extra`, then $KD_HARNESS_SPEC_EXTRA's;
    harness/spec/overlays.py). `check(name, method)` imports an added method's class (raising UserError):
    a package whose overlay fails it, or fails validation, is left out with a warning on stderr."""
    path = Path(path or os.environ.get("KD_HARNESS_SPEC") or DEFAULT_SPEC)
    raw, origins, replaced = overlays.read_yaml(path), {}, {}
    spec = _validated(raw, origins, path)
    for found in overlays.entry_point_overlays():  # someone else's package: never fatal
        try:
            if isinstance(found, str):
                raise UserError(found)
            merged = overlays.merge(raw, origins, replaced, found, str(path))
            candidate = _validated(merged[0], merged[1], path, found, check)
        except UserError as e:
            print(f"harness: warning: {e}; its methods are left out", file=sys.stderr)
            continue
        (raw, origins, replaced), spec = merged, candidate
    for file in overlays.extra_paths(extra):
        overlay = overlays.file_overlay(file)
        if str(overlay.folder) not in sys.path:  # its methods' class: may name a module beside it
            sys.path.insert(0, str(overlay.folder))
        raw, origins, replaced = overlays.merge(raw, origins, replaced, overlay, str(path))
        spec = _validated(raw, origins, path, overlay, check)
    spec._origins, spec._replaced = origins, replaced
    return spec


def _validated(raw: dict, origins: dict[str, str], path: Path, overlay: overlays.Overlay | None = None,
               check: Callable[[str, MethodSpec], object] | None = None) -> Spec:
    """The Spec of `raw`; an error names the file that defined the entry at fault (an overlay's, or
    the built-in spec's), and the overlay's methods' classes are checked."""
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        message = _format_validation_error(e)
        key = ".".join(message.split(":")[0].split(".")[:2])
        raise UserError(f"{origins.get(key, path)}: {message}") from None
    added = [name for name in spec.methods if overlay is not None and origins.get(f"methods.{name}") == overlay.where]
    for name in added if check is not None else ():
        try:
            check(name, spec.methods[name])
        except UserError as e:
            raise UserError(f"{overlay.where}: {e}") from None
    return spec
