"""Optuna sweeps of a cell's hyperparameters, tuned on the validation split only.

Each trial trains the cell on the training part and reports validation top-1 per epoch (for
the pruner); the test split is never moved to the device inside a trial. The study lives in
an Optuna storage (a local SQLite file by default; any SQLAlchemy URL such as PostgreSQL; or
`journal:PATH`), so the same command started in several processes or machines joins one
study, and re-running it resumes. A study records the objective its trials measure (the trial
run's identity, the search space, the grid): the default study name carries a hash of it, and a
named study made for another objective is refused. Trial n draws its points from a generator
seeded by (--sampler-seed, n), so resumed and parallel workers draw new points. MLflow gets a
parent run per study and a nested child run per trial; when the study ends, the best
configuration can be retrained on train + validation over several seeds and evaluated on test,
tagged with the study.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import warnings
from typing import NamedTuple

import optuna
import torch
from optuna.trial import TrialState

from harness.running.lifecycle import end_failed, end_finished
from harness.running.plan import config_key, flatten
from harness.running.process import exclusive
from harness.running.runner import Runner
from harness.running.workshare import until_free
from harness.spec.cells import Cell
from harness.spec.options import RunOptions
from harness.tracking.provenance import environment_params
from harness.training.monitor import Interrupted
from harness.tuning.options import SweepOptions
from harness.tuning.study import (check_objective, default_study_name, describe_objective, make_pruner, make_sampler,
                           open_storage, search_space)
from methods import Objective


OBJECTIVE = "val/top1 (best epoch)"  # what a trial's value is: its best validation top-1 (%)


class Checked(NamedTuple):
    space: dict
    grid_points: list | None
    objective: Objective  # the method's, as the trials train it
    storage: object
    description: dict  # what every trial measures (harness/tuning/study.py: describe_objective)
    study: str  # --study, or the default name


def check(runner: Runner, cell: Cell, run_opts: RunOptions, opts: SweepOptions) -> Checked:
    """Everything a sweep needs, validated before any teacher trains or any run exists: the search
    space, the cell's data, models and hyperparameters, the storage, and that an existing study of
    that name measured the same objective."""
    space, grid_points = search_space(runner.spec, cell, opts)
    plan = runner.plan(cell, run_opts)
    plan.data  # noqa: B018  (present and readable)
    storage = open_storage(opts.storage)
    description = describe_objective(plan.identity, space, opts.grid, grid_points)
    study = opts.study or default_study_name(cell, description)
    check_objective(storage, study, description)
    return Checked(space, grid_points, plan.objective, storage, description, study)


class Sweep:
    def __init__(self, runner: Runner, cell: Cell, run_opts: RunOptions, opts: SweepOptions):
        self.runner, self.cell, self.run_opts, self.opts = runner, cell, run_opts, opts
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress line says it once
        self.tracker = runner.tracker
        checked = check(runner, cell, run_opts, opts)
        self.space, self.grid_points, self.storage = checked.space, checked.grid_points, checked.storage
        self.description, self.opts = checked.description, dataclasses.replace(opts, study=checked.study)
        pair = runner.spec.pairs[cell.pair]
        # the teacher is trained (or loaded) before any trial, so no trial ever evaluates the test split
        self.teachers = (until_free(runner.teachers, cell.dataset, pair, run_opts)
                         if checked.objective.needs_teacher else None)
        self.teacher_features: list | None = None  # with --teacher-cache: computed by the first trial, shared
        self.study = optuna.create_study(study_name=self.opts.study, storage=self.storage, direction="maximize",
                                         sampler=make_sampler(opts.sampler if self.grid_points is None else "grid",
                                                              opts.seed),
                                         pruner=make_pruner(opts.pruner), load_if_exists=True)
        self.parent_run = self._parent_run()

    # ---- MLflow parent ------------------------------------------------------------------------
    def _parent_run(self) -> str:
        with exclusive(self.runner.home / "sweeps" / f"{self.opts.study}.lock", wait=True):
            run_id = self.study.user_attrs.get("mlflow_parent_run_id")
            if run_id is None:
                self.study.set_user_attr("objective", self.description)  # before the parent: joiners check it
                with warnings.catch_warnings():  # experimental in Optuna 5 (since 3.2)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self.study.set_metric_names([OBJECTIVE])  # optuna-dashboard's name for the value
                run_id = self.tracker.create(f"sweep {self.opts.study}", {
                    "role": "sweep", "cell": self.cell.id, "study": self.opts.study, "storage": self.opts.storage})
                self.tracker.log_params(run_id, {
                    "sampler": "grid" if self.grid_points else self.opts.sampler, "sampler_seed": self.opts.seed,
                    "pruner": self.opts.pruner, "space": "; ".join(f"{k}={v}" for k, v in self.space.items()),
                    "grid": self.opts.grid or "", "optuna": optuna.__version__,
                    "objective": f"{OBJECTIVE}, maximize",
                    "objective_fingerprint": config_key(self.description)} | environment_params(torch.device("cpu")))
                self.study.set_user_attr("mlflow_parent_run_id", run_id)
                if self.grid_points is not None:
                    for point in self.grid_points:
                        self.study.enqueue_trial(point)
            else:  # made by another worker, maybe after our check(): check again, now that it is recorded
                check_objective(self.storage, self.opts.study, self.description)
                self.tracker.reopen(run_id, {})
        return run_id

    # ---- one trial ------------------------------------------------------------------------------
    def objective(self, trial: optuna.Trial) -> float:
        values = {name: dim.suggest(trial, name) for name, dim in self.space.items()}
        overrides: dict[str, dict] = {}
        for name, dim in self.space.items():
            overrides.setdefault(dim.method, {})[dim.param] = values[name]
        opts = dataclasses.replace(self.run_opts, overrides=overrides)
        run_id = self.tracker.create(f"{self.opts.study} trial {trial.number}", {
            "mlflow.parentRunId": self.parent_run, "role": "trial", "cell": self.cell.id,
            "study": self.opts.study, "trial": trial.number})
        trial.set_user_attr("mlflow_run_id", run_id)
        try:
            plan = self.runner.plan(self.cell, opts)
            self.tracker.log_params(run_id, {f"trial.{k}": v for k, v in values.items()} | flatten(plan.config))

            def log(metrics: dict, epoch: int) -> None:
                self.tracker.log_metrics(run_id, metrics, epoch)
                trial.report(metrics["val/top1"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch} (val top-1 {metrics['val/top1']:.2f})")

            trainer = plan.trainer(self.teachers, eval_splits=("val",),
                                   label=f"trial {trial.number}", log=log, stop=threading.Event(),
                                   teacher_cache=self.teacher_features)
            summary = trainer.run()
            self.teacher_features = trainer.teacher_cache  # the same teacher and images for every trial
        except optuna.TrialPruned as e:
            self.tracker.set_tags(run_id, {"state": "pruned", "reason": str(e)})
            self.tracker.finish(run_id, "KILLED")
            raise
        except (Exception, Interrupted) as e:  # a diverged loss or anything else: the study goes on; a stop
            # (SIGTERM) ends the trial's run KILLED and the sweep
            self.tracker.set_tags(run_id, {"state": "stopped" if isinstance(e, Interrupted) else "failed"})
            end_failed(self.tracker, run_id, f"{self.opts.study} trial {trial.number}", e)
        self.tracker.set_tags(run_id, {"state": "complete"})
        end_finished(self.tracker, run_id, summary, epochs=len(trainer.history))
        return summary["val_top1_best"]

    # ---- the study ------------------------------------------------------------------------------
    def run(self) -> optuna.Study:
        if self.grid_points is None:
            self.study.optimize(self.objective, n_trials=self.opts.trials, catch=(Exception,),
                                callbacks=[self._progress])
        else:
            for _ in range(self.opts.trials):
                if not self._run_next_grid_point():
                    break
        self._finish_parent()
        return self.study

    def _run_next_grid_point(self) -> bool:
        """Claim one waiting (enqueued) grid point atomically and run it; False when none is left.
        The claim is the storage's compare-and-set WAITING -> RUNNING, so two workers never run
        the same point (Optuna's GridSampler can repeat points under parallel workers)."""
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if self.study._storage.set_trial_state_values(frozen._trial_id, TrialState.RUNNING):
                trial = optuna.Trial(self.study, frozen._trial_id)
                try:
                    value = self.objective(trial)
                    self.study.tell(trial, value)
                except optuna.TrialPruned:
                    self.study.tell(trial, state=TrialState.PRUNED)
                except Interrupted:  # SIGTERM/SIGINT: the trial is told, the sweep ends (run it again to go on)
                    self.study.tell(trial, state=TrialState.FAIL)
                    raise
                except Exception as e:
                    warnings.warn(f"trial {trial.number} failed: {type(e).__name__}: {e}", stacklevel=2)
                    self.study.tell(trial, state=TrialState.FAIL)
                self._progress(self.study, self.study._storage.get_trial(frozen._trial_id))
                return True
        return False

    def _progress(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = f"{trial.value:.2f}" if trial.value is not None else "-"
        try:
            best = f"{study.best_value:.2f} {study.best_params}"
        except ValueError:
            best = "-"
        print(f"trial {trial.number} {trial.state.name.lower()}: val top-1 {value} {trial.params}; best so far {best}",
              flush=True)

    def _finish_parent(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        frame = self.study.trials_dataframe()
        run_id = self.parent_run
        self.tracker.log_text(run_id, frame.to_csv(index=False), "trials.csv")
        complete = [t for t in self.study.trials if t.state == TrialState.COMPLETE]
        counts = {s.name.lower(): sum(t.state == s for t in self.study.trials)
                  for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        self.tracker.log_metrics(run_id, {f"trials_{k}": v for k, v in counts.items()}, step=0)
        if complete:
            best = self.study.best_trial
            self.tracker.log_metrics(run_id, {"best_val_top1": best.value, "best_trial": best.number}, step=0)
            self.tracker.set_tags(run_id, {f"best.{k}": v for k, v in best.params.items()})
            self._plots()
        self.tracker.finish(run_id, "FINISHED")

    def _plots(self) -> None:
        from optuna.visualization import matplotlib as ovm

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        names = list(self.space)[:2]
        makers = {"optimization_history.png": lambda: ovm.plot_optimization_history(self.study),
                  "slice.png": lambda: ovm.plot_slice(self.study, params=names)}
        if len(names) == 2:
            makers["contour.png"] = lambda: ovm.plot_contour(self.study, params=names)
            makers["param_importances.png"] = lambda: ovm.plot_param_importances(self.study)
        for name, make in makers.items():
            try:
                axes = make()
            except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few distinct trials for this plot
                self.tracker.set_tags(self.parent_run, {f"plot_skipped.{name}": str(e)[:200]})
                continue
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
            self.tracker.log_image(self.parent_run, buffer.getvalue(), name)

    def summary_table(self) -> str:
        frame = self.study.trials_dataframe(attrs=("number", "value", "params", "state"))
        # a study with metric names (ours) calls the column value_NAME; an older one, value
        frame = frame.rename(columns={f"value_{OBJECTIVE}": OBJECTIVE, "value": OBJECTIVE})
        frame = frame.sort_values(OBJECTIVE, ascending=False, na_position="last")
        return frame.head(10).to_markdown(index=False, floatfmt=".2f")

    def retrain_best(self) -> list:
        """The best configuration on train + validation, over `final_seeds` seeds, evaluated on test."""
        best = self.study.best_trial
        overrides: dict[str, dict] = {}
        for name, value in best.params.items():
            dim = self.space[name]
            overrides.setdefault(dim.method, {})[dim.param] = value
        outcomes = []
        for seed in range(self.opts.final_seeds):
            opts = dataclasses.replace(self.run_opts, seed=seed, overrides=overrides, full_train=True,
                                       tags={"from_sweep": self.opts.study, "sweep_trial": best.number})
            outcomes.append(self.runner.run_cell(self.cell, opts))
        return outcomes

