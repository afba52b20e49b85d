"""The harness from Python (a notebook, a script): run cells, read results.

    from harness import run_cell, results
    records = run_cell("digits/resnet20-resnet8/kd", seeds=3, epochs=5, tau=4.0)
    table = results(suite="positive_control")      # the report's per-cell DataFrame

`run_cell` takes the same run options as `harness run` (as keywords: epochs, smoke, data_root,
device, amp, channels_last, compile, teacher_cache, teacher_seed, teacher_seeds, teacher_epochs, force,
progress (default False here), ...); any other keyword is a hyperparameter of the cell's method
(`--set NAME=VALUE`; write `params={"kd.tau": 4.0}` for one part of a combined method). Mistakes
(an unknown name, a hyperparameter given twice) raise `harness.UserError`.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.spec.cells import split_assignment
from harness.spec.options import RunOptions

# RunOptions a caller may set by keyword; the seed, the method values and the suite come from the call
NOT_KEYWORDS = {"seed", "overrides", "tags", "suite"}
OPTION_NAMES = {f.name for f in fields(RunOptions)} - NOT_KEYWORDS


def open_runner(home: str | Path | None = None, tracking_uri: str | None = None, spec_path: str | None = None):
    """(spec, Runner) on a runs home (default: $KD_HARNESS_HOME or the user data dir)."""
    from harness.running.paths import runs_home
    from harness.running.runner import Runner
    from harness.spec.spec import load_spec
    from harness.tracking.tracking import default_tracking_uri
    from methods import method_class, validate_defaults

    spec = load_spec(spec_path, check=method_class)
    validate_defaults(spec)
    home = runs_home(str(home) if home is not None else None)
    return spec, Runner(spec, home, tracking_uri or default_tracking_uri(home))


def run_cell(cell: str, seeds: int | list[int] = 1, *, params: dict[str, Any] | None = None,
             home: str | Path | None = None, tracking_uri: str | None = None, spec_path: str | None = None,
             **overrides) -> list[dict]:
    """Run one cell over `seeds` (a count, 0..N-1, or a list); returns one record per seed: cell,
    seed, status (FINISHED: trained now, SKIPPED: found finished, FAILED), MLflow run id and the
    run's summary metrics (test_top1_last, test_top1_best_val, sec_per_epoch, ...)."""
    from harness.running.worklist import run_plans

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
    from harness.results import report
    from harness.running.paths import runs_home
    from harness.spec.cells import require_known
    from harness.spec.spec import load_spec
    from harness.tracking.tracking import default_tracking_uri

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
