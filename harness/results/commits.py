"""How reports and the audit name the code a run ran: its commit id, marked where the code had
uncommitted changes (the run's env.git_dirty, harness/tracking/provenance.py)."""

from __future__ import annotations

import pandas as pd


def commits(runs: pd.DataFrame, length: int = 10) -> pd.Series:
    """Each run's commit id, marked '+dirty' where the run's code had uncommitted changes
    (env.git_dirty): the bare id would name code that did not run."""
    commit = runs["params.env.git_commit"].fillna("unknown").str[:length]
    dirty = runs.get("params.env.git_dirty", pd.Series("", index=runs.index)) == "True"  # not logged: not known dirty
    return commit.where(~dirty, commit + "+dirty")


def dirty_note(runs: pd.DataFrame) -> list[str]:
    """A note when some runs ran uncommitted code, which no commit id can name."""
    dirty = int(commits(runs).str.endswith("+dirty").sum())
    return [f"{dirty} of {len(runs)} runs ran uncommitted code (commit shown as ID+dirty): no commit holds the "
            "code they ran, so rerunning that commit may not reproduce them"] if dirty else []
