"""Moving-least-squares projection and the NMT loss."""

import math

import pytest
import torch

from methods.mls import _eigh, _poly_features, mls_project
from methods.nmt import nmt_distance


def _circle(n=300, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    clean = torch.stack([torch.cos(t), torch.sin(t), torch.zeros_like(t)], dim=1)
    return clean + noise * torch.randn(n, 3, generator=g, dtype=torch.float64)


def _circle_distance(p):
    return ((p[:, :2].norm(dim=1) - 1).pow(2) + p[:, 2].pow(2)).sqrt().mean().item()


@pytest.mark.parametrize("degree", [1, 2])
def test_noisy_circle_in_r3_projects_back_onto_the_circle(degree):
    noisy = _circle()
    projected = mls_project(noisy, dim=1, neighbours=30, iterations=5, degree=degree)
    before, after = _circle_distance(noisy), _circle_distance(projected)
    assert after < 0.5 * before and after < 0.05  # well below the noise level (sigma = 0.05)


def test_noisy_plane_in_r10_projects_back_onto_the_plane():
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(10, 2, generator=g, dtype=torch.float64))[0]
    clean = torch.randn(400, 2, generator=g, dtype=torch.float64) @ basis.T
    noisy = clean + 0.05 * torch.randn(400, 10, generator=g, dtype=torch.float64)
    distance = lambda p: (p - (p @ basis) @ basis.T).norm(dim=1).mean().item()  # noqa: E731
    projected = mls_project(noisy, dim=2, neighbours=60, iterations=5, degree=1)
    assert distance(projected) < 0.4 * distance(noisy)


def test_points_on_the_manifold_stay_put_and_the_projection_is_differentiable():
    g = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))[0]
    clean = (torch.randn(100, 2, generator=g, dtype=torch.float64) @ basis.T).requires_grad_()
    projected = mls_project(clean, dim=2, neighbours=20)
    assert torch.allclose(projected, clean, atol=1e-4)  # the ridge term moves them by ~1e-5
    projected.sum().backward()
    assert torch.isfinite(clean.grad).all() and clean.grad.abs().sum() > 0


def test_nmt_distance_is_zero_for_identical_sets_and_grows_with_a_perturbation():
    points = _circle(100).float()
    assert nmt_distance(points, points, 1, 10, 3, 1, 2.0).item() < 1e-5
    shifted = [nmt_distance(points + s, points, 1, 10, 3, 1, 2.0).item() for s in (0.1, 0.5, 1.0)]
    assert shifted == sorted(shifted) and abs(shifted[0] - 0.1 * math.sqrt(3)) < 1e-3  # a rigid shift moves m_S too


# ---- golden test: the restructured projection against the first, direct implementation ----------
# (methods/mls.py before the speed-up, kept here verbatim as the naive reference: it forms every
# n x k x D offset, solves for all P x D fit coefficients, and uses torch.cdist)


def _reference_mls_project(points: torch.Tensor, dim: int, neighbours: int = 16, iterations: int = 5,
                           degree: int = 1, eps: float = 1e-2, ridge: float = 1e-6,
                           differentiable_geometry: bool = False) -> torch.Tensor:
    """Project each row of `points` (n x D) onto the MLS approximation of the set's manifold."""
    n, _ = points.shape
    k = min(neighbours, n)
    geometry = points if differentiable_geometry else points.detach()
    d2 = torch.cdist(geometry, geometry).pow(2)
    index = d2.topk(k, dim=1, largest=False).indices  # n x k (each point is its own nearest)
    near = points[index]  # n x k x D
    near_g = geometry[index]
    scale2 = d2.gather(1, index).mean().clamp_min(1e-12)  # mean squared neighbour distance
    q = geometry.clone()

    def weights(origin):
        s2 = (near_g - origin[:, None, :]).pow(2).sum(-1) / scale2
        w = 1.0 / (s2 + eps)
        return w / w.sum(dim=1, keepdim=True)  # n x k

    for _ in range(iterations):
        w = weights(q)
        mean = (w[..., None] * near_g).sum(1)
        centred = (near_g - mean[:, None, :]) * w.sqrt()[..., None]  # n x k x D
        values, vectors = torch.linalg.eigh(centred @ centred.transpose(1, 2))  # k x k Grams, ascending
        basis = centred.transpose(1, 2) @ vectors[..., -dim:]  # n x D x dim
        basis = basis / basis.norm(dim=1, keepdim=True).clamp_min(1e-12)
        q = mean + ((geometry - mean)[:, None, :] @ basis @ basis.transpose(1, 2)).squeeze(1)
    w = weights(q)
    if not differentiable_geometry:
        w, basis = w.detach(), basis.detach()
    # the origin, once more from the points themselves, so that the projection is differentiable in them
    mean = (w[..., None] * near).sum(1)
    origin = mean + ((points - mean)[:, None, :] @ basis @ basis.transpose(1, 2)).squeeze(1)
    offsets = near - origin[:, None, :]  # n x k x D
    coords = offsets @ basis  # n x k x dim
    phi = _poly_features(coords, degree)  # n x k x P
    weighted = phi * w[..., None]
    gram = weighted.transpose(1, 2) @ phi + ridge * torch.eye(phi.shape[-1], device=points.device, dtype=points.dtype)
    coefficients = torch.linalg.solve(gram, weighted.transpose(1, 2) @ offsets)  # n x P x D
    return origin + coefficients[:, 0, :]


