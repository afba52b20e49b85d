"""KR: the sparse recoding penalty, the aggregation, the alternating optimizers, and runs."""

import pytest
import torch

from harness.cli import main
from harness.spec.spec import load_spec
from methods import build_objective
from methods.base import Probe
from methods.kr import SparseRecoding, group_bounds


def gated_gradient(grad, theta, p_low=4.0, enhance=2.0):
    gate = SparseRecoding(p_low, enhance)
    gate.theta.data.fill_(theta)
    x = torch.zeros_like(grad, requires_grad=True)
    gate(x).backward(grad)
    return x.grad, gate.theta.grad


def test_gradients_below_the_threshold_are_smoothed_to_zero_and_above_enhanced():
    grad = torch.tensor([0.0, 0.01, 0.1, 0.5, 0.99, 1.0, 2.0, -3.0])
    passed, _ = gated_gradient(grad, theta=1.0)
    below = grad.abs() < 1.0
    assert torch.allclose(passed[below], grad[below] * grad[below].abs().pow(4))  # (|g|/theta)^4
    assert passed[0] == 0 and passed[1].abs() < 1e-7  # smoothed to zero
    assert torch.allclose(passed[~below], 2.0 * grad[~below])  # enhanced
    assert (passed[below].abs() <= grad[below].abs()).all()


def test_the_threshold_starts_at_the_gradient_scale_and_learns():
    gate = SparseRecoding(4.0, 2.0)
    x = torch.zeros(100, requires_grad=True)
    gate(x).backward(torch.full((100,), 0.3))
    assert gate.theta.item() == pytest.approx(0.3)  # initialised at the mean |g|
    optimizer = torch.optim.SGD(gate.parameters(), lr=0.5)
    for _ in range(30):  # the gradient scale changes: the threshold follows it
        optimizer.zero_grad()
        x = torch.zeros(100, requires_grad=True)
        gate(x).backward(torch.full((100,), 0.05))
        optimizer.step()
    assert gate.theta.item() == pytest.approx(0.05, rel=1e-3)


