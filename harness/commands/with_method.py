"""`--with-method M` on run, report and audit: a suite with M beside its own methods.

On each setting (DATASET/TEACHER-STUDENT) of the suite's cells where M can run (the methods' own
set-up checks, as `harness list` decides), the suite gains the cell of M and the claim "M > X" for
every other method X of the suite on that setting (on a setting where the suite has M already, only the
claims). The suite's recipes and conventions apply to
them, and the audit's Holm correction runs over the suite's claims and these together.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.commands.reading import add_reading_options
from harness.errors import UserError
from harness.spec.cells import Cell, require_known
from harness.spec.schema import Claim


def with_methods(spec, suites: list[str], methods: list[str], home: Path):
    """The spec whose `suites` have each of `methods` beside their own (see the module's docstring)."""
    from harness.running.compat import mismatches

    if not suites:
        raise UserError("--with-method needs --suite: it puts a method through a suite's pairs")
    for method in methods:
        require_known(method, spec.methods, "method")
    changed = {}
    for name in suites:
        require_known(name, spec.suites, "suite")
        suite = spec.suites[name]
        settings = {}  # setting -> the suite's methods on it, in the suite's order
        for cell in map(spec.cell, suite.cells):
            settings.setdefault(f"{cell.dataset}/{cell.pair}", []).append(cell.method)
        candidates = [Cell(*setting.split("/"), method) for method in methods for setting in settings
                      if method not in settings[setting]]
        verdicts = mismatches(spec, candidates, home)
        added = [cell for cell in candidates if verdicts[cell.id] is None]
        for cell in candidates:
            if verdicts[cell.id] is not None:
                print(f"harness: --with-method: {cell.id} cannot run ({verdicts[cell.id]}); left out", file=sys.stderr)
        # a method the suite already has on a setting gets its claims there too: a card of a suite's own method
        present = [Cell(*setting.split("/"), method) for method in methods for setting in settings
                   if method in settings[setting] and len(settings[setting]) > 1]
        claims = [Claim(better=cell.method, than=[m for m in settings[f"{cell.dataset}/{cell.pair}"] if m != cell.method],
                        setting=f"{cell.dataset}/{cell.pair}", source=f"--with-method {cell.method}")
                  for cell in added + present]
        changed[name] = suite.model_copy(update={"cells": suite.cells + [cell.id for cell in added],
                                                 "claims": suite.claims + claims})
    return spec.model_copy(update={"suites": spec.suites | changed})


def suites_of(args) -> list[str]:
    """The suites `--with-method` applies to: --suite's (a name on run and report, a list on audit)."""
    return [args.suite] if isinstance(args.suite, str) else args.suite or []


def command_card(args, spec, home: Path, tracking_uri: str) -> int:
    """`harness card M --out DIR`: M's report card over --suite's suites, else over the suites M's finished
    runs were made for (`harness run --suite S --with-method M`; harness/results/card.py)."""
    from harness.results import card
    from harness.tracking.queries import student_results

    require_known(args.method, spec.methods, "method")
    suites = args.suite
    if not suites:
        runs = student_results(tracking_uri)
        mine = runs[runs["tags.cell"].str.endswith(f"/{args.method}") & ~runs["diverged"]
                    & (args.include_smoke | (runs["tags.smoke"] != "True"))]
        suites = [name for name in spec.suites if name in set(mine["tags.suite"].fillna(""))]
    if not suites:
        raise UserError(f"no finished run of {args.method} was made for a suite; run `harness run --suite S "
                        f"--with-method {args.method}`, or name --suite (with --include-smoke for smoke runs)")
    spec = with_methods(spec, suites, [args.method], home)
    built = card.build(spec, tracking_uri, args.method, suites, args.select, args.include_smoke)
    print(f"wrote {', '.join(str(path) for path in card.write(built, Path(args.out)))}")
    return 0


def add_card_parser(sub, parents: list) -> None:
    p = sub.add_parser("card", parents=parents, help="a method's report card: verdicts, Δ vs KD and the student, cost")
    p.add_argument("method", metavar="METHOD")
    p.add_argument("--out", required=True, help="a directory: METHOD.md, METHOD.html, METHOD-cost.png")
    p.add_argument("--suite", nargs="+", help="the suites (default: those METHOD's finished runs were made for)")
    add_reading_options(p)  # --select, --include-smoke, --from LEDGER...
