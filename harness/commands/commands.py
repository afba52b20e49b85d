"""What each `harness` command does, once its arguments are parsed (harness/cli.py)."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from harness.errors import UserError
from harness.running import launch
from harness.spec.cells import method_parts, split_assignment
from harness.spec.options import from_flags


def parse_overrides(items: list[str], method_id: str) -> dict[str, dict]:
    """--set NAME=VALUE or --set METHOD.NAME=VALUE; values are YAML scalars."""
    out: dict[str, dict] = {}
    for item in items:
        method, key, value = split_assignment("--set", item, method_id, "NAME=VALUE or METHOD.NAME=VALUE")
        try:
            out.setdefault(method, {})[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not a valid scalar") from None
    return out


def cell_overrides(items: list[str], cell, in_suite: bool, cells: list) -> dict[str, dict]:
    """The --set values for one cell. In a suite each item is METHOD.NAME=VALUE and applies to the
    cells that have METHOD; a method in none of the suite's cells is an error."""
    if not in_suite:
        return parse_overrides(items, cell.method)
    for item in items:
        method = item.partition("=")[0].rpartition(".")[0]
        if not method:
            raise UserError(f"--set {item!r}: on a suite, name the method: METHOD.NAME=VALUE "
                            "(it applies to every cell that has METHOD)")
        if not any(method in method_parts(c.method) for c in cells):
            raise UserError(f"--set {item!r}: no cell of the suite uses method {method!r}")
    mine = [i for i in items if i.partition("=")[0].rpartition(".")[0] in method_parts(cell.method)]
    return parse_overrides(mine, cell.method)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value}")


def command_list(args, spec, home: Path) -> int:
    from harness.commands import listing
    from harness.running.compat import mismatches
    from harness.running.paths import data_root

    if args.suites:
        print("\n".join(listing.suite_lines(spec)))
        return 0
    if args.estimate and args.suite is None:
        raise UserError("--estimate needs --suite: it times every cell of one suite")
    cells = spec.cells(suite=args.suite, dataset=args.dataset, method=args.method)
    verdicts = mismatches(spec, cells, home)  # e.g. kr on a teacher without residual blocks
    if args.estimate:
        from harness.performance.estimate import command_estimate

        return command_estimate(args, spec, home, [cell for cell in cells if verdicts[cell.id] is None])
    seeds = {}
    if args.status:  # the store only when asked: a plain list imports neither pandas nor MLflow
        from harness.tracking.tracking import default_tracking_uri

        seeds = listing.finished_seeds(args.tracking_uri or default_tracking_uri(home))
    width, root = max((len(c.id) for c in cells), default=0), data_root(args.data_root)
    for cell_id, reason in verdicts.items():
        if reason is None:
            line = listing.status_line(spec, cell_id, seeds.get(cell_id, []), root, width) if args.status else cell_id
            print(line + listing.method_origin(spec, cell_id))
        elif args.all:
            print(f"{cell_id}  # cannot run: {reason}")
    if args.suite and spec.suites[args.suite].protocol.train_on == "train+val":
        print(f"harness: suite {args.suite} trains its students on train+val: every training image, as its papers "
              "(no validation split; read at the last epoch)", file=sys.stderr)
    dropped = [cell_id for cell_id, reason in verdicts.items() if reason is not None]
    if args.suite and dropped and not args.all:  # a suite's cell that cannot run is the suite's defect: say so
        print(f"harness: {len(dropped)} of suite {args.suite}'s {len(cells)} cells cannot run and are not listed "
              f"(e.g. {dropped[0]}); `{shlex.join(['harness', 'list', '--suite', args.suite, '--all'])}` says why",
              file=sys.stderr)
    return 0


def _options(args, **extra):
    _positive("--teacher-epochs", args.teacher_epochs)
    return from_flags(args, **extra)


