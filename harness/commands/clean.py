"""`harness clean`: the disk a finished run no longer needs.

Policy: a run keeps its checkpoints (the last two, HOME/runs/KEY/checkpoints) while it may still be
resumed, and after it FINISHED too, until `harness clean` removes them: a finished run is never
resumed (it is skipped, and `--force` starts a new run from scratch), so its checkpoints are only
disk (about 20 MB for an MNIST MLP run). Unfinished runs (interrupted, failed, running) keep theirs.
Cached teachers (HOME/teachers), the MLflow store and its artifacts are never touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.tracking.tracking import finished_run_keys


def finished_checkpoints(home: Path, tracking_uri: str) -> tuple[list[Path], int]:
    """The checkpoint folders of runs whose newest run is FINISHED, and how many folders are kept."""
    folders = sorted(p for p in (home / "runs").glob("*/checkpoints") if p.is_dir())
    if not folders:
        return [], 0
    finished = finished_run_keys(tracking_uri)
    done = [p for p in folders if p.parent.name in finished]
    return done, len(folders) - len(done)


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def command_clean(args, home: Path, tracking_uri: str) -> int:
    done, kept = finished_checkpoints(home, tracking_uri)
    freed = sum(size(p) for p in done)
    verb = "would remove" if args.dry_run else "removed"
    for folder in done if not args.dry_run else ():
        shutil.rmtree(folder)
    print(f"{verb} the checkpoints of {len(done)} finished runs ({freed / 1e6:.1f} MB); kept those of {kept} "
          f"unfinished runs (resumable); cached teachers and the MLflow store are not touched")
    return 0
