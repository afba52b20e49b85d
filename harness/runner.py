"""Running a cell: resolve it, get its teacher (cached), train the student, track both.

Teacher and student trainings share one wrapper, `Runner._execute`: a lock per run key so
that two processes never train the same thing; a FINISHED run is skipped (unless forced);
an interrupted one is resumed in the same MLflow run from its last checkpoint; the run ends
FINISHED, FAILED (with the reason as tags) or KILLED (stopped by a signal, resumable).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from safetensors.torch import load_file, save_file

from harness import distributed
from harness.checkpoint import CheckpointStore
from harness.data import Batches, Data, data_root, load_data
from harness.engine import (Interrupted, NonFiniteLoss, TrainConfig, Trainer, configure_determinism,
                            seed_everything)
from harness.errors import UserError
from harness.models import build_model
from harness.options import RunOptions
from harness.probe import make_probe, probe_batch
from harness.process import exclusive, stop_on_signals
from harness.provenance import environment_params
from harness.spec import Cell, PairSpec, RecipeSpec, Spec, method_parts, require_known
from harness.tracking import Tracker
from harness.workshare import WORKER, Claimed, claim_tags, first_claim, heartbeat, is_live
from methods import Objective, build_objective


def _frozen(teacher: torch.nn.Module) -> torch.nn.Module:
    """A trained teacher as students see it: eval mode, no gradients (none left from its own training)."""
    teacher.zero_grad(set_to_none=True)
    return teacher.requires_grad_(False).eval()


TAKEOVER_PAUSE = 1.0  # seconds between writing a takeover's claim and reading it back


class TrainingFailed(Exception):
    """The training itself failed (e.g. the loss diverged); its MLflow run is FAILED."""


@dataclass
class Job:
    """One training to run under the lock/skip/resume/status rules."""

    run_key: str
    run_name: str
    tags: dict
    params: Callable[[], dict]  # asked for only when a new MLflow run is created
    config: dict
    make_trainer: Callable[[CheckpointStore, Callable, threading.Event], Trainer]
    on_success: Callable[[Trainer, str], None] = lambda trainer, run_id: None


@dataclass
class Outcome:
    run_id: str
    status: str  # "FINISHED" (trained now), "SKIPPED" (already finished)
    summary: dict


class TeacherIdentity(NamedTuple):
    dataset: str  # the dataset it trains on (a dataset's `teacher_dataset`, or itself)
    recipe: RecipeSpec
    device: torch.device
    config: dict  # what its run logs
    key: str  # its run key
    path: Path  # its cached weights


@dataclass
class RunPlan:
    """One student run, resolved and validated once (`Runner.plan`): `run`, sweep trials and
    `bench` all start from it. Its data loads on first use, its teachers on `teachers()`."""

    runner: "Runner"
    cell: Cell
    opts: RunOptions
    recipe_name: str
    recipe: RecipeSpec
    device: torch.device
    student: torch.nn.Module
    objective: Objective
    config: dict  # every resolved value: what the run logs
    identity: dict  # what names the run: its key
    teacher_info: dict  # teacher.key, teacher.path ({} when no part reads a teacher)

    @property
    def pair(self) -> PairSpec:
        return self.runner.spec.pairs[self.cell.pair]

    @property
    def run_key(self) -> str:
        return config_key(self.identity)

    @cached_property
    def data(self) -> Data:
        data = self.runner.data(self.cell.dataset, self.opts)
        return data.merged_train() if self.opts.full_train else data

    def teachers(self) -> list[torch.nn.Module] | None:
        """The pair's trained teachers (cached, or trained now), or None when no part reads one."""
        if not self.objective.needs_teacher:
            return None
        return self.runner.teachers(self.cell.dataset, self.pair, self.opts)[0]

    def trainer(self, teachers: list | None, eval_splits: tuple[str, ...] | None = None, label: str | None = None,
                **engine) -> Trainer:
        """The engine for this plan, with the student and objective on the device. `eval_splits`:
        what each epoch evaluates (default: val and test; test only for a train+val run); `label`:
        the progress line's name; `engine`: Trainer keywords (log, checkpoints, stop, ...)."""
        opts, stages = self.opts, self.pair.stages
        if eval_splits is None:
            eval_splits = ("test",) if opts.full_train else ("val", "test")
        splits = ("train", "val", "test") if "test" in eval_splits else ("train", *eval_splits)
        self.student.to(self.device)
        self.objective.to(self.device)
        batches = self.data.batches(self.device, splits, shard=(self.runner.context.rank,
                                                                self.runner.context.world_size))
        config = TrainConfig(self.recipe, opts.seed, stages.teacher, stages.student, opts.amp, label or self.cell.id,
                             opts.progress, eval_splits, opts.channels_last, opts.compile, opts.teacher_cache)
        return Trainer(self.student, self.objective, batches, config, self.device, teacher=teachers,
                       context=self.runner.context, **engine)


