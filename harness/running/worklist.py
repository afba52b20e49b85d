"""A list of runs trained once, the work shared: `run_plans` trains every (cell, options) plan that
is not finished, leaving a run another live worker holds for later (harness/running/workshare.py),
and `validate` resolves and checks every plan before anything trains. `harness run`, `harness perf`
and the Python API's `run_cell` go through it."""

from __future__ import annotations

import sys
import time
from typing import Callable

from harness.running.lifecycle import TrainingFailed
from harness.running.workshare import POLL_SECONDS, Claimed, starting_order


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
