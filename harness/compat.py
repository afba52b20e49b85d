"""Which cells can run, known without data or training.

A method checks at set-up what it needs (spatial maps, equal channel counts, a teacher of
residual blocks, one teacher or several) against a `Probe`: example features of the pair's
models. `make_probe` builds that probe from any input batch; `cell_mismatch` feeds it a random
batch of the dataset's image shape through freshly built models, so `harness list` can keep
every cell it prints runnable. Verdicts are cached in the runs home, keyed by the spec and the
source of models and methods, because building a ResNet-1001 and an ImageNet pair takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from harness.errors import UserError
from harness.models import build_model, extract_features
from harness.spec import Cell, PairSpec, Spec
from methods import build_objective, pair_mismatch
from methods.base import Probe

ALL_FEATURES = frozenset({"logits", "pre_logits", "stages"})
PROBE_BATCH = 2
CODE = [Path(__file__).parent / "models", Path(__file__).parents[1] / "methods"]


@contextmanager
def plain_kernels():
    """oneDNN off for a while (its `flags()` context also resets TF32 and warns about it)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def make_probe(teachers: list[torch.nn.Module], student: torch.nn.Module, x: torch.Tensor, pair: PairSpec,
               pair_name: str, batch_size: int) -> Probe:
    """One forward of `x` through every model of the pair, each feature a method may read."""
    features = {}
    roles = [(f"teacher {i}", model, pair.stages.teacher) for i, model in enumerate(teachers)]
    # oneDNN creates a kernel per layer shape on first use: for a 2-image shape probe of a deep
    # net (ResNet-1001: 40 s) the plain kernels are far quicker, and the shapes are the same
    with plain_kernels():
        for role, model, stages in roles + [("student", student, pair.stages.student)]:
            model.eval()
            blocks = hasattr(model, "stage_list") and all(isinstance(s, torch.nn.Sequential)
                                                          for s in model.stage_list())
            try:
                with torch.inference_mode():
                    features[role] = extract_features(model, x, ALL_FEATURES | ({"blocks"} if blocks else set()),
                                                      stages)
            except (AssertionError, IndexError) as e:
                raise UserError(f"pair {pair_name}: {role}'s stage taps {stages} do not fit the model ({e})") \
                    from None
            model.train()
    teacher_features = tuple(features[f"teacher {i}"] for i in range(len(teachers)))
    widths = {f["logits"].shape[1] for f in teacher_features} | {features["student"]["logits"].shape[1]}
    if len(widths) > 1:
        raise UserError(f"pair {pair_name}: its teachers and student predict different numbers of classes "
                        f"({sorted(widths)})")
    return Probe(teacher_features[0], features["student"], pair.hint, batch_size, teacher_features)


def shape_probe(spec: Spec, dataset: str, pair_name: str) -> Probe:
    """The pair's probe on a random batch shaped like the dataset's images (no data read)."""
    data, pair = spec.datasets[dataset], spec.pairs[pair_name]
    generator = torch.Generator().manual_seed(0)
    teachers = [build_model(spec.models[name], data) for name, _ in pair.teacher_members(0)]
    student = build_model(spec.models[pair.student], data)
    x = torch.randn(PROBE_BATCH, data.in_chans, data.img_size, data.img_size, generator=generator)
    return make_probe(teachers, student, x, pair, pair_name, batch_size=64)


def cell_mismatch(spec: Spec, cell: Cell, probes: dict | None = None) -> str | None:
    """Why the cell cannot run (the method's own set-up error), or None. `probes` memoises the
    probe (or its error) per (dataset, pair)."""
    reason = pair_mismatch(spec, cell.method, cell.pair)
    if reason is not None:
        return reason
    probes = {} if probes is None else probes
    key = (cell.dataset, cell.pair)
    if key not in probes:
        try:
            probes[key] = shape_probe(spec, cell.dataset, cell.pair)
        except UserError as e:
            probes[key] = str(e)
    if isinstance(probes[key], str):
        return probes[key]
    try:
        objective = build_objective(spec, cell.method, {}, probes[key])
        objective.check_teachers(len(spec.pairs[cell.pair].teacher_members(0)))
    except UserError as e:
        return str(e)
    return None


def fingerprint(spec: Spec) -> str:
    """Changes when the spec or the code that decides compatibility changes."""
    digest = hashlib.sha256(spec.model_dump_json().encode())
    for folder in CODE:
        for path in sorted(folder.rglob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def mismatches(spec: Spec, cells: list[Cell], home: Path | None) -> dict[str, str | None]:
    """cell id -> why it cannot run (None: it can), cached in HOME/compat.json."""
    cache_path = home / "compat.json" if home is not None else None
    key = fingerprint(spec)
    cached = {}
    if cache_path is not None and cache_path.exists():
        try:
            stored = json.loads(cache_path.read_text())
            cached = stored["verdicts"] if stored.get("fingerprint") == key else {}
        except (ValueError, KeyError):
            cached = {}
    probes: dict = {}
    verdicts = {cell.id: cached[cell.id] if cell.id in cached else cell_mismatch(spec, cell, probes)
                for cell in cells}
    if cache_path is not None and set(verdicts) - set(cached):
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")  # two processes may list at once
        tmp.write_text(json.dumps({"fingerprint": key, "verdicts": cached | verdicts}))
        tmp.replace(cache_path)
    return verdicts