def resolve_device(name: str, context: distributed.Context = distributed.SINGLE) -> torch.device:
    if name == "auto":  # under torchrun, each rank takes the GPU of its local rank
        return torch.device(f"cuda:{context.local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available here")
    return device


def deterministic(opts: RunOptions, device: torch.device) -> bool:
    return opts.deterministic if opts.deterministic is not None else device.type == "cpu"


def determinism_tags(config: dict, device: torch.device) -> dict:
    """On CUDA some kernels have no deterministic version: there we only warn, and say so."""
    if not config["deterministic"]:
        return {"deterministic": "off"}
    return {"deterministic": "warn_only" if device.type == "cuda" else "strict"}


def smoke_recipe(recipe: RecipeSpec) -> RecipeSpec:
    return recipe.model_copy(update={"epochs": 1, "batch_size": min(recipe.batch_size, 32), "eval_batch_size": 128})


def full_dump(model) -> dict:
    """Every resolved value: what a run logs."""
    return model.model_dump()


def identity_dump(model) -> dict:
    """What identifies a run: values that differ from the schema's defaults, so that a field added
    to the schema later (with a default) leaves the keys of finished runs unchanged."""
    return model.model_dump(exclude_defaults=True)


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_name(cell: Cell, seed: int, departures: dict) -> str:
    """Method first (the MLflow UI cuts long names at the end), then any override, setting and seed."""
    changed = " [" + " ".join(f"{k}={v}" for k, v in sorted(departures.items())) + "]" if departures else ""
    return f"{cell.method}{changed} · {cell.dataset}/{cell.pair} · seed {seed}"


