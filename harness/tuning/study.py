"""The pieces of an Optuna study: its search space (benchmarks.yaml's, a named grid's, or --space),
its sampler, pruner and storage, and the objective its trials measure; checked before any trial runs."""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from harness.errors import UserError
from harness.running.plan import config_key, flatten
from harness.spec.cells import Cell, method_parts, split_assignment
from harness.spec.spec import Spec
from harness.tuning.options import SweepOptions
from methods import method_class


@dataclass(frozen=True)
class Dimension:
    method: str
    param: str
    kind: str  # float | int | cat
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial, name: str):
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(name, list(self.choices))


def parse_dimension(method: str, param: str, text: str) -> Dimension:
    """'float:LOW:HIGH[:log]', 'int:LOW:HIGH[:log]' or 'cat:A,B,C'."""
    kind, _, rest = text.partition(":")
    where = f"search space for {method}.{param} ({text!r})"
    if kind == "cat":
        import yaml

        choices = tuple(yaml.safe_load(c) for c in rest.split(",") if c)
        if not choices:
            raise UserError(f"{where}: give at least one choice, cat:A,B")
        return Dimension(method, param, "cat", choices=choices)
    if kind not in ("float", "int"):
        raise UserError(f"{where}: the type must be float, int or cat")
    parts = rest.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise UserError(f"{where}: expected {kind}:LOW:HIGH or {kind}:LOW:HIGH:log")
    try:
        low, high = (int(p) if kind == "int" else float(p) for p in parts[:2])
    except ValueError:
        raise UserError(f"{where}: LOW and HIGH must be {kind} numbers") from None
    if not low < high:
        raise UserError(f"{where}: the range is empty or inverted")
    log = len(parts) == 3
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs LOW > 0")
    return Dimension(method, param, kind, low, high, log)


def resolve_space(spec: Spec, cell: Cell, cli: list[str]) -> dict[str, Dimension]:
    """The methods' search spaces from benchmarks.yaml, overridden by --space NAME=SPEC."""
    parts = method_parts(cell.method)
    qualify = (lambda m, p: f"{m}.{p}") if len(parts) > 1 else (lambda m, p: p)
    space = {qualify(m, p): parse_dimension(m, p, text)
             for m in parts for p, text in spec.methods[m].search_space.items()}
    for item in cli:
        method, param, text = split_assignment("--space", item, cell.method,
                                               "NAME=TYPE:LOW:HIGH[:log] or NAME=cat:A,B")
        if method not in parts:
            raise UserError(f"--space {item!r}: method {method!r} is not part of {cell.method!r}")
        space[qualify(method, param)] = parse_dimension(method, param, text)
    for name, dim in space.items():
        fields = method_class(dim.method, spec.methods[dim.method]).Params.model_fields
        if dim.param not in fields:
            raise UserError(f"search space names {name!r}, but method {dim.method} has no such hyperparameter "
                            f"(it has: {', '.join(fields) or 'none'})")
    if not space:
        raise UserError(f"method {cell.method!r} has no search space; give one with --space NAME=...")
    return space


def open_storage(url: str):
    """An Optuna storage from a URL: SQLAlchemy URLs (sqlite, postgresql, ...) or journal:PATH."""
    try:
        if url.startswith("journal:"):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs = {"pool_pre_ping": True}
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            # several workers on one machine share the file: wait for its lock instead of failing after 5 s
            engine_kwargs["connect_args"] = {"timeout": 60}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as e:  # bad scheme, unreachable server, missing driver
        raise UserError(f"Optuna storage {url!r} is not usable: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler whose random draws for trial n come from a generator seeded by (seed, n). Trial
    numbers are handed out by the storage, once each: a resumed study or a second worker on it draws
    new points (one sampler seeded once per process would repeat the first worker's), and a fresh
    study in one process draws the same points for the same seed. The model the sampler fits (TPE's)
    is rebuilt from the study's trials each time, so nothing but the generator is lost between trials."""

    def __init__(self, make, seed: int):
        self.make, self.seed = make, seed
        self.inner = make(seed)

    def before_trial(self, study, trial) -> None:
        self.inner = self.make(int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0]))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)


def make_sampler(name: str, seed: int) -> TrialSeeded:
    if name == "tpe":
        return TrialSeeded(lambda s: optuna.samplers.TPESampler(seed=s), seed)
    if name in ("grid", "random"):  # grid points come from the queue, not the sampler
        return TrialSeeded(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    raise UserError(f"unknown sampler {name!r}; use tpe or grid")


def make_pruner(name: str):
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
               "hyperband": lambda: optuna.pruners.HyperbandPruner(),
               "none": lambda: optuna.pruners.NopPruner()}
    if name not in pruners:
        raise UserError(f"unknown pruner {name!r}; use median, hyperband or none")
    return pruners[name]()


def search_space(spec: Spec, cell: Cell, opts: SweepOptions) -> tuple[dict[str, Dimension], list | None]:
    """The study's dimensions, and its points when it walks a named grid."""
    if opts.grid is None:
        return resolve_space(spec, cell, opts.space), None
    grid = spec.grids.get(opts.grid)
    if grid is None:
        raise UserError(f"unknown grid {opts.grid!r}; known: {', '.join(spec.grids) or 'none'}")
    if grid.method not in method_parts(cell.method):
        raise UserError(f"grid {opts.grid} is for method {grid.method}, not part of {cell.method!r}")
    space = {p: Dimension(grid.method, p, "cat", choices=tuple(v)) for p, v in grid.grid.items()}
    return space, [dict(zip(grid.grid, values)) for values in itertools.product(*grid.grid.values())]


def describe_objective(identity: dict, space: dict[str, Dimension], grid: str | None, grid_points: list | None) -> dict:
    """What a trial's value measures: the trial run's identity before the searched values are set
    (cell, recipe with its epochs, data, models, teacher, the options that change results, the other
    hyperparameters, the trials' seed), the search space and the grid. The sampler, its seed and the
    pruner only choose which trials run, and are left out. Written as the storage gives it back
    (JSON: lists, not tuples), so that a stored description compares equal."""
    described = {"trial": identity, "space": {name: dataclasses.asdict(dim) for name, dim in space.items()},
                 "grid": {"name": grid, "points": grid_points}}
    return json.loads(json.dumps(described, sort_keys=True, default=str))


def default_study_name(cell: Cell, objective: dict) -> str:
    """The cell and a short hash of the objective: another budget or space makes another study."""
    return f"sweep-{cell.id.replace('/', '-')}-{config_key(objective)[:8]}"


def check_objective(storage, study: str, objective: dict) -> None:
    """Refuse to join a study whose trials measured another objective (say at another --epochs): its
    best trial would not compare with ours. A study not there yet is fine: it records ours once made."""
    try:
        study_id = storage.get_study_id_from_name(study)
    except KeyError:
        return
    attrs = storage.get_study_user_attrs(study_id)
    stored = attrs.get("objective")
    if stored is None:
        if "mlflow_parent_run_id" in attrs or storage.get_n_trials(study_id):
            raise UserError(f"study {study!r} records no objective (made by an older harness), so its trials "
                            "cannot be checked against these: give another --study")
        return  # another worker is creating it right now; it is checked again once made
    if stored != objective:
        ours, theirs = flatten(objective), flatten(stored)
        differ = [f"{key.removeprefix('trial.')} {theirs.get(key, 'unset')} in the study, {ours.get(key, 'unset')} here"
                  for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)]
        shown = "; ".join(differ[:5]) + (f"; and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise UserError(f"study {study!r} was made for another objective ({shown}): give another --study, or "
                        "leave --study out (the default name includes a hash of the objective)")
