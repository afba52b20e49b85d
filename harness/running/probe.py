"""The probe a method checks its needs against, built without data.

A method checks at set-up what it needs (spatial maps, equal channel counts, a teacher of
residual blocks, one teacher or several) against a `Probe`: example features of the pair's
models. `make_probe` builds it from a batch; `probe_batch` is a fixed random batch of the
dataset's image shape, so that setting a run up reads no data; `cell_mismatch` says why a cell
cannot run (what `harness list` keeps out), from freshly built models or from their features'
signatures (shapes and signs, which harness/running/compat.py caches per model).
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


def model_features(model: torch.nn.Module, x: torch.Tensor, stages: list[int]) -> dict:
    """Every feature a method may read of `model` for `x` (one forward, eval mode, plain kernels).
    Raises AssertionError or IndexError when the stage taps do not fit the model."""
    blocks = hasattr(model, "stage_list") and all(isinstance(s, torch.nn.Sequential) for s in model.stage_list())
    # pre-ReLU taps from models with forward_intermediates_pre_relu (the CIFAR ResNets, RepDistiller's
    # WRN, VGG, MobileNetV2, ResNet-50 and ShuffleNets, timm's ResNets and MobileNetV1), and the BNs
    # feeding those ReLUs from those with pre_relu_batchnorms too (all of them but ShuffleNetV2)
    pre_relu = {"stages_pre_relu"} if hasattr(model, "forward_intermediates_pre_relu") else set()
    if pre_relu and hasattr(model, "pre_relu_batchnorms"):
        pre_relu.add("stages_pre_relu_bn")
    want = ALL_FEATURES | ({"blocks"} if blocks else set()) | pre_relu
    # oneDNN creates a kernel per layer shape on first use: for a 2-image shape probe of a deep
    # net (ResNet-1001: 40 s) the plain kernels are far quicker, and the shapes are the same
    model.eval()
    try:
        with plain_kernels(), torch.inference_mode():
            return extract_features(model, x, want, stages)
    finally:
        model.train()


def tap_error(pair_name: str, role: str, stages: list[int], error: Exception | str) -> UserError:
    return UserError(f"pair {pair_name}: {role}'s stage taps {stages} do not fit the model ({error})")


def probe_of(teacher_features: list[dict], student_features: dict, pair: PairSpec, pair_name: str,
             batch_size: int) -> Probe:
    """The Probe of the pair's features, its teachers first; their classes must agree."""
    widths = {f["logits"].shape[1] for f in teacher_features} | {student_features["logits"].shape[1]}
    if len(widths) > 1:
        raise UserError(f"pair {pair_name}: its teachers and student predict different numbers of classes "
                        f"({sorted(widths)})")
    return Probe(teacher_features[0], student_features, pair.hint, batch_size, tuple(teacher_features))


def make_probe(teachers: list[torch.nn.Module], student: torch.nn.Module, x: torch.Tensor, pair: PairSpec,
               pair_name: str, batch_size: int) -> Probe:
    """One forward of `x` through every model of the pair, each feature a method may read."""
    roles = [(f"teacher {i}", model, pair.stages.teacher) for i, model in enumerate(teachers)]
    features = {}
    for role, model, stages in roles + [("student", student, pair.stages.student)]:
        try:
            features[role] = model_features(model, x, stages)
        except (AssertionError, IndexError) as e:
            raise tap_error(pair_name, role, stages, e) from None
    return probe_of([features[role] for role, _, _ in roles], features["student"], pair, pair_name, batch_size)


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


def signature(features, batch: int = PROBE_BATCH):
    """The shapes and signs of features (all a method's set-up checks read: a hint's sign range, say),
    JSON-ready: a tensor as {"tensor": shape, "nonneg": bool}, lists and dicts of them alike. Every
    feature is per image: its first dimension is given as `batch`."""
    if isinstance(features, torch.Tensor):
        return {"tensor": [batch, *features.shape[1:]], "nonneg": bool((features >= 0).all())}
    if isinstance(features, dict):
        return {name: signature(value, batch) for name, value in features.items()}
    return [signature(value, batch) for value in features]


def from_signature(sig, generator: torch.Generator):
    """Random features of a signature's shapes and signs."""
    if isinstance(sig, list):
        return [from_signature(value, generator) for value in sig]
    if "tensor" not in sig:
        return {name: from_signature(value, generator) for name, value in sig.items()}
    x = torch.randn(sig["tensor"], generator=generator)
    return x.abs() if sig["nonneg"] else x


def model_signature(spec: Spec, dataset: str, model_name: str, stages: list[int]) -> dict:
    """The signature of a freshly built model's features on the dataset's probe batch, or
    {"error": why its stage taps do not fit}."""
    data = spec.datasets[dataset]
    # a fixed initialisation: a feature's sign can hang on the weights (a maxout's pre-logits on one
    # image), and a cached or shipped signature must not differ between two computations
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:  # one image of the probe batch: the same shapes per image, half the compute
            return signature(model_features(build_model(spec.models[model_name], data), probe_batch(data)[:1], stages))
        except (AssertionError, IndexError) as e:
            return {"error": str(e)}


def signature_probe(spec: Spec, pair_name: str, signatures: list[dict]) -> Probe:
    """The pair's probe from its members' signatures (teachers, then the student): no model built."""
    pair, generator = spec.pairs[pair_name], torch.Generator().manual_seed(0)
    roles = [f"teacher {i}" for i in range(len(signatures) - 1)] + ["student"]
    features = []
    for role, sig in zip(roles, signatures):
        if "error" in sig:
            stages = pair.stages.student if role == "student" else pair.stages.teacher
            raise tap_error(pair_name, role, stages, sig["error"])
        features.append(from_signature(sig, generator))
    return probe_of(features[:-1], features[-1], pair, pair_name, batch_size=64)


def set_up(spec: Spec, method_id: str, overrides: dict[str, dict], probe: Probe):
    """The method's Objective, for its set-up checks and phases: its own modules on the meta device
    (their shapes, without computing their initialisation), on the CPU where the set-up computes with them."""
    try:
        with torch.device("meta"):
            return build_objective(spec, method_id, overrides, probe)
    except (RuntimeError, NotImplementedError):
        return build_objective(spec, method_id, overrides, probe)


def cell_mismatch(spec: Spec, cell: Cell, probes: dict | None = None, make_probe=shape_probe) -> str | None:
    """Why the cell cannot run (the method's own set-up error), or None. `probes` memoises the
    probe (or its error) per (dataset, pair); `make_probe(spec, dataset, pair)` makes it (by default
    from freshly built models)."""
    reason = pair_mismatch(spec, cell.method, cell.pair)
    if reason is not None:
        return reason
    probes = {} if probes is None else probes
    key = (cell.dataset, cell.pair)
    if key not in probes:
        try:
            probes[key] = make_probe(spec, cell.dataset, cell.pair)
        except UserError as e:
            probes[key] = str(e)
    if isinstance(probes[key], str):
        return probes[key]
    try:
        objective = set_up(spec, cell.method, {}, probes[key])
        objective.check_teachers(len(spec.pairs[cell.pair].teacher_members(0)))
    except UserError as e:
        return str(e)
    return None
