"""`harness audit --seeds-plan`: the `harness run` commands that would give each inconclusive claim
the seeds a side its power figure asks for (harness/results/stats.py: seeds_needed), with their cost estimated
from the runs so far (median of mean_epoch_seconds × epochs per cell; students only, teachers are cached).

A cell runs on its own (`--cell`) unless its suite changes it (a suite recipe, or an override of one of
its methods): then only `--suite` reproduces the configuration, and the command runs every cell of the
suite to that many seeds (finished seeds are skipped). A cell whose runs were retrained from a sweep
(train + validation, the study's best hyperparameters) is not what `harness run` trains: the plan
says so instead of printing a command. A command two suites share is printed (and costed) once."""

from __future__ import annotations

import math

import pandas as pd

from harness.results import budgets
from harness.results.audit import Audit
from harness.results.configurations import RECIPE_DEPARTURES
from harness.results.stats import ALPHA, MAX_SEEDS, POWER
from harness.spec.cells import method_parts
from harness.spec.spec import Spec


def targets(group: pd.DataFrame) -> dict[str, int]:
    """cell -> the most seeds any of its inconclusive claims needs."""
    out: dict[str, int] = {}
    for _, r in group[group["verdict"] == "inconclusive"].dropna(subset=["seeds_needed"]).iterrows():
        for cell in (r.better, r.than):
            out[cell] = max(out.get(cell, 0), int(r.seeds_needed))
    return out


def suite_bound(spec: Spec, suite: str, cell: str) -> bool:
    """Whether only `harness run --suite` reproduces the cell's configuration in this suite."""
    s = spec.suites[suite]
    return bool(s.recipe or s.teacher_recipe or set(s.overrides) & set(method_parts(cell.split("/")[2])))


def flags(frames: list[pd.DataFrame]) -> str:
    """The runs' departures (their `overrides` tags) as `harness run` flags: --set, --epochs, --teacher-epochs."""
    items = sorted({i for runs in frames if len(runs) for i in runs["overrides"].iloc[0].split()})
    recipe = [f"--{k.replace('_', '-')} {v}" for k, v in (i.split("=", 1) for i in items) if k in RECIPE_DEPARTURES]
    return " ".join([f"--set {i}" for i in items if i.split("=", 1)[0] not in RECIPE_DEPARTURES] + recipe)


def missing(runs: pd.DataFrame, n: int) -> int:
    """Seeds of 0..n-1 (what `--seeds n` runs) that the cell has no run of."""
    have = set(pd.to_numeric(runs["tags.seed"]).astype(int)) if len(runs) else set()
    return len(set(range(n)) - have)


def epoch_cost(runs: pd.DataFrame) -> float:
    """Seconds per student run: median over the finished runs of mean_epoch_seconds × epochs (NaN: no runs)."""
    done = runs[~runs["diverged"]] if len(runs) else runs
    if done.empty:
        return float("nan")
    return float((done["metrics.mean_epoch_seconds"].astype(float)
                  * pd.to_numeric(done["params.recipe.epochs"])).median())


def duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "unknown (no finished run to time)"
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def _claim_lines(group: pd.DataFrame) -> list[str]:
    lines = []
    for _, r in group[group["verdict"] == "inconclusive"].iterrows():
        need = f"{int(r.seeds_needed)} seeds a side" if not pd.isna(r.seeds_needed) else \
            f"not planned (no paper Δ nor --effect, or no spread to size it, or more than {MAX_SEEDS} seeds a side)"
        target = f"paper Δ {r.paper_diff:+.2f}" if not pd.isna(r.paper_diff) else f"--effect {r.planned_for:+.2f}"
        lines.append(f"#   {r.claim} ({r.metric}) {r.setting}: {target}, our pooled std "
                     f"{r.pooled_std:.3f}, now {r.n_better}/{r.n_than} seeds: {need}")
    return lines


def _of(runs: pd.DataFrame, cell: str) -> pd.DataFrame:
    return runs[runs["tags.cell"] == cell] if not runs.empty else runs


def command(target: str, seeds: dict[str, int], runs: pd.DataFrame) -> tuple[str, float]:
    """The `harness run` line that brings each cell of `seeds` to its count of seeds, with the number
    of runs it adds and their cost as a comment; and that cost (NaN where a cell has no timed run)."""
    swept = sorted({s for cell in seeds for s in budgets.studies(_of(runs, cell))})
    if swept:
        return (f"# {target}: retrained from sweep {', '.join(swept)} (train + validation, its best trial), which "
                f"`harness run` does not reproduce: more seeds come from that sweep's --final-seeds "
                f"{max(seeds.values())}"), 0.0
    more = {cell: missing(_of(runs, cell), n) for cell, n in seeds.items()}
    if not any(more.values()):
        return f"# harness run {target}: already has the seeds asked for; the claim stays inconclusive", 0.0
    cost = sum(k * epoch_cost(_of(runs, cell)) for cell, k in more.items() if k)
    line = f"harness run {target} --seeds {max(seeds.values())} {flags([_of(runs, c) for c in seeds])}".rstrip()
    return f"{line}   # {sum(more.values())} more run(s), about {duration(cost)}", cost


def plan(result: Audit, spec: Spec) -> str:
    lines = [f"# Seeds plan: seeds a side for {POWER:.0%} power to detect the paper's difference (two-sided "
             f"two-sample t-test, alpha = {ALPHA}, our pooled std; noncentral t). Costs: students only."]
    costs, done = [], set()
    for suite, group in result.table.groupby("suite", sort=False):
        runs, need = result.by_suite[suite], targets(group)
        bound = {cell: n for cell, n in need.items() if suite_bound(spec, suite, cell)}
        commands = [(f"--cell {cell}", {cell: n}) for cell, n in need.items() if cell not in bound]
        if bound:  # the suite's command runs every cell of it, to the most seeds a bound cell needs
            commands.append((f"--suite {suite}", dict.fromkeys(spec.suites[suite].cells, max(bound.values()))))
        lines += ["", f"# {suite}"] + _claim_lines(group)
        for target, seeds in commands:
            line, cost = command(target, seeds, runs)
            lines.append(f"# as above: {line.lstrip('# ')}" if line in done else line)
            costs += [] if line in done else [cost]
            done.add(line)
    known = [c for c in costs if not math.isnan(c)]  # NaN: a cell without a timed run
    unknown = f"; {len(costs) - len(known)} command(s) with a cell not yet timed" if len(known) < len(costs) else ""
    return "\n".join(lines + ["", f"# total: about {duration(sum(known))} of student training{unknown}"]) + "\n"
