"""benchmarks.yaml: the validated schema, and cell ids.

Everything a run needs is resolved from this file: datasets, models, pairs, methods (class,
defaults with their paper source, search space), recipes and suites (cells with the papers'
numbers as labelled references).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import UserError

MAX_ZCA_DIM = 16384  # gcn_zca: a d x d float64 covariance of at most 2 GiB (larger images are refused)

DEFAULT_SPEC = Path(__file__).resolve().parent / "benchmarks.yaml"  # the repository root links to it
NAME = r"[a-z0-9][a-z0-9_.]*"
NAME_RE = re.compile(rf"^{NAME}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


PositiveInt = Annotated[int, Field(gt=0)]


class DatasetSpec(Strict):
    source: Literal["sklearn_digits", "torchvision_mnist", "torchvision_cifar10", "torchvision_cifar100",
                    "imagefolder"]
    folder: str | None = Field(None, description="imagefolder: the directory under the data root that holds "
                               "train/ and val/, one subdirectory per class (ImageNet's usual layout)")
    num_classes: PositiveInt
    in_chans: PositiveInt
    img_size: PositiveInt
    mean: list[float]
    std: list[float]
    val_size: PositiveInt = Field(description="images held out of the training set for validation")
    test_size: PositiveInt | None = Field(
        None, description="only for sources without an official test split (digits)")
    split_seed: int = 0
    augment: Literal["none", "crop_flip", "resized_crop_flip"] = "none"
    eval_resize: PositiveInt | None = Field(None, description="imagefolder: resize the shorter side to this, "
                                            "then center-crop img_size, for evaluation")
    noise_std: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Gaussian noise added once to every image, in units of the [0, 1] pixel range")
    noise_seed: int = 0
    train_size: PositiveInt | None = Field(
        None, description="keep this many training images (stratified by class, seeded by split_seed) "
        "after the validation split: a reduced-data regime; validation and test are unchanged")
    teacher_dataset: str | None = Field(
        None, description="the dataset the cell's teacher is trained on (same source, classes and test "
        "split), e.g. the full training set while the student sees a reduced one")
    preprocess: Literal["none", "gcn_zca"] = Field(
        "none", description="gcn_zca: global contrast normalisation + ZCA whitening, statistics from the "
        "training split (Goodfellow 2013, Romero 2015, LPL §V-B); replaces mean/std normalisation")
    recipe: str
    teacher_recipe: str | None = None

    @model_validator(mode="after")
    def _channels(self):
        if self.preprocess == "gcn_zca":
            if self.source == "imagefolder":
                raise ValueError("preprocess gcn_zca needs an in-memory dataset: ZCA statistics of full-size "
                                 "ImageNet images do not fit in memory")
            if self.in_chans * self.img_size ** 2 > MAX_ZCA_DIM:
                raise ValueError(f"preprocess gcn_zca: {self.in_chans} x {self.img_size} x {self.img_size} images "
                                 f"need a covariance too large for memory (at most {MAX_ZCA_DIM} values per image)")
        if (self.source == "imagefolder") != (self.folder is not None):
            raise ValueError("folder is required for source imagefolder, and only for it")
        if (self.source == "imagefolder") != (self.augment in ("resized_crop_flip", "none")) \
                and self.augment != "none":
            raise ValueError("resized_crop_flip is the augmentation of imagefolder datasets, crop_flip of the others")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean and std need {self.in_chans} values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class UniformInit(Strict):
    kind: Literal["uniform"]
    a: float
    b: float
    source: str = ""

    @model_validator(mode="after")
    def _range(self):
        if not self.a < self.b:
            raise ValueError(f"uniform init needs a < b, got a={self.a}, b={self.b}")
        return self


class NormalInit(Strict):
    kind: Literal["normal"]
    std: Annotated[float, Field(gt=0)]
    mean: float = 0.0
    source: str = ""


InitSpec = Annotated[UniformInit | NormalInit, Field(discriminator="kind")]


class ModelSpec(Strict):
    timm: str = Field(description="name passed to timm.create_model")
    kwargs: dict[str, Any] = {}
    init: InitSpec | None = Field(None, description="a paper's initialisation scheme for every conv/linear "
                                  "parameter; absent: the architecture's own")
    takes_img_size: bool = Field(False, description="pass the dataset's img_size (MLPs, ViTs)")
    recipes: dict[str, str] = Field({}, description="dataset -> the recipe this architecture trains with there")


class StageTaps(Strict):
    teacher: list[int]
    student: list[int]

    @model_validator(mode="after")
    def _paired(self):
        if len(self.teacher) != len(self.student):
            raise ValueError("teacher and student stage lists must have the same length (they are paired)")
        return self


class TeacherMember(Strict):
    model: str
    seed: int = Field(ge=0, description="this teacher's own training seed (absolute, not shifted by --teacher-seed)")


class PairSpec(Strict):
    teacher: str
    student: str
    datasets: list[str]
    stages: StageTaps = Field(description="paired forward_intermediates indices that feature methods compare")
    hint: int = Field(-1, description="which entry of `stages` is FitNet's hint/guided pair")
    more_teachers: list[TeacherMember] = Field([], description=(
        "a multi-teacher pair: teachers besides `teacher` (which trains at --teacher-seed), each trained and "
        "cached on its own; the stage taps apply to every teacher. Named TEACHERxN-STUDENT, N teachers in all"))

    def teacher_members(self, teacher_seed: int) -> list[tuple[str, int]]:
        """(model, seed) of every teacher, `teacher` first."""
        return [(self.teacher, teacher_seed)] + [(m.model, m.seed) for m in self.more_teachers]

    @property
    def name(self) -> str:
        ensemble = f"x{1 + len(self.more_teachers)}" if self.more_teachers else ""
        return f"{self.teacher}{ensemble}-{self.student}"


class Default(Strict):
    value: Any
    source: str = Field(description="paper and section the default comes from, or why it was chosen")


class MethodSpec(Strict):
    class_: str = Field(alias="class", description="import path module.Class of the Distiller")
    paper: str
    defaults: dict[str, Default] = {}
    search_space: dict[str, str] = {}


class ScheduleSpec(Strict):
    kind: Literal["constant", "multistep", "cosine"] = "constant"
    milestones: list[float] = Field([], description="fractions of the epochs at which lr is multiplied by gamma")
    gamma: float = 0.1

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v):
        if any(not 0 < m < 1 for m in v) or v != sorted(v):
            raise ValueError("milestones are increasing fractions of the training, each in (0, 1)")
        return v


class RecipeSpec(Strict):
    optimizer: Literal["sgd", "adam", "rmsprop"] = "sgd"
    lr: Annotated[float, Field(gt=0)]
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.99  # RMSprop's smoothing constant
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    schedule: ScheduleSpec = ScheduleSpec()
    epochs: PositiveInt
    batch_size: PositiveInt
    eval_batch_size: PositiveInt = 1000
    source: str = ""


class Reference(Strict):
    cell: str
    value: float
    metric: Literal["top1", "top5", "top1_error", "top5_error"]
    source: str
    note: str = ""


class Claim(Strict):
    """A paper's ordering claim: `better` reaches a higher accuracy than each of `than` in
    `setting` (DATASET/TEACHER-STUDENT), or `better`/`than` are whole cell ids (claims across pairs)."""

    better: str
    than: list[str] = Field(min_length=1)
    setting: str | None = Field(None, description="DATASET/TEACHER-STUDENT that method names are completed with")
    metric: Literal["top1", "top5"] = "top1"
    source: str
    note: str = ""

    @field_validator("than", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    def cell_id(self, name: str) -> str:
        return name if "/" in name or self.setting is None else f"{self.setting}/{name}"

    def pairs(self) -> list[tuple[str, str]]:
        """(better cell, worse cell) for each comparison the claim makes."""
        return [(self.cell_id(self.better), self.cell_id(other)) for other in self.than]


class SuiteSpec(Strict):
    title: str
    source: str
    recipe: str | None = None
    teacher_recipe: str | None = None
    overrides: dict[str, dict[str, Any]] = Field({}, description="method -> hyperparameters the paper's table used")
    cells: list[str]
    references: list[Reference] = []
    claims: list[Claim] = Field([], description="the paper's ordering claims, audited by `harness audit`")
    departures: list[str] = Field([], description="where this suite cannot follow the paper as printed, and why")
    tolerance: float = Field(0.5, ge=0, description=(
        "accuracy points a paper's single number may differ by (its own run-to-run noise, which the paper does "
        "not print) before a report flags it; the flag needs |ours - paper| > max(2 std, tolerance)"))


class GridSpec(Strict):
    method: str
    grid: dict[str, list[Any]]
    source: str


class Spec(Strict):
    datasets: dict[str, DatasetSpec]
    models: dict[str, ModelSpec]
    pairs: dict[str, PairSpec]
    methods: dict[str, MethodSpec]
    recipes: dict[str, RecipeSpec]
    suites: dict[str, SuiteSpec] = {}
    grids: dict[str, GridSpec] = Field({}, description="named grids for `harness sweep --grid`")

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
            for method in s.overrides:
                if method not in self.methods:
                    raise ValueError(f"suites.{name}.overrides: unknown method {method!r}")
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
        """The suite's recipe, else the model's for this dataset, else the dataset's."""
        d = self.datasets[dataset]
        suite_spec = self.suites[suite] if suite is not None else None
        suite_recipe = (suite_spec.teacher_recipe if teacher else suite_spec.recipe) if suite_spec else None
        dataset_recipe = (d.teacher_recipe or d.recipe) if teacher else d.recipe
        name = suite_recipe or self.models[model].recipes.get(dataset) or dataset_recipe
        return name, self.recipes[name]


