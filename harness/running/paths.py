"""Where things live: the runs home and the datasets' root."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from harness.errors import UserError


def runs_home(cli_home: str | None) -> Path:
    """--home, else $KD_HARNESS_HOME, else a per-user data directory (created)."""
    home = cli_home or os.environ.get("KD_HARNESS_HOME") or platformdirs.user_data_dir("kd-harness")
    home = Path(home).expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the runs home {home}: {e.strerror}") from None
    return home


def data_root(cli_root: str | None) -> Path:
    """--data-root, else $KD_HARNESS_DATA, else a per-user cache directory."""
    root = cli_root or os.environ.get("KD_HARNESS_DATA") or platformdirs.user_cache_dir("kd-harness") + "/data"
    return Path(root).expanduser()
