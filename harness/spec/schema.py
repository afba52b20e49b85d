"""The sections of benchmarks.yaml as pydantic models: datasets, models, pairs, methods, recipes,
suites with their references and claims, grids. `harness/spec/spec.py` ties them together."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_ZCA_DIM = 16384  # gcn_zca: a d x d float64 covariance of at most 2 GiB (larger images are refused)


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


class PublishedWeights(Strict):
    """A published file of trained weights of an architecture, which `harness teacher --import` takes."""

    file: str = Field(description="the file's name as published (how an imported file is recognised)")
    top1: float = Field(description="the test top-1 (%) its publisher states for it on this dataset")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{8,64}$", description=(
        "its sha256, or the first 8+ hex digits of it (torchvision's file names carry those)"))
    tolerance: float = Field(1.0, ge=0, description="accuracy points the measured top-1 may differ by "
                             "before the import flags the file")
    source: str


class ModelSpec(Strict):
    timm: str = Field(description="name passed to timm.create_model")
    kwargs: dict[str, Any] = {}
    init: InitSpec | None = Field(None, description="a paper's initialisation scheme for every conv/linear "
                                  "parameter; absent: the architecture's own")
    takes_img_size: bool = Field(False, description="pass the dataset's img_size (MLPs, ViTs)")
    recipes: dict[str, str] = Field({}, description="dataset -> the recipe this architecture trains with there")
    # excluded from dumps: a file's description is not how a run trains, so it never enters a run's key
    published: dict[str, list[PublishedWeights]] = Field({}, exclude=True, description=(
        "dataset -> published weights of this architecture on it, checked by `harness teacher --import`"))


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


class Convention(Strict):
    """How a paper arrived at its printed number: which epoch's test accuracy (`selection`) and how
    several runs were combined (`aggregate`, over `k` runs). `unknown` is a valid reading."""

    selection: Literal["last", "best-test", "best-val", "unknown"] = Field("unknown", description=(
        "last: the final epoch; best-test: the best epoch on the test set (test-selected, optimistic); "
        "best-val: the epoch of best validation accuracy"))
    aggregate: Literal["single", "mean-of-k", "median-of-k", "unknown"] = "unknown"
    k: PositiveInt | None = Field(None, description="the number of runs behind a mean-of-k or median-of-k")

    @model_validator(mode="after")
    def _runs(self):
        of_k = self.aggregate in ("mean-of-k", "median-of-k")
        if of_k and self.k is None:
            raise ValueError(f"aggregate {self.aggregate} needs k, the number of runs")
        if not of_k and self.k is not None:
            raise ValueError(f"k goes with mean-of-k or median-of-k, not aggregate {self.aggregate}")
        return self


class Reference(Strict):
    cell: str
    value: float
    metric: Literal["top1", "top5", "top1_error", "top5_error"]
    source: str
    note: str = ""
    convention: Convention | None = Field(None, description="how the paper got this number; absent: the suite's")


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


class Protocol(Strict):
    """How a suite's students train, where its papers differ from our default."""

    train_on: Literal["train", "train+val"] = Field("train", description=(
        "the students' training set. train: without the held-out validation images (read at --select last or "
        "best-val); train+val: every training image, as the papers that report the test set at the last (or "
        "best) epoch did (no validation split: read at the last epoch). A teacher trained here keeps the "
        "training split: the field suites import the papers' own teachers"))


class SuiteSpec(Strict):
    title: str
    source: str
    recipe: str | None = None
    teacher_recipe: str | None = None
    model_recipes: dict[str, str] = Field({}, description=(
        "model -> the recipe it trains with in this suite, as teacher or student, before `recipe` and "
        "`teacher_recipe` (e.g. RepDistiller's lower learning rate for MobileNet and ShuffleNet students)"))
    overrides: dict[str, dict[str, Any]] = Field({}, description="method -> hyperparameters the paper's table used")
    pair_overrides: dict[str, dict[str, dict[str, Any]]] = Field({}, description=(
        "pair -> method -> hyperparameters the paper's scripts set for that pair only (over `overrides`)"))
    cells: list[str]
    references: list[Reference] = []
    claims: list[Claim] = Field([], description="the paper's ordering claims, audited by `harness audit`")
    protocol: Protocol = Field(Protocol(), description="how its students train (default: ours)")
    departures: list[str] = Field([], description="where this suite cannot follow the paper as printed, and why")
    convention: Convention = Field(Convention(), description="the paper's convention for every reference "
                                   "that declares none of its own")
    equivalence_margin: float = Field(0.5, gt=0, description=(
        "accuracy points within which the audit calls two cells equivalent (TOST at this margin)"))
    tolerance: float = Field(0.5, ge=0, description=(
        "accuracy points a paper's single number may differ by (its own run-to-run noise, which the paper does "
        "not print) before a report flags it; the flag needs |ours - paper| > max(2 std, tolerance)"))


class GridSpec(Strict):
    method: str
    grid: dict[str, list[Any]]
    source: str
