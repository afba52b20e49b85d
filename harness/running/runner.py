"""Running a cell: plan it (harness/running/plan.py), get its teachers (cached, or trained first), train
the student; every training goes through one life cycle (harness/running/lifecycle.py) and is tracked.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.data.data import Data
from harness.data.fingerprint import data_fingerprint
from harness.data.sources import load_data
from harness.errors import UserError
from harness.models import build_model
from harness.running.lifecycle import Job, Outcome, execute
from harness.running.narrate import say
from harness.running.paths import data_root
from harness.running.plan import (RunPlan, config_key, configuration_key, deterministic, device_identity, flatten, full_dump,
                          identity_dump, make_plan, resolve_device, resolved_amp, run_name, shortened, world_size)
from harness.running.process import exclusive
from harness.spec.cells import Cell, require_known
from harness.spec.options import RunOptions
from harness.spec.schema import PairSpec, RecipeSpec
from harness.spec.spec import Spec
from harness.tracking.provenance import environment_params
from harness.tracking.tracking import Tracker
from harness.training import distributed
from harness.training.device import configure_determinism, seed_everything
from harness.training.engine import TrainConfig, Trainer
from methods import Objective


class TeacherIdentity(NamedTuple):
    dataset: str  # the dataset it trains on (a dataset's `teacher_dataset`, or itself)
    recipe: RecipeSpec
    device: torch.device
    opts: RunOptions  # amp resolved for the device
    config: dict  # what its run logs
    key: str  # its run key
    path: Path  # its cached weights


def determinism_tags(config: dict, device: torch.device) -> dict:
    """On CUDA some kernels have no deterministic version: there we only warn, and say so."""
    if not config["deterministic"]:
        return {"deterministic": "off"}
    return {"deterministic": "warn_only" if device.type == "cuda" else "strict"}


def _frozen(teacher: torch.nn.Module) -> torch.nn.Module:
    """A trained teacher as students see it: eval mode, no gradients (none left from its own training)."""
    teacher.zero_grad(set_to_none=True)
    return teacher.requires_grad_(False).eval()


class Runner:
    def __init__(self, spec: Spec, home: Path, tracking_uri: str,
                 context: distributed.Context = distributed.SINGLE):
        self.spec, self.home, self.tracking_uri, self.context = spec, Path(home), tracking_uri, context
        self._tracker: Tracker | None = None
        self._data: dict[tuple, Data] = {}
        self._fingerprints: dict[tuple, dict] = {}

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

    # ---- teachers ---------------------------------------------------------------------------
    def teacher_identity(self, dataset: str, model_name: str, opts: RunOptions) -> TeacherIdentity:
        """What names a teacher, and its file, known without data."""
        spec = self.spec
        require_known(model_name, spec.models, "model")
        dataset = spec.datasets[dataset].teacher_dataset or dataset
        recipe_name, recipe = spec.recipe_for(dataset, model_name, suite=opts.suite, teacher=True)
        recipe = shortened(recipe, opts.teacher_epochs, opts.smoke)
        device = resolve_device(opts.device, self.context)
        opts = resolved_amp(opts, device)

        def describe(dump):
            return {"role": "teacher", "dataset": dataset, "dataset_spec": dump(spec.datasets[dataset]),
                    "model": model_name, "model_spec": dump(spec.models[model_name]), "recipe_name": recipe_name,
                    "recipe": dump(recipe), "seed": opts.teacher_seed, "smoke": opts.smoke, "amp": opts.amp,
                    "deterministic": deterministic(opts, device)} | ({"tf32": True} if opts.tf32 else {}) \
                | device_identity(device) | world_size(self.context)

        config, key = describe(full_dump), config_key(describe(identity_dump))
        return TeacherIdentity(dataset, recipe, device, opts, config, key,
                               self.home / "teachers" / f"{dataset}-{model_name}-{key}.safetensors")

    def teacher(self, dataset: str, model_name: str, opts: RunOptions) -> torch.nn.Module:
        """The cached teacher for (dataset, model, recipe, seed), trained first if needed."""
        dataset, recipe, device, opts, config, key, path = self.teacher_identity(dataset, model_name, opts)
        data = self.data(dataset, opts)
        seed_everything(opts.teacher_seed)
        model = build_model(self.spec.models[model_name], self.spec.datasets[dataset]).to(device)
        if path.exists():
            with safe_open(path, "pt") as f:  # a teacher we trained records its data; an imported one does not
                self.check_same_data(f"teacher {dataset}/{model_name} seed {opts.teacher_seed}",
                                     (f.metadata() or {}).get("run_id", ""),
                                     (f.metadata() or {}).get("data_fingerprint"), dataset, opts)
            model.load_state_dict(load_file(path, device=str(device)))
            return _frozen(model)

        def save(trainer: Trainer, run_id: str) -> None:
            if not self.context.is_main:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                      metadata={"run_id": run_id, "config": json.dumps(config, default=str)}
                      | {"data_fingerprint": v for v in self.data_fingerprint(dataset, opts).values()})
            tmp.replace(path)
            self.tracker.log_model(run_id, model, data.probe_images(2).to(device))
            self.tracker.set_tags(run_id, {"teacher_file": str(path)})

        # a teacher's key names amp (and tf32) only: it trains without the other speed options
        engine_opts = RunOptions(amp=opts.amp, progress=opts.progress)
        configure_determinism(deterministic(opts, device), device, opts.tf32)
        job = Job(
            run_key=key, run_name=f"teacher {dataset}/{model_name} seed {opts.teacher_seed}",
            tags={"role": "teacher", "dataset": dataset, "teacher": model_name, "model": model_name,
                  "seed": opts.teacher_seed, "smoke": opts.smoke} | determinism_tags(config, device),
            params=lambda: flatten(config) | data.params() | self.data_fingerprint(dataset, opts)
            | environment_params(device) | self.context.params(),
            config=config,
            make_trainer=lambda ckpts, log, stop: Trainer(
                model, Objective({}),
                data.batches(device, shard=(self.context.rank, self.context.world_size)),
                TrainConfig(recipe, opts.teacher_seed, [], [], engine_opts, label=f"teacher {model_name}"),
                device, log=log, checkpoints=ckpts, stop=stop, context=self.context),
            on_success=save)
        # the MLflow run may be FINISHED while the file is gone (another home dir): retrain then; an
        # interrupted teacher (no file yet) resumes from its checkpoint like any run
        execute(self, job, opts.force, reuse_finished=path.exists())
        return _frozen(model)

    def teachers(self, dataset: str, pair: PairSpec, opts: RunOptions) -> list[torch.nn.Module]:
        """Every teacher of the pair (one, or a multi-teacher pair's several), each cached on its own."""
        return [self.teacher(dataset, model_name, replace(opts, teacher_seed=seed))
                for model_name, seed in pair.teacher_members(opts.teacher_seed)]

    def teacher_keys(self, dataset: str, pair: PairSpec, opts: RunOptions) -> dict:
        """The pair's teachers' keys and files, known without data or training."""
        found = [self.teacher_identity(dataset, name, replace(opts, teacher_seed=seed))
                 for name, seed in pair.teacher_members(opts.teacher_seed)]
        return {"teacher.key": "+".join(t.key for t in found), "teacher.path": ", ".join(str(t.path) for t in found)}

    # ---- students ---------------------------------------------------------------------------
    def plan(self, cell: Cell, opts: RunOptions) -> RunPlan:
        return make_plan(self, cell, opts)

    def finished(self, plan: RunPlan) -> Outcome | None:
        """The plan's FINISHED run, if there is one (and --force was not given), when it trained on the
        data under this run's data root (a run that recorded no fingerprint predates them: taken as is)."""
        if plan.opts.force:
            return None
        runs = self.tracker.find(plan.run_key)
        if runs and runs[0].info.status == "FINISHED":
            self.check_same_data(f"{plan.cell.id} seed {plan.opts.seed}", runs[0].info.run_id,
                                 runs[0].data.params.get("data.fingerprint"), plan.cell.dataset, plan.opts)
            return Outcome(runs[0].info.run_id, "SKIPPED", runs[0].data.metrics)
        return None

    def data_fingerprint(self, dataset: str, opts: RunOptions) -> dict:
        """{'data.fingerprint': sha256 prefix} of the dataset's files under the run's data root ({} for
        embedded data; harness/data/fingerprint.py), listed once per Runner (ImageNet's take seconds)."""
        key = (dataset, opts.data_root)
        if key not in self._fingerprints:
            found = data_fingerprint(self.spec.datasets[dataset], data_root(opts.data_root))
            self._fingerprints[key] = {} if found is None else {"data.fingerprint": found}
        return self._fingerprints[key]

    def check_same_data(self, what: str, run: str, recorded: str | None, dataset: str, opts: RunOptions) -> None:
        """A finished run (or cached teacher) answers only for the data it trained on."""
        current = self.data_fingerprint(dataset, opts).get("data.fingerprint")
        if recorded is not None and recorded != current:
            raise UserError(f"{what}: its finished run {run} trained on {dataset} files with fingerprint {recorded}; "
                            f"under {data_root(opts.data_root)} they are {current} (another copy, or none): "
                            "pass the data root it trained on, or --force to train it again on this one")

    def run_cell(self, cell: Cell, opts: RunOptions) -> Outcome:
        return self.run_plan(self.plan(cell, opts))

    def run_plan(self, plan: RunPlan) -> Outcome:
        cell, opts, pair, device = plan.cell, plan.opts, plan.pair, plan.device
        if not self.context.enabled:  # a finished run needs neither its data nor its teachers
            done = self.finished(plan)
            if done is not None:
                return done
        teachers = plan.teachers()  # trained first if needed, each under its own run, before our claim
        if "schedule_shortened" in plan.config:  # logged as params too; said here because it changes the method
            say(f"harness: {cell.id}: the recipe shortened to {plan.recipe.epochs} epochs shortens the method's "
                "schedule: " + ", ".join(f"{k} {v}" for k, v in plan.config["schedule_shortened"].items()))
        # departures from the cell's defaults a user asked for: the report never averages them with the rest
        departures = {f"{m}.{k}": v for m, values in opts.overrides.items() for k, v in values.items()}
        departures |= {k: v for k, v in (("epochs", opts.epochs), ("teacher_epochs", opts.teacher_epochs))
                       if v is not None}
        configure_determinism(deterministic(opts, device), device, opts.tf32)
        job = Job(
            run_key=plan.run_key, run_name=run_name(cell, opts.seed, departures),
            tags={"role": "student", "cell": cell.id, "dataset": cell.dataset, "teacher": pair.teacher,
                  "student": pair.student, "method": cell.method, "suite": opts.suite or "", "seed": opts.seed,
                  "smoke": opts.smoke, "config_key": configuration_key(plan.identity),
                  "overrides": " ".join(f"{k}={v}" for k, v in sorted(departures.items()))}
            | determinism_tags(plan.config, device) | opts.tags,
            params=lambda: flatten(plan.config) | plan.data.params() | self.data_fingerprint(cell.dataset, opts)
            | plan.teacher_info
            | environment_params(device) | self.context.params(),
            config=plan.config,
            make_trainer=lambda ckpts, log, stop: plan.trainer(teachers, log=log, checkpoints=ckpts, stop=stop),
            on_success=lambda trainer, run_id: self.tracker.log_model(
                run_id, plan.student, plan.data.probe_images(2).to(device), opts.register))
        return execute(self, job, opts.force)