def configuration_key(identity: dict) -> str:
    """The run key without the seed: runs that share it are seeds of one configuration."""
    return config_key({k: v for k, v in identity.items() if k != "seed"})


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Runner:
    def __init__(self, spec: Spec, home: Path, tracking_uri: str,
                 context: distributed.Context = distributed.SINGLE):
        self.spec, self.home, self.tracking_uri, self.context = spec, Path(home), tracking_uri, context
        self._tracker: Tracker | None = None
        self._data: dict[tuple, Data] = {}

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            with exclusive(self.home / "tracking.lock", wait=True):  # first use creates the SQLite tables: once
                self._tracker = Tracker(self.tracking_uri)
        return self._tracker

    def data(self, dataset: str, opts: RunOptions) -> Data:
        key = (dataset, opts.smoke)
        if key not in self._data:
            self._data[key] = load_data(dataset, self.spec.datasets[dataset], data_root(opts.data_root),
                                        opts.download, opts.smoke)
        return self._data[key]

    def _batches(self, data: Data, device: torch.device, splits=("train", "val", "test")) -> Batches:
        return data.batches(device, splits, shard=(self.context.rank, self.context.world_size))

    # ---- the shared wrapper -----------------------------------------------------------------
    def _execute(self, job: Job, force: bool) -> Outcome:
        if not self.context.is_main:
            return self._execute_follower(job)
        run_dir = self.home / "runs" / job.run_key
        # who trains this run: a local lock (processes of this machine), then the store (every worker
        # that shares it; harness/workshare.py). Another worker's live claim raises Claimed.
        with exclusive(run_dir / "lock") as held:
            if not held:
                raise Claimed(job.run_key, "another process of this machine")
            runs = self.tracker.find(job.run_key)
            latest = runs[0] if runs else None
            if latest is not None and latest.info.status == "FINISHED" and not force:
                distributed.broadcast(self.context, ("skip", latest.info.run_id, latest.data.metrics))
                return Outcome(latest.info.run_id, "SKIPPED", latest.data.metrics)
            live = next((r for r in runs if is_live(r)), None)
            if live is not None:
                raise Claimed(job.run_key, live.data.tags["worker"])
            checkpoints = CheckpointStore(run_dir / "checkpoints")
            if latest is not None and latest.info.status in ("RUNNING", "KILLED") and not force:
                run_id = latest.info.run_id  # its worker died or was stopped: take it over, resume
                self.tracker.reopen(run_id, claim_tags())
                time.sleep(TAKEOVER_PAUSE)
                if self.tracker.tag(run_id, "worker") != WORKER:  # another worker took it over after us
                    raise Claimed(job.run_key, self.tracker.tag(run_id, "worker"))
            else:
                run_id = self.tracker.create(job.run_name, job.tags | {"run_key": job.run_key} | claim_tags())
                winner = first_claim(self.tracker.find(job.run_key))
                if winner is not None and winner.info.run_id != run_id:  # two workers raced; the first won
                    self.tracker.withdraw(run_id)
                    raise Claimed(job.run_key, winner.data.tags["worker"])
                checkpoints.clear()
                self.tracker.log_params(run_id, job.params())
                self.tracker.log_dict(run_id, job.config, "config.json")
            distributed.broadcast(self.context, ("train", run_id))  # checkpoints are settled: ranks may read them
            stop = threading.Event()
            log = self.tracker.epoch_logger(run_id)
            trainer = job.make_trainer(checkpoints, log, stop)
            trainer.meta = {"mlflow_run_id": run_id, "run_key": job.run_key}
            try:
                with stop_on_signals(stop), heartbeat(self.tracker, run_id):
                    summary = trainer.run()
                for step, metrics in enumerate(trainer.history):  # epochs a crash kept from the store
                    log(metrics, step)
                job.on_success(trainer, run_id)
            except NonFiniteLoss as e:
                self.tracker.set_tags(run_id, {"failure": "non_finite_loss", "failure_reason": str(e),
                                               "failure_term": e.term, "failure_epoch": e.epoch,
                                               "failure_step": e.step})
                self.tracker.finish(run_id, "FAILED")
                raise TrainingFailed(f"{job.run_name}: {e}; MLflow run {run_id} marked FAILED") from None
            except Interrupted as e:
                self.tracker.set_tags(run_id, {"interrupted": str(e)})
                self.tracker.finish(run_id, "KILLED")
                raise
            except torch.OutOfMemoryError:
                self.tracker.set_tags(run_id, {"failure": "out_of_memory"})
                self.tracker.finish(run_id, "FAILED")
                raise UserError("out of memory: lower the recipe's batch_size or try --amp bf16") from None
            except BaseException as e:
                self.tracker.set_tags(run_id, {"failure": type(e).__name__, "failure_reason": str(e)[:5000]})
                self.tracker.finish(run_id, "FAILED")
                raise
            self.tracker.log_metrics(run_id, summary, step=len(trainer.history))
            self.tracker.finish(run_id, "FINISHED")
            return Outcome(run_id, "FINISHED", summary)

    def _execute_follower(self, job: Job) -> Outcome:
        """A rank other than 0: train in step with rank 0, which decides, tracks and checkpoints."""
        decision, run_id, *metrics = distributed.broadcast(self.context)
        if decision == "skip":
            return Outcome(run_id, "SKIPPED", metrics[0])
        stop = threading.Event()
        trainer = job.make_trainer(CheckpointStore(self.home / "runs" / job.run_key / "checkpoints"),
                                   lambda metrics, step: None, stop)
        try:
            with stop_on_signals(stop):
                summary = trainer.run()
        except NonFiniteLoss as e:
            raise TrainingFailed(f"{job.run_name}: {e} (rank {self.context.rank})") from None
        return Outcome(run_id, "FINISHED", summary)

    # ---- teachers ---------------------------------------------------------------------------
    def teacher_identity(self, dataset: str, model_name: str, opts: RunOptions) -> TeacherIdentity:
        """What names a teacher, and its file, known without data."""
        spec = self.spec
        require_known(model_name, spec.models, "model")
        dataset = spec.datasets[dataset].teacher_dataset or dataset
        recipe_name, recipe = spec.recipe_for(dataset, model_name, suite=opts.suite, teacher=True)
        if opts.teacher_epochs is not None:
            recipe = recipe.model_copy(update={"epochs": opts.teacher_epochs})
        if opts.smoke:
            recipe = smoke_recipe(recipe)
        device = resolve_device(opts.device, self.context)

        def describe(dump):
            return {"role": "teacher", "dataset": dataset, "dataset_spec": dump(spec.datasets[dataset]),
                    "model": model_name, "model_spec": dump(spec.models[model_name]), "recipe_name": recipe_name,
                    "recipe": dump(recipe), "seed": opts.teacher_seed, "smoke": opts.smoke, "amp": opts.amp,
                    "deterministic": deterministic(opts, device)} | self._world_size()

        config, key = describe(full_dump), config_key(describe(identity_dump))
        return TeacherIdentity(dataset, recipe, device, config, key,
                               self.home / "teachers" / f"{dataset}-{model_name}-{key}.safetensors")

    def teacher(self, dataset: str, model_name: str, opts: RunOptions) -> tuple[torch.nn.Module, dict]:
        """The cached teacher for (dataset, model, recipe, seed), trained first if needed."""
        spec = self.spec
        dataset, recipe, device, config, key, path = self.teacher_identity(dataset, model_name, opts)
        data = self.data(dataset, opts)
        seed_everything(opts.teacher_seed)
        model = build_model(spec.models[model_name], spec.datasets[dataset]).to(device)
        info = {"teacher.key": key, "teacher.path": str(path)}
        if path.exists():
            model.load_state_dict(load_file(path, device=str(device)))
            return _frozen(model), info

        def save(trainer: Trainer, run_id: str) -> None:
            if not self.context.is_main:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                      metadata={"run_id": run_id, "config": json.dumps(config, default=str)})
            tmp.replace(path)
            self.tracker.log_model(run_id, model, data.probe_images(2).to(device))
            self.tracker.set_tags(run_id, {"teacher_file": str(path)})

        self._configure(device, opts)
        job = Job(
            run_key=key, run_name=f"teacher {dataset}/{model_name} seed {opts.teacher_seed}",
            tags={"role": "teacher", "dataset": dataset, "teacher": model_name, "model": model_name,
                  "seed": opts.teacher_seed, "smoke": opts.smoke} | determinism_tags(config, device),
            params=lambda: flatten(config) | data.params() | environment_params(device) | self.context.params(),
            config=config,
            make_trainer=lambda ckpts, log, stop: Trainer(
                model, Objective({}), self._batches(data, device),
                TrainConfig(recipe, opts.teacher_seed, [], [], opts.amp, f"teacher {model_name}", opts.progress),
                device, log=log, checkpoints=ckpts, stop=stop, context=self.context),
            on_success=save)
        # the MLflow run may be FINISHED while the file is gone (another home dir): retrain then
        self._execute(job, force=True if not path.exists() else opts.force)
        return _frozen(model), info

    def teachers(self, dataset: str, pair: PairSpec, opts: RunOptions) -> tuple[list[torch.nn.Module], dict]:
        """Every teacher of the pair (one, or a multi-teacher pair's several), each cached on its own."""
        models = [self.teacher(dataset, model_name, replace(opts, teacher_seed=seed))[0]
                  for model_name, seed in pair.teacher_members(opts.teacher_seed)]
        return models, self.teacher_keys(dataset, pair, opts)

    def teacher_keys(self, dataset: str, pair: PairSpec, opts: RunOptions) -> dict:
        """What `teachers` reports of the pair's teachers, known without data or training."""
        found = [self.teacher_identity(dataset, name, replace(opts, teacher_seed=seed))
                 for name, seed in pair.teacher_members(opts.teacher_seed)]
        return {"teacher.key": "+".join(t.key for t in found), "teacher.path": ", ".join(str(t.path) for t in found)}

    # ---- students ---------------------------------------------------------------------------
    def plan(self, cell: Cell, opts: RunOptions) -> RunPlan:
        """Resolve and validate everything a student run needs: no data is read, nothing trains
        and no run is created (the methods' checks see a random batch of the dataset's shape)."""
        spec = self.spec
        pair = spec.pairs[cell.pair]
        recipe_name, recipe = spec.recipe_for(cell.dataset, pair.student, suite=opts.suite)
        if opts.epochs is not None:
            recipe = recipe.model_copy(update={"epochs": opts.epochs})
        if opts.smoke:
            recipe = smoke_recipe(recipe)
        device = resolve_device(opts.device, self.context)
        if recipe.batch_size % self.context.world_size:
            raise UserError(f"batch size {recipe.batch_size} (recipe {recipe_name}) does not divide into "
                            f"{self.context.world_size} processes: the recipe's batch is the global batch")
        dataset_spec = spec.datasets[cell.dataset]
        if opts.teacher_cache and dataset_spec.augment != "none":
            raise UserError(f"--teacher-cache needs a dataset trained without augmentation; {cell.dataset} "
                            f"uses augment={dataset_spec.augment}, so each epoch shows the teacher new images")
        teacher_archs = [build_model(spec.models[name], dataset_spec)
                         for name, _ in pair.teacher_members(opts.teacher_seed)]
        seed_everything(opts.seed)
        student = build_model(spec.models[pair.student], dataset_spec)
        probe = make_probe(teacher_archs, student, probe_batch(dataset_spec), pair, cell.pair, recipe.batch_size)
        suite_overrides = spec.suites[opts.suite].overrides if opts.suite else {}
        overrides = {m: suite_overrides.get(m, {}) | opts.overrides.get(m, {})
                     for m in set(opts.overrides) | (set(suite_overrides) & set(method_parts(cell.method)))}
        objective = build_objective(spec, cell.method, overrides, probe)
        objective.check_teachers(len(teacher_archs))
        teacher_info = self.teacher_keys(cell.dataset, pair, opts) if objective.needs_teacher else {}

        def describe(dump):
            config = {
                "role": "student", "cell": cell.id, "dataset": cell.dataset, "pair": cell.pair,
                "teacher": pair.teacher, "student": pair.student, "method": cell.method, "seed": opts.seed,
                "smoke": opts.smoke, "amp": opts.amp,
                "method_params": {name: dump(part.params) for name, part in objective.parts.items()},
                "recipe_name": recipe_name, "recipe": dump(recipe), "dataset_spec": dump(dataset_spec),
                "models": {"teacher": dump(spec.models[pair.teacher]), "student": dump(spec.models[pair.student])}
                | ({"more_teachers": [dump(m) for m in pair.more_teachers]} if pair.more_teachers else {}),
                "stages": dump(pair.stages), "hint": pair.hint, "teacher_seed": opts.teacher_seed,
                "deterministic": deterministic(opts, device), "phases": dict(objective.phases(recipe.epochs)),
                "train_on": "train+val" if opts.full_train else "train",
            }
            # options enter the identity only when used, so that adding an option orphans no finished run
            return config | {k: True for k in ("channels_last", "compile", "teacher_cache") if getattr(opts, k)} \
                | self._world_size() | {"teacher_key": teacher_info.get("teacher.key", "")}

        return RunPlan(self, cell, opts, recipe_name, recipe, device, student, objective, describe(full_dump),
                       describe(identity_dump), teacher_info)

    def finished(self, plan: RunPlan) -> Outcome | None:
        """The plan's FINISHED run, if there is one (and --force was not given)."""
        if plan.opts.force:
            return None
        runs = self.tracker.find(plan.run_key)
        if runs and runs[0].info.status == "FINISHED":
            return Outcome(runs[0].info.run_id, "SKIPPED", runs[0].data.metrics)
        return None

    def run_cell(self, cell: Cell, opts: RunOptions) -> Outcome:
        return self.run_plan(self.plan(cell, opts))

    def run_plan(self, plan: RunPlan) -> Outcome:
        cell, opts, pair, device = plan.cell, plan.opts, plan.pair, plan.device
        if not self.context.enabled:  # a finished run needs neither its data nor its teachers
            done = self.finished(plan)
            if done is not None:
                return done
        teachers = plan.teachers()  # trained first if needed, each under its own run, before our claim
        # departures from the cell's defaults a user asked for: the report never averages them with the rest
        departures = {f"{m}.{k}": v for m, values in opts.overrides.items() for k, v in values.items()}
        departures |= {k: v for k, v in (("epochs", opts.epochs), ("teacher_epochs", opts.teacher_epochs))
                       if v is not None}
        self._configure(device, opts)
        job = Job(
            run_key=plan.run_key, run_name=run_name(cell, opts.seed, departures),
            tags={"role": "student", "cell": cell.id, "dataset": cell.dataset, "teacher": pair.teacher,
                  "student": pair.student, "method": cell.method, "suite": opts.suite or "", "seed": opts.seed,
                  "smoke": opts.smoke, "config_key": configuration_key(plan.identity),
                  "overrides": " ".join(f"{k}={v}" for k, v in sorted(departures.items()))}
            | determinism_tags(plan.config, device) | opts.tags,
            params=lambda: flatten(plan.config) | plan.data.params() | plan.teacher_info
            | environment_params(device) | self.context.params(),
            config=plan.config,
            make_trainer=lambda ckpts, log, stop: plan.trainer(teachers, log=log, checkpoints=ckpts, stop=stop),
            on_success=lambda trainer, run_id: self.tracker.log_model(
                run_id, plan.student, plan.data.probe_images(2).to(device), opts.register))
        return self._execute(job, opts.force)

    def _world_size(self) -> dict:
        """In the run's identity only when distributed, so that single-process runs keep their keys."""
        return {"world_size": self.context.world_size} if self.context.enabled else {}

    def _configure(self, device: torch.device, opts: RunOptions) -> None:
        configure_determinism(deterministic(opts, device), device)
