"""The `harness` command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings

from harness.commands import commands, ledgers, new_method, reading, store_commands, with_method
from harness.errors import UserError
from harness.running import launch
from harness.running.paths import runs_home
from harness.spec.options import SPEED_OPTION_SETS, add_flags


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def global_options(default) -> argparse.ArgumentParser:
    """--spec, --home and --tracking-uri, for the main parser (default None) and, as a parent, for
    every subcommand (default SUPPRESS: absent there, the value given before the subcommand stays;
    given there, it wins)."""
    parser = argparse.ArgumentParser(add_help=False, argument_default=default)
    parser.add_argument("--spec", help="benchmarks yaml (default: $KD_HARNESS_SPEC or the repository's benchmarks.yaml)")
    parser.add_argument("--spec-extra", action="append", metavar="FILE", help="an overlay: datasets, models, pairs, "
                        "methods, recipes, suites added to the spec (repeatable; also $KD_HARNESS_SPEC_EXTRA, "
                        "path-separated); its folder is importable for its methods' class:")
    parser.add_argument("--home", help="runs home: MLflow store, teachers, checkpoints (default: $KD_HARNESS_HOME or a user data dir)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                        "sqlite:///HOME/mlflow.db)")
    return parser


def build_parser() -> Parser:
    parser = Parser(prog="harness", description="Reproducible knowledge-distillation benchmarks: "
                    "run cells DATASET/TEACHER-STUDENT/METHOD, tracked in MLflow.", parents=[global_options(None)])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    common = [global_options(argparse.SUPPRESS)]  # every subcommand's parents

    p = sub.add_parser("list", parents=common, help="list cells (or suites) from benchmarks.yaml",
                       description="Print cells, one per line (with --status: their finished seeds and data), "
                       "or the suites (--suites).")
    p.add_argument("--suite")
    p.add_argument("--dataset")
    p.add_argument("--method")
    p.add_argument("--all", action="store_true", help="also the cells that cannot run, with the reason")
    p.add_argument("--suites", action="store_true", help="the suites instead: name, cells, claims and title")
    p.add_argument("--status", action="store_true", help="per cell, its finished seeds in the store and "
                   "whether its dataset is on disk")
    p.add_argument("--data-root", help="where --status looks for datasets (default: $KD_HARNESS_DATA or a user "
                   "cache dir)")
    p.add_argument("--estimate", action="store_true", help="with --suite: its runs and estimated device-hours, "
                   "analytic (each network's FLOPs counted, for the --for target) unless --measure")
    p.add_argument("--for", dest="target", choices=["h100", "a100", "cpu"], default="h100",
                   help="--estimate's target: its sustained throughput turns counted FLOPs into hours (default h100)")
    p.add_argument("--measure", action="store_true", help="--estimate from a few timed training steps of each cell "
                   "(and teacher to train) on --device instead (minutes)")
    p.add_argument("--device", default="auto", help="--measure's device: auto (CUDA when present), cpu, cuda, cuda:N")

    p = sub.add_parser("run", parents=common, help="train and track one cell (or a suite)",
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
    p.add_argument("--with-method", action="append", metavar="METHOD", help="with --suite: also METHOD on every "
                   "pair of the suite where it can run, beside the suite's methods (repeatable)")
    p.add_argument("--register", metavar="NAME", help="register each trained student in MLflow's model registry")
    add_flags(p)
    launch.add_arguments(p)

    p = sub.add_parser("teacher", parents=common, help="train and cache a teacher, or import a published one",
                       description="Train (or find cached) the teacher DATASET/MODEL with the dataset's teacher recipe; "
                       "with --import, take a trained file instead (checked, evaluated on the test split, cached "
                       "where runs look for this teacher, recorded as an MLflow teacher run tagged imported).")
    p.add_argument("target", metavar="DATASET/MODEL")
    p.add_argument("--seed", type=int, default=0, help="the teacher's seed")
    p.add_argument("--epochs", type=int, help="override the teacher recipe's epochs")
    p.add_argument("--suite", help="the teacher of this suite's cells (its teacher recipe applies)")
    p.add_argument("--import", dest="import_file", metavar="FILE", help="a RepDistiller/mdistiller checkpoint, a "
                   "torchvision/timm state dict or a safetensors file to use as this teacher (nothing is downloaded)")
    p.add_argument("--accept-accuracy", action="store_true", help="cache an import off its stated top-1 (else refused)")
    add_flags(p)

    p = sub.add_parser("sweep", parents=common, help="tune a cell's hyperparameters with Optuna on the validation split",
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
    p.add_argument("--sampler-seed", type=int, default=0,
                   help="trial n draws from a generator seeded by (this, n): a fresh study repeats, a resumed or "
                   "shared one draws new points")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    p.add_argument("--storage", help="Optuna storage: a SQLAlchemy URL or journal:PATH "
                   "(default: sqlite:///HOME/optuna.db)")
    p.add_argument("--study", help="study name (default: sweep-CELL-HASH, HASH naming the objective: recipe and "
                   "epochs, options that change results, search space, grid); a study made for another "
                   "objective is refused")
    p.add_argument("--final-seeds", type=int, default=0,
                   help="then retrain the best configuration on train+val over N seeds and report test accuracy")
    p.add_argument("--seed", type=int, default=0, help="the trials' training seed")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    add_flags(p)
    launch.add_arguments(p)

    p = sub.add_parser("bench", parents=common, help="time the harness against a bare loop, and every method's step",
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
    p.add_argument("--folder-images", type=int, metavar="N",
                   help="also time the image-folder input path (ImageNet's) on N synthetic JPEGs: images/s in "
                   "steady state (N over 10 per loader worker: 40 batches per 4 the workers decode ahead)")
    add_flags(p)

    p = sub.add_parser("perf", parents=common, help="the standing speed record: bench every method under each speed "
                       "option, and each option's accuracy cost", description="Run it alone on the machine. Step times of "
                       "every method of each DATASET/PAIR under each option set, and one cell's test top-1 over "
                       "seeds under each option set against fp32 (Welch's t-test); Markdown. --teacher-epochs shortens the "
                       "bench's teachers only (a step time does not depend on them); the cell's teacher trains in full.")
    p.add_argument("--bench", nargs="+", metavar="DATASET/PAIR",
                   default=["mnist/resnet32-resnet14", "mnist/hinton1200-hinton800"])
    p.add_argument("--cell", default="mnist1k/hinton1200-hinton800/kd", help="the cell whose accuracy each option may cost")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--options", nargs="+", choices=list(SPEED_OPTION_SETS), default=list(SPEED_OPTION_SETS), metavar="SET",
                   help=f"option sets (default: all of {', '.join(SPEED_OPTION_SETS)}; amp-auto only where it picks bf16/fp16)")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", help="write the Markdown record to this file")
    add_flags(p)

    p = sub.add_parser("report", parents=common, help="comparison tables and plots from MLflow, beside the papers' numbers",
                       description="Render a suite's (or some cells') results: mean ± std over seeds, the paper's "
                       "number and the difference, cost columns; Markdown, HTML (with plots), LaTeX, CSV.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--suite")
    target.add_argument("--cells", nargs="+", metavar="CELL")
    p.add_argument("--format", choices=["md", "html", "latex", "csv"], default="md")
    p.add_argument("--out", help="a file for --format, or a directory (ending in /) for every format and the plots")
    p.add_argument("--departures", metavar="'none'|'epochs=N teacher_epochs=M'",
                   help="the recipe setting to show (cells are only compared at one; default: the one that "
                   "covers the most cells, then the recipe as stated)")
    reading.add_reading_options(p)
    p.add_argument("--with-method", action="append", metavar="METHOD", help="with --suite: METHOD's rows beside "
                   "the suite's, on every pair where it can run (repeatable)")
    p.add_argument("--configs", choices=["one", "all"], default="one",
                   help="per cell, one configuration (default: the suite's, else its defaults) or all of them side "
                   "by side, each --set variant a row of its own ('kd [kd.tau=3]')")

    p = sub.add_parser("audit", parents=common, help="test the papers' claims on our runs (Welch's t-test and TOST per claim)",
                       description="For every claim of the chosen suites (benchmarks.yaml, suites.*.claims), at "
                       "the paper's convention and at ours: our means ± std (n), the difference, Welch's and TOST's "
                       "p-values, Hedges' g and a verdict (confirmed, refuted, equivalent, inconclusive with the "
                       "seeds needed, diverged, not run), beside the paper's numbers; a forest plot per suite "
                       "beside --out.")
    p.add_argument("--suite", nargs="+", help="suites to audit (default: every suite with claims)")
    p.add_argument("--claim", action="append", metavar="'BETTER > THAN'",
                   help="an ad-hoc claim instead of a suite's, e.g. 'sp > kd' (methods of --cells' one dataset and "
                   "pair, or cell ids; repeatable)")
    p.add_argument("--cells", nargs="+", metavar="CELL", help="with --claim: the cells its methods name")
    p.add_argument("--out", help="write the Markdown audit to this file (each suite's forest plot beside it)")
    reading.add_reading_options(p)
    p.add_argument("--with-method", action="append", metavar="METHOD", help="with --suite: the claims 'METHOD > X' "
                   "for every method X of the suite on each of its pairs where METHOD can run, Holm-corrected with "
                   "the suite's (repeatable)")
    p.add_argument("--effect", type=float, metavar="D", help="the difference (accuracy points) that 'seeds needed' "
                   "and --seeds-plan size seeds for where a claim has no paper difference (ad-hoc, --with-method)")
    p.add_argument("--seeds-plan", action="store_true", help="with --suite: print the `harness run` commands "
                   "that would give each inconclusive claim the seeds its power figure needs, with their cost")
    p.add_argument("--departures", metavar="'none'|'epochs=N teacher_epochs=M'",
                   help="with --suite: audit the runs at this recipe setting (default: per suite, the report's rule)")

    ledgers.add_parsers(sub, common)

    p = sub.add_parser("clean", parents=common, help="remove the checkpoints of finished runs (disk only)",
                       description="A finished run keeps its last checkpoints until this removes them: it is "
                       "never resumed (skipped, or retrained from scratch with --force). Unfinished runs keep "
                       "theirs; cached teachers and the MLflow store are not touched.")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")

    with_method.add_card_parser(sub, common)
    new_method.add_parser(sub, common)

    p = sub.add_parser("ui", parents=common, help="start the MLflow UI on the runs store (127.0.0.1)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    return parser


def import_method(name, method):
    """An overlay's method class, imported to check it (torch loads only when an overlay adds a method)."""
    from methods import method_class

    return method_class(name, method)


