"""`harness export` and `harness import`: runs out of a store into a run ledger, and ledgers into a
store (docs/ledger.md). The ledger's format and checks: harness/tracking/ledger.py; the MLflow side:
harness/tracking/transfer.py."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from harness.errors import UserError
from harness.spec.cells import require_known
from harness.tracking import ledger as ledger_format
from harness.tracking.ledger import sha256_of


def add_parsers(sub, common: list) -> None:
    """`harness export` and `harness import`."""
    p = sub.add_parser("export", parents=common, help="write runs of the store to a run ledger (docs/ledger.md)",
                       description="Finished and failed runs (students; the teacher runs they distilled from and the "
                       "sweep runs that tuned them go with them) as a run ledger: JSON Lines with a manifest and "
                       "its sha256. The same runs always give the same bytes.")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--suite", help="the runs of a suite's cells")
    target.add_argument("--cells", nargs="+", metavar="CELL")
    target.add_argument("--runs", nargs="+", metavar="RUN_ID", help="these MLflow runs (any role)")
    p.add_argument("--out", required=True, help="the ledger file to write, e.g. results/digits/runs.jsonl")
    p.add_argument("--with-teachers", action="store_true", help="also copy the cached teacher weights the "
                   "runs distilled from into OUT.teachers/ (their sha256 in the manifest)")
    p.add_argument("--with-trials", action="store_true", help="also the sweep trials' runs of the cells")

    p = sub.add_parser("import", parents=common, help="merge run ledgers into the store",
                       description="Adds each ledger's runs to the store, tagged with their origin. Importing twice "
                       "adds nothing; a run the store has with other results is reported and skipped (exit 1), "
                       "or kept beside it with --keep-both. Every ledger is checked before anything is written.")
    p.add_argument("files", nargs="+", metavar="LEDGER")
    p.add_argument("--keep-both", action="store_true", help="keep a conflicting record beside the store's run")


def command_export(args, spec, tracking_uri: str) -> int:
    cells = None
    if args.suite:
        require_known(args.suite, spec.suites, "suite")
        cells = list(spec.suites[args.suite].cells)
    elif args.cells:
        cells = [spec.cell(c).id for c in args.cells]
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: {out.parent} is not a directory")
    from harness.tracking.transfer import export_records

    exported = export_records(tracking_uri, cells, args.runs, args.with_trials)
    if not any(r["tags"].get("role") in ("student", "trial") for r in exported.records) and not args.runs:
        raise UserError(f"the store {tracking_uri} has no finished or failed runs of "
                        f"{'suite ' + args.suite if args.suite else 'these cells' if cells else 'any cell'}")
    teacher_files = {}
    if args.with_teachers:
        folder = out.with_name(out.name + ledger_format.TEACHERS_SUFFIX)
        folder.mkdir(exist_ok=True)
        for source in map(Path, exported.teacher_files):
            if not source.is_file():
                raise UserError(f"--with-teachers: the cached teacher {source} is not on this machine")
            shutil.copyfile(source, folder / source.name)
            teacher_files[source.name] = sha256_of(folder / source.name)
    manifest = ledger_format.write(out, exported.records, teacher_files)
    counts = ", ".join(f"{n} {role}" for role, n in manifest["records"].items())
    size = out.stat().st_size
    print(f"wrote {out}: {counts} runs, {size:,} bytes ({size // max(len(exported.records), 1):,} per run)"
          + (f"; {len(teacher_files)} teacher files in {out.name}{ledger_format.TEACHERS_SUFFIX}/" if teacher_files else ""))
    return 0


def check_names(spec, ledgers: list) -> None:
    """Every cell, dataset and model a ledger names must be one this benchmarks.yaml knows."""
    for led in ledgers:
        for record in led.records:
            tags = record["tags"]
            try:
                if tags.get("cell"):
                    spec.cell(tags["cell"])
                elif tags.get("role") == "teacher":
                    require_known(tags.get("dataset"), spec.datasets, "dataset")
                    require_known(tags.get("model"), spec.models, "model")
            except UserError as e:
                raise UserError(f"{led.path}: {e} (run {record['run_id']})") from None


def teacher_copies(ledgers: list, home: Path) -> list[tuple[Path, Path]]:
    """(source, destination in this runs home) for each teacher file the ledgers carry, checked."""
    copies = []
    for led in ledgers:
        folder = led.path.with_name(led.path.name + ledger_format.TEACHERS_SUFFIX)
        for name, digest in led.manifest.get("teacher_files", {}).items():
            source = folder / name
            if not source.is_file():
                raise UserError(f"{led.path}: its teacher file {source} is missing")
            if sha256_of(source) != digest:
                raise UserError(f"{led.path}: the teacher file {source} does not match its sha256")
            copies.append((source, home / "teachers" / name))
    return copies


def command_import(args, spec, tracking_uri: str, home: Path) -> int:
    ledgers = ledger_format.read_all(args.files)  # every check before anything is written
    check_names(spec, ledgers)
    copies = teacher_copies(ledgers, home)
    from harness.tracking.transfer import import_records

    outcome = import_records(tracking_uri, ledgers, args.keep_both)
    for source, destination in copies:
        if destination.exists() and sha256_of(destination) != sha256_of(source):
            print(f"kept this home's teacher {destination} (it differs from {source})")
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    for line in outcome.conflicts:
        print(f"conflict: {line}: {'kept both' if args.keep_both else 'skipped (--keep-both keeps both)'}",
              file=sys.stderr)
    print(f"imported {len(outcome.added)} runs into {tracking_uri}; {len(outcome.present)} already there"
          + (f"; {len(outcome.conflicts)} conflicts" if outcome.conflicts else "")
          + (f"; {len(copies)} teacher files" if copies else "") + f" ({outcome.seconds:.1f} s)")
    return 1 if outcome.conflicts and not args.keep_both else 0  # a skipped conflict is not a clean import
