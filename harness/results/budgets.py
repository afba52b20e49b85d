"""Tuning hygiene of a claim: a side retrained from a `harness sweep` study (its runs tagged
`from_sweep=STUDY` by the sweep's --final-seeds) had its hyperparameters tuned with the study's
trial budget (complete + pruned + failed trials, counted on the study's parent run); a claim whose
sides had unequal budgets (one tuned and the other not, or tuned with fewer trials) is flagged, since
tuning alone can buy the difference."""

from __future__ import annotations

import pandas as pd


def studies(runs: pd.DataFrame) -> list[str]:
    """The sweep studies the runs were retrained from."""
    if runs.empty or "tags.from_sweep" not in runs:
        return []
    return sorted(set(runs["tags.from_sweep"].dropna()) - {""})


def budget(runs: pd.DataFrame, trials: dict[str, int]) -> tuple[str, int | None] | None:
    """None when no run of the side came from a sweep; else (its studies, the largest trial budget
    among them, None when no parent run in the store counted it)."""
    found = studies(runs)
    if not found:
        return None
    counts = [trials[s] for s in found if s in trials]
    return ", ".join(found), max(counts) if counts else None


def _side(name: str, tuned: tuple[str, int | None] | None) -> str:
    if tuned is None:
        return f"{name} not tuned"
    study, count = tuned
    return f"{name} tuned by sweep {study} ({count if count is not None else 'unknown'} trials)"


def flag(better: pd.DataFrame, worse: pd.DataFrame, trials: dict[str, int]) -> str:
    """'' when both sides were tuned alike (neither swept, or swept with the same known budget); else
    what each side had, e.g. 'better side tuned by sweep s (20 trials); other side not tuned'."""
    sides = budget(better, trials), budget(worse, trials)
    if sides[0] is None and sides[1] is None:
        return ""
    if sides[0] is not None and sides[1] is not None and sides[0][1] is not None and sides[0][1] == sides[1][1]:
        return ""
    return f"{_side('better side', sides[0])}; {_side('other side', sides[1])}"
