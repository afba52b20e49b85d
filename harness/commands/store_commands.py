"""The commands that only read the store, once their arguments are parsed (harness/cli.py):
`harness report` (tables, plots and the suite's claims as a forest plot) and `harness audit`."""

from __future__ import annotations

import shlex
from pathlib import Path

from harness.commands.reading import runs_source
from harness.errors import UserError
from harness.spec.cells import require_known


WITHOUT_TRAINING = ("report", "audit", "export", "import", "clean", "ui")


def without_training(args, spec, home: Path, tracking_uri: str) -> int:
    """The commands that read the store (or ledgers), or fill it from ledgers, and train nothing."""
    source = runs_source(args, tracking_uri)
    if args.command in ("report", "audit"):
        return (command_report if args.command == "report" else command_audit)(args, spec, source)
    if args.command in ("export", "import"):
        from harness.commands import ledgers

        if args.command == "export":
            return ledgers.command_export(args, spec, tracking_uri)
        return ledgers.command_import(args, spec, tracking_uri, home)
    if args.command == "clean":
        from harness.commands.clean import command_clean

        return command_clean(args, home, tracking_uri)
    from harness.commands.ui import command_ui

    return command_ui(args, tracking_uri, home)


def command_report(args, spec, tracking_uri: str) -> int:
    from harness.results import render
    from harness.results import report as rep
    from harness.results.plots import plots

    cells = None
    if args.cells:
        cells = [spec.cell(c).id for c in args.cells]
    elif args.suite:
        require_known(args.suite, spec.suites, "suite")
    if args.out and not args.out.endswith("/") and not Path(args.out).is_dir() \
            and not Path(args.out).parent.is_dir():
        raise UserError(f"cannot write {args.out}: {Path(args.out).parent} is not a directory")
    result = rep.build(spec, tracking_uri, args.suite, cells, args.select, args.include_smoke, args.departures,
                       args.configs == "all")
    forest = claims_plot(args, spec, tracking_uri)
    if args.out and (args.out.endswith("/") or Path(args.out).is_dir()):
        images = render.write_directory(result, Path(args.out), shlex.join(["harness", *args.argv]), forest)
        print(f"wrote {Path(args.out)}/report.{{md,html,tex,csv}}, runs.md and {', '.join(images)}")
        return 0
    text = render.render(result, args.format, plots(result) | forest if args.format == "html" else None)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def claims_plot(args, spec, tracking_uri: str) -> dict[str, bytes]:
    """{'claims-forest.png': the forest plot of the reported suite's claims}, or {} without claims."""
    if not args.suite or not spec.suites[args.suite].claims:
        return {}
    from harness.results import audit
    from harness.results import audit_render

    result = audit.audit(spec, tracking_uri, [args.suite], args.select, args.include_smoke, args.departures)
    return {"claims-forest.png": audit_render.forests(result)[args.suite]}


ADHOC = "ad-hoc"  # the suite `harness audit --claim` makes of its claims


def adhoc_claims(spec, claims: list[str], cells: list[str] | None):
    """The spec with a suite ADHOC of the --claim 'BETTER > THAN[, THAN...]' comparisons: cell ids, or
    methods of the one dataset and pair of `cells`; its cells are `cells`, else those the claims name."""
    from harness.spec.schema import Claim, SuiteSpec

    ids = [spec.cell(c).id for c in cells or []]
    settings = {"/".join(c.split("/")[:2]) for c in ids}
    setting = next(iter(settings)) if len(settings) == 1 else None
    parsed = []
    for text in claims:
        better, sep, worse = (part.strip() for part in text.partition(">"))
        than = [w.strip() for w in worse.split(",")]
        if not sep or not better or not all(than):
            raise UserError(f"--claim {text!r}: expected 'BETTER > THAN', e.g. 'sp > kd' or 'sp > kd, baseline'")
        claim = Claim(better=better, than=than, setting=setting, source="--claim")
        for cell in dict.fromkeys(c for pair in claim.pairs() for c in pair):  # better first
            if "/" not in cell:
                raise UserError(f"--claim {text!r}: {cell!r} is a method; give --cells of one dataset and pair "
                                "(or write DATASET/TEACHER-STUDENT/METHOD in the claim)")
            spec.cell(cell)
            if ids and cell not in ids:
                raise UserError(f"--claim {text!r}: {cell} is not among --cells")
        parsed.append(claim)
    named = ids or sorted({c for claim in parsed for pair in claim.pairs() for c in pair})
    suite = SuiteSpec(title="Ad-hoc claims", source="harness audit --claim", cells=named, claims=parsed)
    return spec.model_copy(update={"suites": spec.suites | {ADHOC: suite}})


def command_audit(args, spec, tracking_uri: str) -> int:
    from harness.results import audit
    from harness.results import audit_render
    from harness.results import seeds_plan

    if args.cells and not args.claim:
        raise UserError("--cells goes with --claim (the claims to test on them)")
    if args.claim and args.suite:
        raise UserError("--claim tests its own claims on --cells; a --suite brings its own claims")
    if args.claim:
        spec = adhoc_claims(spec, args.claim, args.cells)
    suites = [ADHOC] if args.claim else args.suite or [name for name, suite in spec.suites.items() if suite.claims]
    if args.departures is not None and not (args.suite or args.claim):
        raise UserError("--departures needs --suite (or --claim): a recipe setting and its runs belong to the "
                        "suites that ran them")
    if args.seeds_plan and not args.suite:
        raise UserError("--seeds-plan needs --suite: its commands run a suite's cells")
    for name in suites:
        require_known(name, spec.suites, "suite")
        if not spec.suites[name].claims:
            raise UserError(f"suite {name!r} lists no claims to audit")
    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise UserError(f"cannot write {out}: {out.parent} is not a directory")
    if args.effect is not None and not args.effect > 0:
        raise UserError(f"--effect is a positive difference in accuracy points, got {args.effect}")
    result = audit.audit(spec, tracking_uri, suites, args.select, args.include_smoke, args.departures, args.effect)
    caption = audit_render.caption(result, args.select, shlex.join(["harness", *args.argv]))
    if args.seeds_plan:
        text = seeds_plan.plan(result, spec)
    elif out is not None:  # the Markdown and each suite's forest plot beside it
        print(f"wrote {', '.join(str(f) for f in audit_render.write(result, out, 'Claims audit', caption))}")
        return 0
    else:
        text = audit_render.render_markdown(result, "Claims audit", caption)
    if out is None:
        print(text)
    else:
        out.write_text(text)
        print(f"wrote {out}")
    return 0