def run_requests(args, spec) -> list:
    """(cell, options) of every run `harness run` asks for, validated as far as the spec allows."""
    _positive("--epochs", args.epochs)
    _positive("--seeds", args.seeds)
    seeds = list(range(args.seeds)) if args.seeds else args.seed
    if any(seed < 0 for seed in seeds + [args.teacher_seed]):
        raise UserError("seeds must be non-negative integers")
    cells = spec.cells(suite=args.suite) if args.suite else [spec.cell(args.cell)]
    base = _options(args, epochs=args.epochs, suite=args.suite, register=args.register)
    return [(cell, replace(base, seed=seed, overrides=cell_overrides(args.overrides, cell, bool(args.suite), cells)))
            for cell in cells for seed in seeds]


def tell(cell, opts, run_id: str, summary: dict, trained: bool) -> None:
    verb = "finished" if trained else "already finished"
    print(f"{cell.id} seed {opts.seed}: {verb}; test top-1 {summary.get('test_top1_last', float('nan')):.2f}% "
          f"(last epoch), {summary.get('test_top1_best_val', float('nan')):.2f}% (best val epoch); "
          f"MLflow run {run_id}")


def answer_if_finished(args, spec, home: Path, tracking_uri: str) -> bool:
    """Every requested run already FINISHED: say so without importing torch or MLflow (harness/running/noop.py)."""
    if args.force or args.launcher or args.register or args.amp == "auto" or int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return False
    from harness.running import noop

    plans = run_requests(args, spec)
    spec_and_code = noop.fingerprint(spec)
    data = {(c.dataset, o.data_root): None for c, o in plans}  # each dataset's files listed once (ImageNet's: seconds)
    data = {(d, root): noop.data_of(spec, d, root) for d, root in data}
    found = noop.finished(home, tracking_uri, [noop.request_key(spec_and_code, c.id, o) for c, o in plans],
                         [data[c.dataset, o.data_root] for c, o in plans])
    if found is None:
        return False
    for (cell, opts), (run_id, metrics) in zip(plans, found):
        tell(cell, opts, run_id, metrics, trained=False)
    return True