@pytest.mark.parametrize("n, width, dim, neighbours, degree, iterations, differentiable", [
    (128, 1200, 8, 16, 1, 3, False),   # NMT's default on the Hinton MLP pair
    (64, 50, 3, 10, 2, 5, False),
    (60, 20, 3, 12, 2, 4, True),
])
def test_projection_and_its_gradient_equal_the_direct_implementation(n, width, dim, neighbours, degree, iterations,
                                                                     differentiable):
    torch.manual_seed(n)
    x = torch.randn(n, width, dtype=torch.float64, requires_grad=True)
    want = _reference_mls_project(x, dim, neighbours, iterations, degree, differentiable_geometry=differentiable)
    (want_grad,) = torch.autograd.grad(want.pow(2).sum(), x)
    got = mls_project(x, dim, neighbours, iterations, degree, differentiable_geometry=differentiable)
    (got_grad,) = torch.autograd.grad(got.pow(2).sum(), x)
    assert torch.allclose(got, want, atol=1e-9) and torch.allclose(got_grad, want_grad, atol=1e-8)


def test_nmt_loss_equals_the_direct_implementation_in_float32():
    torch.manual_seed(3)
    f_s, f_t = torch.randn(128, 1200, requires_grad=True), torch.randn(128, 1200)
    got = nmt_distance(f_s, f_t, 8, 16, 3, 1, 2.0)
    with torch.no_grad():
        m_t = _reference_mls_project(f_t, 8, 16, 3, 1)
    want = (m_t - _reference_mls_project(f_s, 8, 16, 3, 1)).norm(p=2, dim=1).mean()
    assert abs(got.item() - want.item()) < 1e-4


def test_a_batch_of_sets_projects_each_set_on_its_own():
    """NMT projects the teacher's and the student's points in one call: stacked sets must not mix."""
    torch.manual_seed(5)
    x = torch.randn(3, 40, 30, dtype=torch.float64, requires_grad=True)
    together = mls_project(x, dim=3, neighbours=10, iterations=3)
    (grad_together,) = torch.autograd.grad(together.pow(2).sum(), x)
    alone = torch.stack([mls_project(x[i], dim=3, neighbours=10, iterations=3) for i in range(3)])
    (grad_alone,) = torch.autograd.grad(alone.pow(2).sum(), x)
    assert torch.allclose(together, alone, atol=1e-12) and torch.allclose(grad_together, grad_alone, atol=1e-12)


def test_eigh_split_over_threads_equals_one_call():
    torch.manual_seed(6)
    x = torch.randn(2, 100, 16, 20)
    matrices = x @ x.transpose(-1, -2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        values, vectors = _eigh(matrices)
    finally:
        torch.set_num_threads(threads)
    want_values, want_vectors = torch.linalg.eigh(matrices)
    assert torch.equal(values, want_values) and torch.equal(vectors, want_vectors)


def test_non_finite_features_give_a_nan_distance_not_a_traceback():
    f_s, f_t = torch.randn(32, 10), torch.randn(32, 10)
    f_s[3, 2] = float("nan")
    assert math.isnan(nmt_distance(f_s, f_t, 2, 8, 3, 1, 2.0).item())


def test_fewer_neighbours_than_the_dimension_needs_stays_finite():
    """8 points, dim 8: the centred neighbourhoods have rank 7, so one direction is rounding noise;
    it is dropped, not blown up (the loss on a tiny batch stays finite, with a finite gradient)."""
    torch.manual_seed(4)
    x = (torch.randn(2, 300).repeat(4, 1) + 0.1 * torch.randn(8, 300)).requires_grad_()
    projected = mls_project(x, dim=8, neighbours=16, iterations=3)
    projected.sum().backward()
    assert torch.isfinite(projected).all() and torch.isfinite(x.grad).all()