@dataclass(frozen=True)
class Cell:
    dataset: str
    pair: str
    method: str

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.pair}/{self.method}"

    @property
    def teacher(self) -> str:
        return self.pair.split("-")[0]

    @property
    def student(self) -> str:
        return self.pair.split("-")[1]

    def __str__(self) -> str:
        return self.id


def method_parts(method: str) -> list[str]:
    """A method id may join registered methods with '+': 'kd+nst_poly'."""
    parts = method.split("+")
    if not all(parts):
        raise UserError(f"method {method!r} is malformed: join method names with single '+'")
    if len(set(parts)) != len(parts):
        raise UserError(f"method {method!r} names a method twice")
    return parts


def split_assignment(flag: str, item: str, method_id: str, form: str) -> tuple[str, str, str]:
    """`[METHOD.]NAME=VALUE` as (method, name, value text); a bare NAME needs a single-method id."""
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise UserError(f"{flag} {item!r}: expected {form}")
    method, _, key = name.rpartition(".")
    if not method:
        parts = method_parts(method_id)
        if len(parts) > 1:
            raise UserError(f"{flag} {item!r}: {method_id!r} combines methods; write METHOD.{name}=...")
        method = parts[0]
    return method, key, value


def require_known(name: str, table: dict, what: str) -> None:
    if name in table:
        return
    close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(table))}"
    raise UserError(f"unknown {what} {name!r}{hint}")


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    return f"{loc}: {message}{more}" if loc else f"{message}{more}"


def load_spec(path: str | os.PathLike | None = None) -> Spec:
    """Read and validate benchmarks.yaml (path, else $KD_HARNESS_SPEC, else the repo's file)."""
    path = Path(path or os.environ.get("KD_HARNESS_SPEC") or DEFAULT_SPEC)
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
    try:
        return Spec.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{path}: {_format_validation_error(e)}") from None