def _sparsity_after_fit(penalty: str, lam: float = 0.05, steps: int = 100):
    """Fit w to a target with 5 dominant entries and 95 small ones; report the fraction of the
    small entries left at (near) zero once the dominant ones are fitted."""
    g = torch.Generator().manual_seed(0)
    target = torch.cat([torch.full((5,), 5.0), 0.1 * torch.randn(95, generator=g)])
    w = torch.zeros(100, requires_grad=True)
    gate = SparseRecoding(4.0, 2.0)
    optimizer = torch.optim.SGD([w], lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        residual = w - target
        if penalty == "sr":
            loss = gate(residual).pow(2).sum() / 2
        elif penalty == "l1":
            loss = residual.pow(2).sum() / 2 + lam * w.abs().sum()
        else:
            loss = residual.pow(2).sum() / 2 + lam * w.pow(2).sum()
        loss.backward()
        optimizer.step()
    dominant_error = (w[:5] - 5.0).abs().max().item()
    return (w[5:].abs() < 1e-2).float().mean().item(), dominant_error


def test_sparse_recoding_is_sparser_than_l1_and_l2():
    sr, sr_error = _sparsity_after_fit("sr")
    l1, l1_error = _sparsity_after_fit("l1")
    l2, _ = _sparsity_after_fit("l2")
    assert sr_error < 1e-3 and l1_error < 0.06  # the dominant entries are fitted (L1 stays biased by lam)
    assert sr > l1 + 0.2 and l1 > l2  # measured: 0.60, 0.27, 0.04


def _probe():
    spec = load_spec()
    import timm

    import harness.models  # noqa: F401
    from harness.models import extract_features

    teacher = timm.create_model("cifar_resnet20", num_classes=10).eval()
    student = timm.create_model("cifar_resnet8", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    every = frozenset({"logits", "pre_logits", "stages", "blocks"})
    return spec, teacher, Probe(extract_features(teacher, x, every, [1, 2, 3]),
                                extract_features(student, x, every - {"blocks"}, [1, 2, 3]), 1, 64)


def test_groups_and_bad_k():
    assert group_bounds(5, 3) == [(0, 3), (3, 5)]
    spec, _, probe = _probe()
    from harness.errors import UserError

    with pytest.raises(UserError, match="does not fit the teacher's depth"):
        build_objective(spec, "kr", {"kr": {"k": 4}}, probe)  # resnet20: 3 blocks per stage
    for bad in ({"mu": float("nan")}, {"beta": -1.0}, {"enhance": float("inf")}):
        with pytest.raises(UserError):
            build_objective(spec, "kr", {"kr": bad}, probe)


def test_aggregation_transport_cost_falls_under_its_own_optimizer():
    spec, teacher, probe = _probe()
    objective = build_objective(spec, "kr", {}, probe)
    (extra,) = objective.extra_optimizers()
    optimizer = torch.optim.SGD(extra.params, lr=0.05, momentum=0.9)
    from harness.models import extract_features

    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        t = extract_features(teacher, x, frozenset({"blocks"}), [1, 2, 3])
    s = {"stages": [torch.randn(16, c, hw, hw) for c, hw in ((16, 32), (32, 16), (64, 8))]}
    costs = []
    for _ in range(100):
        optimizer.zero_grad()
        cost = objective.parts["kr"](s, t, None)["kr_agg"]
        cost.backward()
        optimizer.step()
        costs.append(cost.item())
    assert costs[-1] < 0.5 * costs[0] and sum(costs[-10:]) < sum(costs[:10])


def test_kr_terms_equal_a_naive_computation():
    """Golden: Eq. 9's weighted transport cost and Eq. 10's prior term, written out directly
    (every group's layer applied to its input; the summary chained from the stage input anew)."""
    spec, teacher, probe = _probe()
    from harness.models import extract_features

    torch.manual_seed(7)
    objective = build_objective(spec, "kr_dense", {}, probe)
    kr = objective.parts["kr_dense"]
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        t = extract_features(teacher, x, frozenset({"blocks"}), [1, 2, 3])
    s = {"stages": [torch.randn(8, c, hw, hw) for c, hw in ((16, 32), (32, 16), (64, 8))]}
    got = kr(s, t, None)
    want_cost, want_prior = 0.0, 0.0
    for stage_id, bounds, layers, project, f_s in zip(kr.stage_ids, kr.groups, kr.aggregators, kr.projectors,
                                                       s["stages"]):
        blocks = t["blocks"][stage_id]
        stds = torch.stack([blocks[b].std() for _, b in bounds])
        for (a, b), layer, std in zip(bounds, layers, stds):
            want_cost = want_cost + std / stds.mean() * (layer(blocks[a]) - blocks[b]).pow(2).mean()
        summary = blocks[0]
        for layer in layers:
            summary = layer(summary)
        projected = project(torch.nn.functional.interpolate(f_s, size=summary.shape[-2:], mode="bilinear",
                                                            align_corners=False)
                            if f_s.shape[-2:] != summary.shape[-2:] else f_s)
        want_prior = want_prior + (projected - summary).pow(2).mean()
    assert torch.allclose(got["kr_agg"], kr.params.mu * want_cost, rtol=1e-5)
    assert torch.allclose(got["kr"], kr.params.beta * want_prior, rtol=1e-5)


def test_kr_student_gradient_through_the_gate_equals_a_naive_computation():
    """Golden: the student's gradient of Eq. 10 with SR, written out directly: the residual's gradient
    beta * 2r / N, gated g * (|g|/theta)^p_low below theta and enhance * g above, through the projection."""
    spec, teacher, probe = _probe()
    from harness.models import extract_features

    torch.manual_seed(3)
    kr = build_objective(spec, "kr", {}, probe).parts["kr"]
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        t = extract_features(teacher, x, frozenset({"blocks"}), [1, 2, 3])
    s = {"stages": [torch.randn(8, c, hw, hw, requires_grad=True) for c, hw in ((16, 32), (32, 16), (64, 8))]}
    kr(s, t, None)["kr"].backward()
    theta, p = kr.gate.theta.item(), kr.params  # theta: set from the first gradient the gate saw
    below = []
    for stage_id, layers, project, f_s in zip(kr.stage_ids, kr.aggregators, kr.projectors, s["stages"]):
        with torch.no_grad():
            summary = t["blocks"][stage_id][0]
            for layer in layers:
                summary = layer(summary)
        projected = project(f_s)  # the student's stages have the teacher's sizes here
        g = (p.beta * 2 * (projected - summary) / projected.numel()).detach()
        gated = g * torch.where(g.abs() < theta, (g.abs() / theta) ** p.p_low, torch.tensor(p.enhance))
        (want,) = torch.autograd.grad(projected, f_s, gated)
        # atol: the projection's channel sums cancel to ~1e-8 of the largest entry in float32
        assert torch.allclose(f_s.grad, want, rtol=1e-4, atol=1e-6 * want.abs().max().item())
        below.append((g.abs() < theta).float().mean().item())
    assert 0.05 < sum(below) / 3 < 0.95  # both sides of the threshold are exercised (measured: 0.83 below)


def test_the_two_optimizers_alternate_every_iteration(home, monkeypatch):
    import harness.training.engine

    order = []
    original = harness.training.engine.Trainer._new_optimizer

    def recording_new_optimizer(self):
        optimizer = original(self)
        step = optimizer.step
        optimizer.step = lambda *a, **k: (order.append("student"), step(*a, **k))[1]
        for extra in self.extra:
            if not hasattr(extra, "_recorded"):
                extra_step = extra.step
                extra.step = (lambda s: lambda *a, **k: (order.append("aggregation"), s(*a, **k))[1])(extra_step)
                extra._recorded = True
        return optimizer

    monkeypatch.setattr(harness.training.engine.Trainer, "_new_optimizer", recording_new_optimizer)
    assert main(["run", "--cell", "digits/resnet20-resnet8/kr", "--smoke", "--no-progress"]) == 0
    # the teacher trains first (8 steps, one optimizer); then the KR student: student, aggregation, ...
    assert order == ["student"] * 8 + ["student", "aggregation"] * 8


@pytest.mark.parametrize("cell", ["cifar10/resnet26-resnet8/kr", "cifar100/resnet32-resnet14/kr",
                                  "cifar100/resnet32-resnet14/kr_dense", "cifar100/resnet32-resnet14/kr+kd",
                                  "cifar100/resnet32-resnet14/kr+nst_poly"])
def test_kr_smoke_on_the_cifar_fixtures(home, cifar_root, cell):
    assert main(["run", "--cell", cell, "--smoke", "--no-progress", "--data-root", str(cifar_root)]) == 0
