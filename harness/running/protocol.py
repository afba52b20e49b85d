"""What a run's protocol makes of its options and its method's schedule, before its identity is
computed: the suite's training set (`protocol.train_on`), the teachers' seeds (`--teacher-seeds`),
and a method's epoch-counted settings when `--epochs` (or `--smoke`) shortens the recipe."""

from __future__ import annotations

from dataclasses import replace

from harness.errors import UserError
from harness.spec.cells import Cell, method_parts
from harness.spec.options import RunOptions
from harness.spec.spec import Spec
from methods import resolve_params


def with_protocol(spec: Spec, opts: RunOptions) -> RunOptions:
    """The options the run trains with: the suite's train+val protocol trains on every training image
    (`full_train`); `--teacher-seeds per-run` gives student seed k the teacher of seed k."""
    if opts.suite and spec.suites[opts.suite].protocol.train_on == "train+val" and not opts.full_train:
        opts = replace(opts, full_train=True)
    if opts.teacher_seeds == "per-run" and opts.teacher_seed != opts.seed:
        if opts.teacher_seed != 0:
            raise UserError(f"--teacher-seeds per-run gives each student seed the teacher of the same seed; "
                            f"drop --teacher-seed {opts.teacher_seed}")
        opts = replace(opts, teacher_seed=opts.seed)
    return opts


def shortened_schedules(spec: Spec, method_id: str, overrides: dict[str, dict], user_overrides: dict[str, dict],
                        recipe_epochs: int, epochs: int) -> tuple[dict[str, dict], dict[str, str]]:
    """(overrides, changes): a part's epoch-counted settings (its Params fields named *_epochs, counted
    in the recipe's epochs: DKD's and ReviewKD's warm-ups) scaled to a run shortened from
    `recipe_epochs` to `epochs`, never past the run's end (else the loss would never reach full weight)
    and never to 0; `changes`: 'dkd.warmup_epochs' -> '20 -> 3', what the run logs. A value the user
    set (--set) is taken as given. A run at the recipe's length keeps every value."""
    if epochs >= recipe_epochs:
        return overrides, {}
    out, changes = dict(overrides), {}
    for name in method_parts(method_id):
        params = resolve_params(spec, name, overrides.get(name)).model_dump()
        for key, value in params.items():
            if key.endswith("_epochs") and value and key not in user_overrides.get(name, {}):
                scaled = min(epochs, max(1, round(value * epochs / recipe_epochs)))
                if scaled != value:
                    out[name] = out.get(name, {}) | {key: scaled}
                    changes[f"{name}.{key}"] = f"{value} -> {scaled}"
    return out, changes


def cell_overrides(spec, cell: Cell, opts: RunOptions) -> dict[str, dict]:
    """The cell's hyperparameters: its suite's for the method, then for the pair, then the user's."""
    suite = spec.suites[opts.suite] if opts.suite else None
    by_method, by_pair = (suite.overrides, suite.pair_overrides.get(cell.pair, {})) if suite else ({}, {})
    suite_overrides = {m: by_method.get(m, {}) | by_pair.get(m, {}) for m in set(by_method) | set(by_pair)}
    return {m: suite_overrides.get(m, {}) | opts.overrides.get(m, {})
            for m in set(opts.overrides) | (set(suite_overrides) & set(method_parts(cell.method)))}
