"""Moving-least-squares projection and the NMT loss."""

import math

import pytest
import torch

from methods.mls import mls_project
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
