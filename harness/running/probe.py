"""The probe a method checks its needs against, built without data.

A method checks at set-up what it needs (spatial maps, equal channel counts, a teacher of
residual blocks, one teacher or several) against a `Probe`: example features of the pair's
models. `make_probe` builds it from a batch; `probe_batch` is a fixed random batch of the
dataset's image shape, so that setting a run up reads no data; `cell_mismatch` says why a cell
cannot run, from freshly built models (what `harness list` keeps out).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from harness.errors import UserError
from harness.models import build_model, extract_features
from harness.spec.cells import Cell
from harness.spec.schema import DatasetSpec, PairSpec
from harness.spec.spec import Spec
from methods import build_objective, pair_mismatch
from methods.base import Probe

ALL_FEATURES = frozenset({"logits", "pre_logits", "stages"})
PROBE_BATCH = 2


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
            # pre-ReLU taps from models with forward_intermediates_pre_relu (the CIFAR ResNets, RepDistiller's
            # WRN, VGG, MobileNetV2, ResNet-50 and ShuffleNets, timm's ResNets and MobileNetV1), and the BNs
            # feeding those ReLUs from those with pre_relu_batchnorms too (all of them but ShuffleNetV2)
            pre_relu = {"stages_pre_relu"} if hasattr(model, "forward_intermediates_pre_relu") else set()
            if pre_relu and hasattr(model, "pre_relu_batchnorms"):
                pre_relu.add("stages_pre_relu_bn")
            want = ALL_FEATURES | ({"blocks"} if blocks else set()) | pre_relu
            try:
                with torch.inference_mode():
                    features[role] = extract_features(model, x, want, stages)
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


def probe_batch(dataset: DatasetSpec) -> torch.Tensor:
    """A fixed random batch shaped like the dataset's normalised images: for shapes (and a
    hint's sign range), so that no data is read to set a run up."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(PROBE_BATCH, dataset.in_chans, dataset.img_size, dataset.img_size, generator=generator)


def shape_probe(spec: Spec, dataset: str, pair_name: str) -> Probe:
    """The pair's probe, from freshly built models (no data read)."""
    data, pair = spec.datasets[dataset], spec.pairs[pair_name]
    teachers = [build_model(spec.models[name], data) for name, _ in pair.teacher_members(0)]
    student = build_model(spec.models[pair.student], data)
    return make_probe(teachers, student, probe_batch(data), pair, pair_name, batch_size=64)


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