def main(argv: list[str] | None = None) -> int:
    """The command's exit code; a reader that stops early (`harness list | head`) ends it quietly."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, where a closed pipe is caught, rather than at the interpreter's exit
        return code
    except BrokenPipeError:
        # nothing more can be written; point stdout at /dev/null so that the exit's flush fails no more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # what a shell reports for a command ended by a closed pipe


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # a launcher hands the same command to its workers
    warnings.filterwarnings("ignore", module="mlflow")
    try:
        from harness.spec.spec import load_spec

        spec = load_spec(args.spec, args.spec_extra, check=import_method)
        home = runs_home(args.home)
        if getattr(args, "with_method", None):
            spec = with_method.with_methods(spec, with_method.suites_of(args), args.with_method, home)
        if args.command == "new-method":
            return new_method.command_new_method(args, spec)
        if args.command == "list":  # validates the methods' defaults unless its cache knows every listed cell
            return commands.command_list(args, spec, home)
        from harness.tracking.tracking import default_tracking_uri

        tracking_uri = args.tracking_uri or default_tracking_uri(home)
        # runs known FINISHED under this very spec and code (validated then): no torch, no MLflow
        if args.command == "run" and commands.answer_if_finished(args, spec, home, tracking_uri):
            return 0
        from methods import validate_defaults

        validate_defaults(spec)
        if args.command in store_commands.WITHOUT_TRAINING:
            return store_commands.without_training(args, spec, home, tracking_uri)
        if args.command == "card":
            return with_method.command_card(args, spec, home, reading.runs_source(args, tracking_uri))
        from harness.training import distributed

        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.command not in ("run", "teacher"):
            raise UserError(f"torchrun runs `harness run` and `harness teacher`, not `harness {args.command}`")
        context = distributed.from_environment(getattr(args, "device", "auto"))
        if not context.is_main:  # rank 0 speaks for all
            sys.stdout = open(os.devnull, "w")
        from harness.running.runner import Runner

        runner = Runner(spec, home, tracking_uri, context)
        from harness.commands.teachers import command_teacher

        training = {"run": commands.command_run, "teacher": command_teacher,
                    "sweep": commands.command_sweep, "bench": commands.command_bench, "perf": commands.command_perf}
        try:
            return training[args.command](args, spec, runner)
        finally:
            distributed.shutdown()
    except UserError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        from harness.training.monitor import Interrupted

        if not isinstance(e, Interrupted):
            raise
        again = "the same command without --force" if getattr(args, "force", False) else "the same command"
        print(f"harness: interrupted: {e}; run {again} again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        from harness.running.lifecycle import TrainingFailed

        if isinstance(e, TrainingFailed):
            print(f"harness: training failed: {e}", file=sys.stderr)
            return 1
        raise
