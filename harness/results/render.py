"""A built Report (harness/results/report.py) as Markdown, HTML with plots, LaTeX or CSV, and its provenance."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.results.commits import commits, dirty_note
from harness.results.plots import plots
from harness.results.report import FORMATS, Report, collapse_note, fmt

DETAIL_COLUMNS = {"cell": "cell", "n": "n", "top1": "top-1", "top5": "top-5", "top1_paper": "paper top-1",
                  "top1_delta": "Δ top-1", "top1_vs_student": "Δ vs student", "top1_z": "z", "sec_per_epoch": "s/epoch (median)", "extra_parameters": "extra params",
                  "student_parameters": "student params", "peak_memory_mb": "peak MB", "epochs": "epochs",
                  "top1_at_paper": "top-1 at the paper's convention", "top1_convention": "the paper's convention"}


def detail_table(report: Report) -> pd.DataFrame:
    d = report.detail
    frame = pd.DataFrame({
        "cell": d["cell"], "n": d["n"],
        "top1": [fmt(m, s, n, k) + collapse_note(c, s)
                 for m, s, n, k, c in zip(d.top1_mean, d.top1_std, d.n, d.diverged, d.near_chance)],
        "top5": [fmt(m, s, n, k) for m, s, n, k in zip(d.top5_mean, d.top5_std, d.n, d.diverged)],
        "top1_vs_student": [f"{v:+.2f}" if not math.isnan(v) and m != "baseline" else ""
                            for v, m in zip(d.top1_vs_student, d.method)],
        "top1_paper": [f"{v:.2f}" if not math.isnan(v) else "" for v in d.top1_paper],
        "top1_delta": [(f"{v:+.2f}" + ("*" if f else "")) if not math.isnan(v) else ""
                       for v, f in zip(d.top1_delta, d.top1_flag)],
        "top1_z": [f"{v:+.1f}" if not math.isnan(v) else "" for v in d.top1_z],
        "sec_per_epoch": [(f"{v:.2f}" + (" †" if loaded else "")) if not math.isnan(v) else ""
                          for v, loaded in zip(d.sec_per_epoch, d.cost_under_load)],
        "extra_parameters": [f"{int(v):,}" if not math.isnan(v) else "" for v in d.extra_parameters],
        "student_parameters": [f"{int(v):,}" if not math.isnan(v) else "" for v in d.student_parameters],
        "peak_memory_mb": [f"{v:.0f}" if not math.isnan(v) else "" for v in d.peak_memory_mb],
        "epochs": d["epochs"],
    })
    if d["top1_convention"].astype(bool).any():  # some paper's convention is not our figure: show both
        frame.insert(4, "top1_at_paper", [f"{v:.2f}" if not math.isnan(v) else "n/a" if n else ""
                                          for v, n in zip(d.top1_at_paper, d.n)])
        frame.insert(5, "top1_convention", d["top1_convention"].replace("", "as ours"))
    return frame.rename(columns=DETAIL_COLUMNS)


def provenance(report: Report, command: str) -> str:
    """Which runs made the tables: ids, commits, hardware, wall time; the command that rendered them."""
    runs = report.runs.sort_values(["tags.cell", "tags.seed"])
    start, end = runs["start_time"].min(), runs["end_time"].max()
    wall = runs["metrics.wall_seconds"].astype(float).sum()
    lines = [f"# Provenance: {report.title}", "",
             f"Rendered by `{command}` from the MLflow runs below (FINISHED student runs and those that "
             "diverged, latest per cell and seed).", "",
             f"- Git commit(s) of the runs: {', '.join(sorted(set(commits(runs, 40))))}",
             *(f"- {note}" for note in dirty_note(runs)),
             f"- Hardware: {', '.join(sorted(set(runs['params.env.device_name'])))} "
             f"(device {', '.join(sorted(set(runs['params.env.device'])))}, torch {', '.join(sorted(set(runs['params.env.torch'])))})",
             f"- Runs started {start:%Y-%m-%d %H:%M} UTC, last finished {end:%Y-%m-%d %H:%M} UTC; "
             f"summed training wall time {wall / 60:.1f} min (teachers not included)",
             "", "| cell | seed | MLflow run id | commit | test top-1 (last) | wall s |", "| --- | --- | --- | --- | --- | --- |"]
    for (_, r), commit in zip(runs.iterrows(), commits(runs)):
        top1 = (f"diverged: {r['tags.failure_term']} non-finite at epoch {r['tags.failure_epoch']}" if r["diverged"]
                else f"{float(r['metrics.test_top1_last']):.2f}")
        wall = float(r["metrics.wall_seconds"])
        lines.append(f"| {r['tags.cell']} | {r['tags.seed']} | {r['run_id']} | {commit} | "
                     f"{top1} | {'' if math.isnan(wall) else f'{wall:.0f}'} |")
    return "\n".join(lines) + "\n"


LATEX_SYMBOLS = {"±": r"$\pm$", "Δ": r"$\Delta$", "†": r"$\dagger$", "−": "-", "·": r"$\cdot$", "σ": r"$\sigma$",
                 "→": r"$\to$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$"}


def latex_symbols(text: str) -> str:
    """Our tables' Unicode symbols as LaTeX math, so that pdflatex compiles the output as it is."""
    for symbol, latex in LATEX_SYMBOLS.items():
        text = text.replace(symbol, latex)
    return text


def render(report: Report, fmt: str, images: dict[str, bytes] | None = None) -> str:
    details = detail_table(report)
    notes = "".join(f"- {n}\n" for n in report.notes)
    if fmt == "md":
        return (f"# {report.title}\n\n{report.caption}\n\n{report.table.to_markdown()}\n\n"
                f"## Per cell\n\n{details.to_markdown(index=False)}\n" + (f"\n## Notes\n\n{notes}" if notes else ""))
    if fmt == "csv":
        return report.detail.to_csv(index=False)
    if fmt == "latex":
        body = report.table.reset_index().to_latex(index=False, escape=True)
        comments = "".join(f"% {n}\n" for n in report.notes)
        return latex_symbols(f"% {report.title}\n% {report.caption}\n{comments}{body}\n"
                             f"{details.to_latex(index=False, escape=True)}")
    if fmt == "html":
        figures = "".join(
            f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>'
            for name, png in (images or {}).items())
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
                "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
                "td,th{border:1px solid #ccc;padding:4px 8px}figure{display:inline-block;margin:1em}</style>"
                f"</head><body><h1>{html.escape(report.title)}</h1><p>{html.escape(report.caption)}</p>"
                f"{report.table.reset_index().to_html(index=False)}<h2>Per cell</h2>{details.to_html(index=False)}"
                + ("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>"
                   if report.notes else "") + f"{figures}</body></html>")
    raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def write_directory(report: Report, out: Path, command: str, extra: dict[str, bytes] | None = None) -> list[str]:
    """Every format, the plots (and `extra` ones, such as the claims' forest plot) and runs.md (the
    provenance) into `out`; the plots' names."""
    out.mkdir(parents=True, exist_ok=True)
    images = plots(report) | (extra or {})
    for name, png in images.items():
        (out / name).write_bytes(png)
    for form, ext in (("md", "md"), ("html", "html"), ("latex", "tex"), ("csv", "csv")):
        (out / f"report.{ext}").write_text(render(report, form, images))
    (out / "runs.md").write_text(provenance(report, command))
    return list(images)
