"""The `harness` command line."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import platformdirs
import yaml

from harness import launch
from harness.errors import UserError
from harness.spec import require_known


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def runs_home(cli_home: str | None) -> Path:
    """--home, else $KD_HARNESS_HOME, else a per-user data directory."""
    home = cli_home or os.environ.get("KD_HARNESS_HOME") or platformdirs.user_data_dir("kd-harness")
    home = Path(home).expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the runs home {home}: {e.strerror}") from None
    return home


def parse_overrides(items: list[str], method_id: str) -> dict[str, dict]:
    """--set NAME=VALUE or --set METHOD.NAME=VALUE; values are YAML scalars."""
    from harness.spec import split_assignment

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
    from harness.spec import method_parts

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


def build_parser() -> Parser:
    parser = Parser(prog="harness", description="Reproducible knowledge-distillation benchmarks: "
                    "run cells DATASET/TEACHER-STUDENT/METHOD, tracked in MLflow.")
    parser.add_argument("--spec", help="benchmarks yaml (default: $KD_HARNESS_SPEC or the repository's benchmarks.yaml)")
    parser.add_argument("--home", help="runs home: MLflow store, teachers, checkpoints "
                        "(default: $KD_HARNESS_HOME or a user data dir)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                        "sqlite:///HOME/mlflow.db)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("list", help="list cells from benchmarks.yaml", description="Print cells, one per line.")
    p.add_argument("--suite")
    p.add_argument("--dataset")
    p.add_argument("--method")
    p.add_argument("--all", action="store_true", help="also the cells that cannot run, with the reason")

    def training_options(p, teacher_only=False):
        p.add_argument("--data-root", help="dataset directory (default: $KD_HARNESS_DATA or a user cache dir)")
        p.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
        p.add_argument("--smoke", action="store_true", help="tiny subset, 1 epoch: for CI and quick checks")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
        p.add_argument("--amp", choices=["off", "bf16", "fp16", "auto"], default="off",
                       help="autocast mixed precision (fp16 adds a GradScaler); auto: the fastest safe one here")
        p.add_argument("--channels-last", action="store_true", help="channels-last memory format (CPU and CUDA)")
        p.add_argument("--compile", action="store_true", help="torch.compile the forward passes")
        p.add_argument("--teacher-cache", action="store_true",
                       help="compute the teacher's features once per training image and keep them on the device "
                       "(datasets without augmentation only)")
        det = p.add_mutually_exclusive_group()
        det.add_argument("--deterministic", dest="deterministic", action="store_true", default=None,
                         help="deterministic algorithms (default on CPU)")
        det.add_argument("--no-deterministic", dest="deterministic", action="store_false")
        p.add_argument("--force", action="store_true", help="train again even if a finished run exists")
        p.add_argument("--teacher-seed", type=int, default=0)
        p.add_argument("--teacher-epochs", type=int, help="shorten the teacher's recipe")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("run", help="train and track one cell (or a suite)",
                       description="Train the cell's teacher (or reuse the cached one), distil the student, "
                       "log everything to MLflow. Finished cells are skipped; interrupted ones resume.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--cell", help="DATASET/TEACHER-STUDENT/METHOD, e.g. digits/resnet20-resnet8/kd")
    target.add_argument("--suite", help="every cell of a suite in benchmarks.yaml")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds (default 0)")
    seeds.add_argument("--seeds", type=int, help="N seeds: 0..N-1")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[METHOD.]NAME=VALUE",
                   help="override a method hyperparameter (repeatable)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (logged)")
    p.add_argument("--register", metavar="NAME", help="register each trained student in MLflow's model registry")
    training_options(p)
    launch.add_arguments(p)

    p = sub.add_parser("teacher", help="train and cache a teacher", description="Train (or find cached) the "
                       "teacher DATASET/MODEL with the dataset's teacher recipe.")
    p.add_argument("target", metavar="DATASET/MODEL")
    p.add_argument("--seed", type=int, default=0, help="the teacher's seed")
    p.add_argument("--epochs", type=int, help="override the teacher recipe's epochs")
    training_options(p)

    p = sub.add_parser("sweep", help="tune a cell's hyperparameters with Optuna on the validation split",
                       description="Optuna study over the cell's search space (benchmarks.yaml, or --space). "
                       "Trials see only the training and validation splits. Several processes or machines "
                       "running the same command on one --storage and --study share the study; running it "
                       "again resumes it. MLflow: a parent run per study, a child run per trial.")
    p.add_argument("--cell", required=True)
    p.add_argument("--trials", type=int, required=True, help="trials this worker runs")
    p.add_argument("--space", action="append", default=[], metavar="[METHOD.]NAME=SPEC",
                   help="float:LOW:HIGH[:log], int:LOW:HIGH[:log] or cat:A,B (repeatable)")
    p.add_argument("--sampler", choices=["tpe", "grid"], default="tpe")
    p.add_argument("--grid", help="a named grid of benchmarks.yaml (implies --sampler grid), e.g. lpl_fig3")
    p.add_argument("--sampler-seed", type=int, default=0)
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    p.add_argument("--storage", help="Optuna storage: a SQLAlchemy URL or journal:PATH "
                   "(default: sqlite:///HOME/optuna.db)")
    p.add_argument("--study", help="study name (default: derived from the cell)")
    p.add_argument("--final-seeds", type=int, default=0,
                   help="then retrain the best configuration on train+val over N seeds and report test accuracy")
    p.add_argument("--seed", type=int, default=0, help="the trials' training seed")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    training_options(p)
    launch.add_arguments(p)

    p = sub.add_parser("bench", help="time the harness against a bare loop, and every method's step",
                       description="Median step time of each method through the harness, of a hand-written KD "
                       "loop doing the same work, images per second, and the ratios; on the chosen options.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--pair", required=True)
    p.add_argument("--methods", nargs="*", default=[], help="methods besides baseline and kd")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--log", action="store_true", help="log the table to MLflow (a run with role=bench)")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--profile", action="store_true",
                   help="also profile each method's step with torch.profiler (where its time goes)")
    training_options(p)

    p = sub.add_parser("report", help="comparison tables and plots from MLflow, beside the papers' numbers",
                       description="Render a suite's (or some cells') results: mean ± std over seeds, the paper's "
                       "number and the difference, cost columns; Markdown, HTML (with plots), LaTeX, CSV.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--suite")
    target.add_argument("--cells", nargs="+", metavar="CELL")
    p.add_argument("--select", choices=["last", "best-val"], default="last",
                   help="test accuracy at the last epoch (default) or at the best validation epoch")
    p.add_argument("--format", choices=["md", "html", "latex", "csv"], default="md")
    p.add_argument("--out", help="a file for --format, or a directory (ending in /) for every format and the plots")
    p.add_argument("--include-smoke", action="store_true", help="count --smoke runs too")

    p = sub.add_parser("audit", help="test the papers' claims on our runs (Welch's t-test per claim)",
                       description="For every claim of the chosen suites (benchmarks.yaml, suites.*.claims): our "
                       "means ± std (n), the difference, Welch's p-value and a verdict (confirmed, refuted, "
                       "inconclusive, not run), beside the paper's numbers.")
    p.add_argument("--suite", nargs="+", help="suites to audit (default: every suite with claims)")
    p.add_argument("--select", choices=["last", "best-val"], default="last",
                   help="test accuracy at the last epoch (default) or at the best validation epoch")
    p.add_argument("--out", help="write the Markdown audit to this file")
    p.add_argument("--include-smoke", action="store_true", help="count --smoke runs too")

    p = sub.add_parser("ui", help="start the MLflow UI on the runs store (127.0.0.1)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    return parser


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value}")


def command_list(args, spec, home: Path) -> int:
    from harness.compat import mismatches

    cells = spec.cells(suite=args.suite, dataset=args.dataset, method=args.method)
    for cell_id, reason in mismatches(spec, cells, home).items():  # e.g. kr on a teacher without residual blocks
        if reason is None:
            print(cell_id)
        elif args.all:
            print(f"{cell_id}  # cannot run: {reason}")
    return 0


def _options(args, **extra):
    from harness.options import RunOptions

    _positive("--teacher-epochs", args.teacher_epochs)
    return RunOptions(smoke=args.smoke, data_root=args.data_root, download=args.download, device=args.device,
                      amp=_amp(args), channels_last=args.channels_last, compile=args.compile,
                      teacher_cache=args.teacher_cache, deterministic=args.deterministic, force=args.force,
                      teacher_seed=args.teacher_seed, teacher_epochs=args.teacher_epochs,
                      progress=not args.no_progress, **extra)


def _amp(args) -> str:
    """--amp resolved for the device the run will use (auto -> off/bf16/fp16)."""
    if args.amp == "off":
        return "off"
    import torch

    from harness.engine import resolve_amp

    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    return resolve_amp(args.amp, "cuda" if cuda else "cpu")


def run_requests(args, spec) -> list:
    """(cell, options) of every run `harness run` asks for, validated as far as the spec allows."""
    from dataclasses import replace

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
    """Every requested run already FINISHED: say so without importing torch or MLflow (harness/noop.py)."""
    if args.force or args.launcher or args.register or args.amp == "auto" or int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return False
    from harness import noop

    plans = run_requests(args, spec)
    spec_and_code = noop.fingerprint(spec)
    found = noop.finished(home, tracking_uri, [noop.request_key(spec_and_code, c.id, o) for c, o in plans])
    if found is None:
        return False
    for (cell, opts), (run_id, metrics) in zip(plans, found):
        tell(cell, opts, run_id, metrics, trained=False)
    return True


def command_run(args, spec, runner) -> int:
    from harness import noop

    plans = run_requests(args, spec)
    if args.register:
        runner.tracker.check_registry()
    if args.launcher:
        workers = launch.check(args)
        from harness.api import validate

        validate(runner, plans)  # every cell here, before any job exists
        return launch.launch(args, args.argv, runner.home, runner.tracking_uri, workers)
    from harness.api import run_plans

    spec_and_code = noop.fingerprint(spec)

    def planned(resolved):  # so that asking again is answered without resolving (harness/noop.py)
        noop.remember(runner.home, {noop.request_key(spec_and_code, cell.id, opts): plan.run_key
                                    for (cell, opts), plan in zip(plans, resolved)})

    _, failed = run_plans(runner, plans, lambda cell, opts, outcome: tell(
        cell, opts, outcome.run_id, outcome.summary, outcome.status != "SKIPPED"), on_planned=planned)
    if failed:
        if len(plans) > 1:
            print(f"harness: {len(failed)} of {len(plans)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def command_teacher(args, spec, runner) -> int:
    dataset, sep, model = args.target.partition("/")
    if not sep or not dataset or not model or "/" in model:
        raise UserError(f"teacher {args.target!r} is malformed: expected DATASET/MODEL, e.g. mnist/hinton1200")
    require_known(dataset, spec.datasets, "dataset")
    _positive("--epochs", args.epochs)
    if args.seed < 0:
        raise UserError("seeds must be non-negative integers")
    opts = _options(args)
    opts.teacher_seed, opts.teacher_epochs = args.seed, args.epochs or args.teacher_epochs
    from harness.workshare import until_free

    _, info = until_free(runner.teacher, dataset, model, opts)
    print(f"teacher {dataset}/{model} seed {args.seed}: {info['teacher.path']}")
    return 0


def command_sweep(args, spec, runner) -> int:
    from dataclasses import replace

    from harness.sweep import Sweep, SweepOptions, check

    cell = spec.cell(args.cell)
    for name in ("--trials", "--epochs"):
        _positive(name, getattr(args, name.strip("-")))
    if args.final_seeds < 0 or args.seed < 0:
        raise UserError("--final-seeds and --seed must be non-negative")
    if args.sampler == "grid" and not args.grid:
        raise UserError("--sampler grid needs --grid NAME (a grid of benchmarks.yaml)")
    opts = replace(_options(args, epochs=args.epochs), seed=args.seed, progress=False)
    study = args.study or "sweep-" + cell.id.replace("/", "-")
    sweep_opts = SweepOptions(
        trials=args.trials, study=study, storage=args.storage or f"sqlite:///{runner.home / 'optuna.db'}",
        sampler=args.sampler, pruner=args.pruner, seed=args.sampler_seed, space=args.space, grid=args.grid,
        final_seeds=args.final_seeds)
    if args.launcher:
        workers = launch.check(args)
        check(runner, cell, opts, sweep_opts)  # space, cell, storage: before any job exists
        return launch.launch(args, args.argv, runner.home, runner.tracking_uri, workers)
    sweep = Sweep(runner, cell, opts, sweep_opts)
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
    from harness.bench import bench
    from harness.provenance import cpu_name

    for name in ("--steps", "--warmup"):
        _positive(name, getattr(args, name.strip("-")))
    _positive("--batch-size", args.batch_size)
    table = bench(runner, args.dataset, args.pair, args.methods, _options(args), args.steps, args.warmup,
                  args.profile, args.batch_size)
    from harness.engine import NATIVE_BF16_FLAGS, cpu_flags

    flags = cpu_flags()
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    print(f"CPU: {cpu_name()}; features: {' '.join(shown) or 'unknown'}; native bf16: "
          f"{'yes' if flags & set(NATIVE_BF16_FLAGS) else 'no (bf16 autocast is emulated: slow)'}")
    options = f"amp={args.amp}, channels_last={args.channels_last}, compile={args.compile}, device={args.device}"
    print(f"{args.dataset}/{args.pair}, {options}: harness kd step / bare kd loop = "
          f"{table.attrs['harness_over_bare']:.3f}")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    for method, operators in table.attrs["profiles"].items():
        print(f"\n## {method}: operators by CPU time (torch.profiler)\n{operators}")
    if args.log:
        from harness.provenance import environment_params
        from harness.runner import resolve_device

        tracker = runner.tracker
        run_id = tracker.create(f"bench {args.dataset}/{args.pair}", {"role": "bench", "dataset": args.dataset,
                                                                      "pair": args.pair})
        tracker.log_params(run_id, {"amp": args.amp, "channels_last": args.channels_last, "compile": args.compile,
                                    "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size}
                           | environment_params(resolve_device(args.device)))
        metrics = {"harness_over_bare": table.attrs["harness_over_bare"]}
        for _, row in table.iterrows():
            metrics[f"{row.method}.{row.path.replace(' ', '_')}.ms_per_step"] = row.ms_per_step
        tracker.log_metrics(run_id, metrics, step=0)
        tracker.log_text(run_id, table.to_csv(index=False), "bench.csv")
        for method, operators in table.attrs["profiles"].items():
            tracker.log_text(run_id, operators, f"profile-{method}.txt")
        tracker.finish(run_id, "FINISHED")
        print(f"logged to MLflow run {run_id}")
    return 0


def command_report(args, spec, tracking_uri: str) -> int:
    from harness import report as rep

    cells = None
    if args.cells:
        cells = [spec.cell(c).id for c in args.cells]
    elif args.suite:
        require_known(args.suite, spec.suites, "suite")
    if args.out and not args.out.endswith("/") and not Path(args.out).is_dir() \
            and not Path(args.out).parent.is_dir():
        raise UserError(f"cannot write {args.out}: {Path(args.out).parent} is not a directory")
    result = rep.build(spec, tracking_uri, args.suite, cells, args.select, args.include_smoke)
    if args.out and (args.out.endswith("/") or Path(args.out).is_dir()):
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        images = rep.plots(result)
        for name, png in images.items():
            (out / name).write_bytes(png)
        for fmt, ext in (("md", "md"), ("html", "html"), ("latex", "tex"), ("csv", "csv")):
            (out / f"report.{ext}").write_text(rep.render(result, fmt, images))
        command = "harness report " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["report"] else sys.argv[1:])
        (out / "runs.md").write_text(rep.provenance(result, command))
        print(f"wrote {out}/report.{{md,html,tex,csv}}, runs.md and {', '.join(images)}")
        return 0
    text = rep.render(result, args.format, rep.plots(result) if args.format == "html" else None)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def command_audit(args, spec, tracking_uri: str) -> int:
    from harness import audit

    suites = args.suite or [name for name, suite in spec.suites.items() if suite.claims]
    for name in suites:
        require_known(name, spec.suites, "suite")
        if not spec.suites[name].claims:
            raise UserError(f"suite {name!r} lists no claims to audit")
    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise UserError(f"cannot write {out}: {out.parent} is not a directory")
    result = audit.audit(spec, tracking_uri, suites, args.select, args.include_smoke)
    command = "harness " + " ".join(sys.argv[1:])
    text = audit.render_markdown(result, "Claims audit", audit.caption(result, args.select, command))
    if out is None:
        print(text)
    else:
        out.write_text(text)
        print(f"wrote {out}")
    return 0


def command_ui(args, tracking_uri: str) -> int:
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise UserError(f"no MLflow store at {tracking_uri}; run some cells first")
    from mlflow.tracking import MlflowClient

    from harness.tracking import EXPERIMENT

    experiment = MlflowClient(tracking_uri).get_experiment_by_name(EXPERIMENT)
    # MLflow 3's UI opens an experiment on its GenAI overview; the runs table has its own address
    runs = f"#/experiments/{experiment.experiment_id}/runs" if experiment else ""
    print(f"MLflow UI on http://{args.host}:{args.port}/{runs} (the runs table; store: {tracking_uri}); "
          "Ctrl-C stops it", flush=True)
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
                               "--host", args.host, "--port", str(args.port)])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # a launcher hands the same command to its workers
    warnings.filterwarnings("ignore", module="mlflow")
    try:
        from harness.spec import load_spec

        spec = load_spec(args.spec)
        home = runs_home(args.home)
        if args.command == "list":  # validates the methods' defaults unless its cache knows this spec
            return command_list(args, spec, home)
        from harness.tracking import default_tracking_uri

        tracking_uri = args.tracking_uri or default_tracking_uri(home)
        # runs known FINISHED under this very spec and code (validated then): no torch, no MLflow
        if args.command == "run" and answer_if_finished(args, spec, home, tracking_uri):
            return 0
        from methods import validate_defaults

        validate_defaults(spec)
        from harness.runner import Runner

        if args.command == "report":
            return command_report(args, spec, tracking_uri)
        if args.command == "ui":
            return command_ui(args, tracking_uri)
        if args.command == "audit":
            return command_audit(args, spec, tracking_uri)
        from harness import distributed

        context = distributed.from_environment()
        if context.enabled and args.command not in ("run", "teacher"):
            raise UserError(f"torchrun runs `harness run` and `harness teacher`, not `harness {args.command}`")
        if not context.is_main:  # rank 0 speaks for all
            sys.stdout = open(os.devnull, "w")
        runner = Runner(spec, home, tracking_uri, context)
        commands = {"run": command_run, "teacher": command_teacher, "sweep": command_sweep, "bench": command_bench}
        return commands[args.command](args, spec, runner)
    except UserError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from harness.engine import Interrupted
        from harness.runner import TrainingFailed

        if isinstance(e, TrainingFailed):
            print(f"harness: training failed: {e}", file=sys.stderr)
            return 1
        if isinstance(e, Interrupted):
            again = "the same command without --force" if getattr(args, "force", False) else "the same command"
            print(f"harness: interrupted: {e}; run {again} again to resume", file=sys.stderr)
            return 130
        raise
