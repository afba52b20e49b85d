"""Golden values and identities for the feature losses, each against an independent naive
computation (explicit loops, full kernel matrices)."""

import itertools
import math

import pytest
import torch

from methods.at import at_loss
from methods.fsp import fsp_loss
from methods.lpl import locality_weights, lpl_loss
from methods.nst import nst_mmd2

TOL = 1e-5


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- AT ------------------------------------------------------------------------------------
def naive_at(f_s, f_t, p):
    n, _, h, w = f_s.shape
    total = 0.0
    for b in range(n):
        maps = []
        for f in (f_s[b], f_t[b]):
            a = [sum(abs(f[c, y, x].item()) ** p for c in range(f.shape[0])) for y in range(h) for x in range(w)]
            norm = math.sqrt(sum(v * v for v in a))
            maps.append([v / norm for v in a])
        total += sum((u - v) ** 2 for u, v in zip(*maps))
    return total / (n * h * w)


def test_at_golden():
    f_s, f_t = rand(2, 3, 4, 4) - 0.5, rand(2, 5, 4, 4, seed=1) - 0.5
    for p in (2.0, 1.0):
        assert abs(at_loss(f_s, f_t, p).item() - naive_at(f_s, f_t, p)) < TOL


def test_at_pools_the_larger_map():
    f_s, f_t = rand(2, 3, 8, 8), rand(2, 5, 4, 4, seed=1)
    pooled = torch.nn.functional.avg_pool2d(f_s, 2)
    assert abs(at_loss(f_s, f_t).item() - naive_at(pooled, f_t, 2.0)) < TOL


# ---- FSP -----------------------------------------------------------------------------------
def naive_fsp_matrix(f1, f2):
    c1, h, w = f1.shape
    c2 = f2.shape[0]
    return [[sum(f1[i, y, x].item() * f2[j, y, x].item() for y in range(h) for x in range(w)) / (h * w)
             for j in range(c2)] for i in range(c1)]


def test_fsp_golden():
    s = [rand(2, 3, 4, 4), rand(2, 4, 4, 4, seed=1), rand(2, 4, 2, 2, seed=2)]
    t = [rand(2, 3, 4, 4, seed=3), rand(2, 4, 4, 4, seed=4), rand(2, 4, 2, 2, seed=5)]
    expected = 0.0
    for (s1, s2), (t1, t2) in zip(zip(s, s[1:]), zip(t, t[1:])):
        if s1.shape[-1] > s2.shape[-1]:
            s1, t1 = torch.nn.functional.avg_pool2d(s1, 2), torch.nn.functional.avg_pool2d(t1, 2)
        diffs = [(gs - gt) ** 2 for b in range(2)
                 for rs, rt in zip(naive_fsp_matrix(s1[b], s2[b]), naive_fsp_matrix(t1[b], t2[b]))
                 for gs, gt in zip(rs, rt)]
        expected += sum(diffs) / len(diffs)
    assert abs(fsp_loss(s, t).item() - expected) < TOL


# ---- NST -----------------------------------------------------------------------------------
def normalised_rows(f):
    rows = f.reshape(f.shape[0], -1).tolist()
    return [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in rows]


def naive_mmd2(f_s, f_t, kernel):
    """Eq. 4 with the full kernel matrices, one sample (C x H x W maps)."""
    s, t = normalised_rows(f_s), normalised_rows(f_t)
    dot = lambda x, y: sum(a * b for a, b in zip(x, y))  # noqa: E731
    if kernel == "linear":
        k = dot
    elif kernel == "poly":
        k = lambda x, y: dot(x, y) ** 2  # noqa: E731
    else:
        everything = t + s
        pairs = [(x, y) for i, x in enumerate(everything) for j, y in enumerate(everything) if i != j]
        sigma2 = sum(sum((a - b) ** 2 for a, b in zip(x, y)) for x, y in pairs) / len(pairs)
        k = lambda x, y: math.exp(-sum((a - b) ** 2 for a, b in zip(x, y)) / (2 * sigma2))  # noqa: E731
    mean = lambda xs, ys: sum(k(x, y) for x in xs for y in ys) / (len(xs) * len(ys))  # noqa: E731
    return mean(t, t) + mean(s, s) - 2 * mean(t, s)


@pytest.mark.parametrize("kernel", ["linear", "poly", "gauss"])
@pytest.mark.parametrize("shapes", [((3, 4, 4), (5, 4, 4)), ((6, 2, 2), (9, 2, 2))])  # C < HW and C > HW
def test_nst_golden(kernel, shapes):
    f_s, f_t = rand(2, *shapes[0]), rand(2, *shapes[1], seed=1)
    expected = sum(naive_mmd2(f_s[b], f_t[b], kernel) for b in range(2)) / 2
    assert abs(nst_mmd2(f_s, f_t, kernel).item() - expected) < TOL


