"""The harness from Python (a notebook, a script): run cells, read results.

    from harness import run_cell, results
    records = run_cell("digits/resnet20-resnet8/kd", seeds=3, epochs=5, tau=4.0)
    table = results(suite="positive_control")      # the report's per-cell DataFrame

`run_cell` takes the same run options as `harness run` (as keywords: epochs, smoke, data_root,
device, amp, channels_last, compile, teacher_cache, teacher_seed, teacher_epochs, force,
progress (default False here), ...); any other keyword is a hyperparameter of the cell's method
(`--set NAME=VALUE`; write `params={"kd.tau": 4.0}` for one part of a combined method). Mistakes
(an unknown name, a hyperparameter given twice) raise `harness.UserError`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Callable

from harness.cells import split_assignment
from harness.errors import UserError
from harness.options import RunOptions

# RunOptions a caller may set by keyword; the seed, the method values and the suite come from the call
NOT_KEYWORDS = {"seed", "overrides", "tags", "suite"}
OPTION_NAMES = {f.name for f in fields(RunOptions)} - NOT_KEYWORDS


def open_runner(home: str | Path | None = None, tracking_uri: str | None = None, spec_path: str | None = None):
    """(spec, Runner) on a runs home (default: $KD_HARNESS_HOME or the user data dir)."""
    from harness.paths import runs_home
    from harness.runner import Runner
    from harness.spec import load_spec
    from harness.tracking import default_tracking_uri
    from methods import validate_defaults

    spec = load_spec(spec_path)
    validate_defaults(spec)
    home = runs_home(str(home) if home is not None else None)
    return spec, Runner(spec, home, tracking_uri or default_tracking_uri(home))


def validate(runner, plans: list) -> tuple[list, dict]:
    """Each (cell, options) as a RunPlan, checked before anything trains: the cell, its options and
    hyperparameters, and the data of every run that is not finished yet. Returns the plans and the
    outcomes of those already finished, by index (only rank 0 reads the store)."""
    resolved = [runner.plan(cell, opts) for cell, opts in plans]
    done = {}
    for index, plan in enumerate(resolved):
        outcome = runner.finished(plan) if runner.context.is_main else None
        if outcome is None:
            plan.data  # noqa: B018  (present and readable)
        else:
            done[index] = outcome
    return resolved, done


def run_plans(runner, plans: list, on_done: Callable | None = None, on_planned: Callable | None = None,
              say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)):
    """Train every (cell, options) plan once, sharing the work with any other worker on the same
    store: a run another live worker holds is left for later, and its result taken when found.
    `on_planned(plans)` hears of the resolved RunPlans, `on_done(cell, opts, outcome)` of each run as
    it ends. Returns (outcomes by plan index, failed plan ids). Every plan is validated before any
    trains."""
    from harness.lifecycle import TrainingFailed
    from harness.workshare import POLL_SECONDS, Claimed, starting_order

    resolved, finished = validate(runner, plans)
    if on_planned is not None:
        on_planned(resolved)
    outcomes, failed, told = {}, [], set()
    pending = [(index, plans[index]) for index in starting_order(len(plans))]
    while pending:
        deferred = []
        for index, (cell, opts) in pending:
            try:
                outcomes[index] = finished.get(index) or runner.run_plan(resolved[index])
                if on_done is not None:
                    on_done(cell, opts, outcomes[index])
            except Claimed as e:
                deferred.append((index, (cell, opts)))
                if index not in told:
                    say(f"{cell.id} seed {opts.seed}: {e}; coming back to it")
                    told.add(index)
            except TrainingFailed as e:  # a diverged cell is a result too: record it, go on with the rest
                say(f"harness: training failed: {e}")
                failed.append(f"{cell.id} seed {opts.seed}")
        if deferred and len(deferred) == len(pending):  # every run left is another worker's: wait
            time.sleep(POLL_SECONDS)
        pending = deferred
    return outcomes, failed


def run_cell(cell: str, seeds: int | list[int] = 1, *, params: dict[str, Any] | None = None,
             home: str | Path | None = None, tracking_uri: str | None = None, spec_path: str | None = None,
             **overrides) -> list[dict]:
    """Run one cell over `seeds` (a count, 0..N-1, or a list); returns one record per seed: cell,
    seed, status (FINISHED: trained now, SKIPPED: found finished, FAILED), MLflow run id and the
    run's summary metrics (test_top1_last, test_top1_best_val, sec_per_epoch, ...)."""
    spec, runner = open_runner(home, tracking_uri, spec_path)
    target = spec.cell(cell)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list or any(s < 0 for s in seed_list):
        raise UserError(f"seeds: a positive count or a list of non-negative seeds, got {seeds!r}")
    wrong = sorted(NOT_KEYWORDS & set(overrides))
    if wrong:  # else taken for hyperparameters, and refused as unknown ones of the method
        raise UserError(f"run_cell: {', '.join(wrong)} is not a keyword of run_cell (give the seeds as `seeds`)")
    options = {"progress": False} | {k: v for k, v in overrides.items() if k in OPTION_NAMES}
    method_values: dict[str, dict] = {}
    hyper = [(k, v) for k, v in overrides.items() if k not in OPTION_NAMES] + list((params or {}).items())
    for name, value in hyper:
        method, key, _ = split_assignment("run_cell", f"{name}=", target.method, "[METHOD.]NAME")
        if key in method_values.get(method, {}):  # `tau=` and params={"kd.tau": ...}: which one was meant?
            raise UserError(f"run_cell: hyperparameter {method}.{key} is given twice")
        method_values.setdefault(method, {})[key] = value
    base = RunOptions(**options)
    plans = [(target, replace(base, seed=seed, overrides=method_values)) for seed in seed_list]
    outcomes, _ = run_plans(runner, plans)
    return [{"cell": target.id, "seed": opts.seed,
             "status": outcomes[i].status if i in outcomes else "FAILED",
             "run_id": outcomes[i].run_id if i in outcomes else None}
            | (outcomes[i].summary if i in outcomes else {})
            for i, (_, opts) in enumerate(plans)]


def results(suite: str | None = None, cells: list[str] | None = None, select: str = "last",
            include_smoke: bool = False, home: str | Path | None = None, tracking_uri: str | None = None,
            spec_path: str | None = None):
    """The report's per-cell table (pandas): mean ± std over seeds, n, paper number, Δ, z, cost
    columns; `.attrs["runs"]` holds the runs it was computed from."""
    from harness import report
    from harness.cells import require_known
    from harness.paths import runs_home
    from harness.spec import load_spec
    from harness.tracking import default_tracking_uri

    if (suite is None) == (cells is None):
        raise UserError("results: give a suite or a list of cells")
    spec = load_spec(spec_path)
    if suite is not None:
        require_known(suite, spec.suites, "suite")
    else:
        cells = [spec.cell(c).id for c in cells]
    uri = tracking_uri or default_tracking_uri(runs_home(str(home) if home is not None else None))
    built = report.build(spec, uri, suite, cells, select, include_smoke)
    table = built.detail.copy()
    table.attrs["runs"] = built.runs
    return table
