"""`harness list` as a map: the suites with their titles and sizes (`--suites`), and per cell its
finished seeds in the store and whether its dataset is on disk (`--status`). Read without torch or
MLflow on a SQLite store (MLflow's own tables through sqlite3, as harness/running/noop.py does)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from harness.spec.cells import method_parts
from harness.spec.schema import DatasetSpec
from harness.spec.spec import Spec

# what torchvision's dataset classes look for under the data root
TORCHVISION_FILES = {"torchvision_mnist": "MNIST/raw/train-images-idx3-ubyte",
                     "torchvision_cifar10": "cifar-10-batches-py/data_batch_1",
                     "torchvision_cifar100": "cifar-100-python/train"}


def data_file(spec: DatasetSpec, root: Path) -> Path | None:
    """The file or folder whose presence says the dataset can be read (None: embedded, always there)."""
    if spec.source == "sklearn_digits":
        return None
    if spec.source == "imagefolder":
        return root / spec.folder / "train"
    return root / TORCHVISION_FILES[spec.source]


def suite_lines(spec: Spec) -> list[str]:
    """'digits  7 cells, 0 claims  Embedded digits: ...', one line per suite."""
    width = max(len(name) for name in spec.suites)
    return [f"{name:<{width}}  {len(suite.cells):>3} cells, {sum(len(c.pairs()) for c in suite.claims):>2} claims  "
            f"{suite.title}" for name, suite in spec.suites.items()]


def finished_seeds(tracking_uri: str) -> dict[str, list[int]]:
    """cell -> the seeds of its FINISHED student runs in the store (--smoke runs left out)."""
    from harness.tracking.tracking import EXPERIMENT

    if not tracking_uri.startswith("sqlite:///"):
        from harness.tracking.queries import student_results

        runs = student_results(tracking_uri)
        runs = runs[~runs["diverged"] & (runs["tags.smoke"] != "True")]
        pairs = list(zip(runs["tags.cell"], runs["tags.seed"]))
    else:
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.exists():
            return {}
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            pairs = db.execute(
                "SELECT c.value, s.value FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
                "JOIN tags role ON role.run_uuid = r.run_uuid AND role.key = 'role' AND role.value = 'student' "
                "JOIN tags c ON c.run_uuid = r.run_uuid AND c.key = 'cell' "
                "JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = 'seed' "
                "LEFT JOIN tags smoke ON smoke.run_uuid = r.run_uuid AND smoke.key = 'smoke' "
                "WHERE r.status = 'FINISHED' AND r.lifecycle_stage = 'active' AND e.name = ? "
                "AND (smoke.value IS NULL OR smoke.value != 'True')", (EXPERIMENT,)).fetchall()
    out: dict[str, set[int]] = {}
    for cell, seed in pairs:
        out.setdefault(cell, set()).add(int(seed))
    return {cell: sorted(seeds) for cell, seeds in out.items()}


def status_line(spec: Spec, cell_id: str, seeds: list[int], root: Path, width: int) -> str:
    """'digits/resnet20-resnet8/kd   seeds finished: 0, 1, 2   data: embedded'."""
    done = ", ".join(map(str, seeds)) if seeds else "none"
    path = data_file(spec.datasets[cell_id.split("/")[0]], root)
    data = "embedded" if path is None else "present" if path.exists() else f"missing (no {path})"
    return f"{cell_id:<{width}}  seeds finished: {done:<12}  data: {data}"


def method_origin(spec, cell_id: str) -> str:
    """'  # METHOD from WHERE' for a cell whose method (or a part of it) an overlay or a package added,
    or replaced; nothing for built-in methods, so that their lines are as before."""
    added = [f"{part} from {where}" for part in method_parts(cell_id.split("/")[2])
             if (where := spec.origin("methods", part))]
    return f"  # {'; '.join(added)}" if added else ""