def test_nst_linear_is_eq5_the_distance_of_mean_maps():
    f_s, f_t = rand(3, 4, 5, 5), rand(3, 7, 5, 5, seed=1)
    mean_map = lambda f: torch.nn.functional.normalize(f.flatten(2), dim=2).mean(1)  # noqa: E731
    expected = (mean_map(f_t) - mean_map(f_s)).pow(2).sum(1).mean()
    assert abs(nst_mmd2(f_s, f_t, "linear").item() - expected.item()) < TOL


def test_nst_poly_is_eq9_the_gram_matrix_distance():
    f_s, f_t = rand(2, 4, 3, 3), rand(2, 6, 3, 3, seed=1)
    gram = lambda f: (lambda F: F.transpose(1, 2) @ F / F.shape[1])(  # noqa: E731
        torch.nn.functional.normalize(f.flatten(2), dim=2))
    expected = (gram(f_s) - gram(f_t)).pow(2).sum(dim=(1, 2)).mean()
    assert abs(nst_mmd2(f_s, f_t, "poly").item() - expected.item()) < TOL


def test_nst_interpolates_the_student_and_is_zero_for_identical_maps():
    f = rand(2, 4, 4, 4)
    for kernel in ("linear", "poly", "gauss"):
        assert abs(nst_mmd2(f, f, kernel).item()) < TOL
    big = torch.nn.functional.interpolate(f, size=(8, 8), mode="bilinear", align_corners=False)
    assert nst_mmd2(big, f, "poly").item() < nst_mmd2(rand(2, 4, 8, 8, seed=5), f, "poly").item()


def test_nst_on_vectors_uses_units_over_the_batch():
    f_s, f_t = rand(6, 3), rand(6, 5, seed=1)
    expected = naive_mmd2(f_s.t().reshape(3, 6, 1), f_t.t().reshape(5, 6, 1), "poly")
    assert abs(nst_mmd2(f_s, f_t, "poly").item() - expected) < TOL


# ---- LPL -----------------------------------------------------------------------------------
def naive_alpha(f_t, k, sigma):
    m = len(f_t)
    d = [[sum((a - b) ** 2 for a, b in zip(f_t[i], f_t[j])) for j in range(m)] for i in range(m)]
    neighbours = [sorted((d[i][j], j) for j in range(m) if j != i)[:k] for i in range(m)]
    if sigma is None:
        sigma2 = sum(dist for row in neighbours for dist, _ in row) / (m * k)
    else:
        sigma2 = sigma**2
    alpha = [[0.0] * m for _ in range(m)]
    for i, row in enumerate(neighbours):
        for dist, j in row:
            alpha[i][j] = math.exp(-dist / sigma2)
    return alpha


@pytest.mark.parametrize("sigma", [None, 1.5])
def test_lpl_golden(sigma):
    f_s, f_t = rand(7, 4), rand(7, 6, seed=1)
    alpha = naive_alpha(f_t.tolist(), 3, sigma)
    assert torch.allclose(locality_weights(f_t, 3, sigma), torch.tensor(alpha, dtype=torch.float32), atol=TOL)
    s = f_s.tolist()
    expected = sum(alpha[i][j] * sum((a - b) ** 2 for a, b in zip(s[i], s[j]))
                   for i, j in itertools.product(range(7), repeat=2)) / 7
    assert abs(lpl_loss(f_s, f_t, 3, sigma).item() - expected) < TOL


def test_lpl_is_zero_for_equal_student_features_and_grows_with_spread():
    f_t = rand(8, 5)
    base = rand(1, 3).expand(8, 3)
    assert lpl_loss(base, f_t, 3).item() == 0
    noise = rand(8, 3, seed=2) - 0.5
    values = [lpl_loss(base + scale * noise, f_t, 3).item() for scale in (0.1, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert abs(values[3] / values[2] - 4.0) < 1e-4  # quadratic in the spread


def test_lpl_gradient_is_eq9():
    """d L_LP / d f_S^i = (1/m) sum_j alpha_ij (f_S^i - f_S^j), with L_LP = Eq. 6 = half our term."""
    f_t = rand(6, 5, seed=1)
    f_s = rand(6, 3).float().requires_grad_()
    (lpl_loss(f_s, f_t, 2, gradient="eq9") / 2).backward()
    alpha = locality_weights(f_t, 2)
    m = len(f_s)
    eq9 = torch.stack([sum(alpha[i, j] * (f_s[i] - f_s[j]) for j in range(m) if j != i) / m for i in range(m)])
    assert torch.allclose(f_s.grad, eq9.detach(), atol=1e-6)


def test_lpl_full_gradient_is_symmetric():
    f_t = rand(6, 5, seed=1)
    f_s = rand(6, 3).float().requires_grad_()
    (lpl_loss(f_s, f_t, 2, gradient="full") / 2).backward()
    alpha = locality_weights(f_t, 2)
    sym = alpha + alpha.t()
    expected = torch.stack([sum(sym[i, j] * (f_s[i] - f_s[j]) for j in range(6)) / 6 for i in range(6)])
    assert torch.allclose(f_s.grad, expected.detach(), atol=1e-6)
    assert not torch.allclose(alpha, alpha.t())  # kNN is not symmetric: the two modes differ here