def command_run(args, spec, runner) -> int:
    from harness.running import noop

    plans = run_requests(args, spec)
    if args.register:
        runner.tracker.check_registry()
    if args.launcher:
        workers = launch.check(args)
        from harness.running.worklist import validate

        validate(runner, plans)  # every cell here, before any job exists
        return launch.launch(args, args.argv, runner.home, runner.tracking_uri, workers)
    from harness.running.worklist import run_plans

    if args.force:
        print(f"--force: training the requested runs again from scratch; cached teachers are kept (delete a "
              f"file under {runner.home / 'teachers'} to retrain that teacher)", file=sys.stderr)
    spec_and_code = noop.fingerprint(spec)

    def planned(resolved):  # so that asking again is answered without resolving (harness/running/noop.py)
        noop.remember(runner.home, {noop.request_key(spec_and_code, cell.id, opts): plan.run_key
                                    for (cell, opts), plan in zip(plans, resolved)})

    _, failed = run_plans(runner, plans, lambda cell, opts, outcome: tell(
        cell, opts, outcome.run_id, outcome.summary, outcome.status != "SKIPPED"), on_planned=planned)
    if failed:
        if len(plans) > 1:
            print(f"harness: {len(failed)} of {len(plans)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def command_sweep(args, spec, runner) -> int:
    from harness.tuning.options import SweepOptions
    from harness.tuning.sweep import Sweep, check

    cell = spec.cell(args.cell)
    for name in ("--trials", "--epochs"):
        _positive(name, getattr(args, name.strip("-")))
    if args.final_seeds < 0 or args.seed < 0:
        raise UserError("--final-seeds and --seed must be non-negative")
    if args.sampler == "grid" and not args.grid:
        raise UserError("--sampler grid needs --grid NAME (a grid of benchmarks.yaml)")
    opts = replace(_options(args, epochs=args.epochs), seed=args.seed, progress=False)
    sweep_opts = SweepOptions(
        trials=args.trials, study=args.study, storage=args.storage or f"sqlite:///{runner.home / 'optuna.db'}",
        sampler=args.sampler, pruner=args.pruner, seed=args.sampler_seed, space=args.space, grid=args.grid,
        final_seeds=args.final_seeds)
    if args.launcher:
        workers = launch.check(args)
        check(runner, cell, opts, sweep_opts)  # space, cell, storage: before any job exists
        return launch.launch(args, args.argv, runner.home, runner.tracking_uri, workers)
    sweep = Sweep(runner, cell, opts, sweep_opts)
    study = sweep.opts.study
    result = sweep.run()
    print(sweep.summary_table())
    complete = [t for t in result.trials if t.value is not None]
    if not complete:
        print(f"study {study}: no trial completed; MLflow parent run {sweep.parent_run}")
        return 1
    print(f"study {study}: best val top-1 {result.best_value:.2f} with {result.best_params} "
          f"(trial {result.best_trial.number}); MLflow parent run {sweep.parent_run}")
    for outcome in sweep.retrain_best():
        print(f"retrained on train+val: test top-1 {outcome.summary.get('test_top1_last', float('nan')):.2f}% "
              f"(MLflow run {outcome.run_id}, tagged from_sweep={study})")
    return 0


def command_bench(args, spec, runner) -> int:
    from harness.performance.bench import bench
    from harness.tracking.provenance import cpu_name
    from harness.training.device import NATIVE_BF16_FLAGS, speed_features

    for name in ("--steps", "--warmup"):
        _positive(name, getattr(args, name.strip("-")))
    _positive("--batch-size", args.batch_size)
    if args.teacher_cache:  # the bench's steps run on a few batches: a cache of every image would not be timed
        raise UserError("bench does not take --teacher-cache: the cache takes the teacher's forward out of "
                        "every step (the kd row minus the baseline row is about what it saves)")
    table = bench(runner, args.dataset, args.pair, args.methods, _options(args), args.steps, args.warmup,
                  args.profile, args.batch_size)
    shown = speed_features()
    if table.attrs["device"].startswith("cuda"):  # bf16 emulation is a CPU matter
        print(f"GPU: {table.attrs['device_name']}")
    else:
        print(f"CPU: {cpu_name()}; features: {' '.join(shown) or 'unknown'}; native bf16: "
              f"{'yes' if set(shown) & set(NATIVE_BF16_FLAGS) else 'no (bf16 autocast is emulated: slow)'}")
    options = f"amp={args.amp}, channels_last={args.channels_last}, compile={args.compile}, device={args.device}"
    print(f"{args.dataset}/{args.pair}, {options}: harness kd step / bare kd loop = "
          f"{table.attrs['harness_over_bare']:.3f}")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    for method, operators in table.attrs["profiles"].items():
        print(f"\n## {method}: operators by CPU time (torch.profiler)\n{operators}")
    if args.folder_images:
        from harness.performance.bench import folder_throughput

        _positive("--folder-images", args.folder_images)
        folder = folder_throughput(spec, table.attrs["device"], args.folder_images)
        print(f"image-folder input: {folder['images_per_s']:.0f} images/s ({folder['image']}; bound: {folder['bound']})")
    if args.log:
        from harness.performance.bench import log_bench
        from harness.running.plan import resolve_device

        params = {"amp": args.amp, "channels_last": args.channels_last, "compile": args.compile,
                  "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size}
        run_id = log_bench(runner, table, args.dataset, args.pair, params, resolve_device(args.device))
        print(f"logged to MLflow run {run_id}")
    return 0


def command_perf(args, spec, runner) -> int:
    from harness.performance import perf

    for name in ("--steps", "--warmup", "--seeds"):
        _positive(name, getattr(args, name.strip("-")))
    text = perf.record(runner, args.bench, args.cell, args.seeds, args.options, _options(args), args.steps,
                       args.warmup, shlex.join(["harness", *args.argv]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0
