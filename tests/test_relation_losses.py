"""The relational baselines (sp, rkd, pkt, cc): each loss against an independent naive loop, and
against the peers' own reductions (RepDistiller, torchdistill) rewritten here step by step, so
that the ratio the cards state is checked."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from harness.spec.spec import load_spec
from methods import build_objective
from methods.cc import cc_loss, taylor_gaussian_kernel
from methods.pkt import pkt_loss
from methods.rkd import rkd_angle_loss, rkd_distance_loss
from methods.sp import sp_loss
from tests.test_methods import batch_features, probe

SPEC = load_spec()


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rows(x):
    return [r.flatten().tolist() for r in x]


def dot(a, b):
    return sum(u * v for u, v in zip(a, b))


def unit(a):
    n = math.sqrt(dot(a, a))
    return [v / n for v in a] if n else [0.0] * len(a)


def huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# ---- SP ------------------------------------------------------------------------------------
def naive_sp(f_s, f_t):
    b = len(f_s)
    grams = []
    for f in (rows(f_s), rows(f_t)):
        g = [[dot(f[i], f[j]) for j in range(b)] for i in range(b)]
        grams.append([unit(r) for r in g])
    return sum((grams[1][i][j] - grams[0][i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_sp_golden():
    f_s, f_t = rand(5, 3, 4, 4).relu(), rand(5, 8, 2, 2, seed=1).relu()
    assert sp_loss(f_s, f_t).item() == pytest.approx(naive_sp(f_s, f_t), rel=1e-5)


def test_sp_is_repdistillers_similarity_loss():
    """RepDistiller's Similarity (and mdistiller's similarity_loss): mm, F.normalize of the rows,
    squared differences summed / bsz^2. Same value: its weight 3000 carries over unchanged."""
    f_s, f_t = rand(6, 4, 3, 3).relu(), rand(6, 2, 3, 3, seed=2).relu()
    g_s = F.normalize(f_s.view(6, -1) @ f_s.view(6, -1).t())
    g_t = F.normalize(f_t.view(6, -1) @ f_t.view(6, -1).t())
    assert sp_loss(f_s, f_t).item() == pytest.approx(((g_t - g_s) ** 2).sum().item() / 36, rel=1e-5)


# ---- RKD -----------------------------------------------------------------------------------
def naive_rkd(e_s, e_t):
    b = len(e_s)
    dists, angles = [], []
    for e in (rows(e_s), rows(e_t)):
        d = [[math.dist(e[i], e[j]) for j in range(b)] for i in range(b)]
        mean = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
        dists.append([[v / mean for v in r] for r in d])
        a = {}
        for j, i, k in itertools.product(range(b), repeat=3):
            if i == j or k == j:
                a[j, i, k] = 0.0
            else:
                u = unit([x - y for x, y in zip(e[i], e[j])])
                v = unit([x - y for x, y in zip(e[k], e[j])])
                a[j, i, k] = dot(u, v)
        angles.append(a)
    distance = sum(huber(dists[0][i][j] - dists[1][i][j]) for i in range(b) for j in range(b)) / b**2
    angle = sum(huber(angles[0][key] - angles[1][key]) for key in angles[0]) / b**3
    return distance, angle


def test_rkd_golden():
    e_s, e_t = rand(5, 6), 3 * rand(5, 9, seed=1)
    distance, angle = naive_rkd(e_s, e_t)
    assert rkd_distance_loss(e_s, e_t).item() == pytest.approx(distance, rel=1e-5)
    assert rkd_angle_loss(e_s, e_t).item() == pytest.approx(angle, rel=1e-5)


def repdistiller_rkd(student, teacher):
    """RepDistiller's RKDLoss, unweighted: pdist through |a|^2 + |b|^2 - 2ab, t_d[t_d > 0].mean()."""
    def pdist(e):
        sq = e.pow(2).sum(1)
        res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=1e-12).sqrt().clone()
        res[range(len(e)), range(len(e))] = 0
        return res

    t_d, d = pdist(teacher), pdist(student)
    loss_d = F.smooth_l1_loss(d / d[d > 0].mean(), t_d / t_d[t_d > 0].mean())
    angle = [F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2) for e in (student, teacher)]
    loss_a = F.smooth_l1_loss(*(torch.bmm(n, n.transpose(1, 2)).view(-1) for n in angle))
    return loss_d, loss_a


def test_rkd_is_repdistillers_rkd_loss():
    """Ratio 1 to RepDistiller's distance and angle losses (so its w_d = 25, w_a = 50 carry over)."""
    e_s, e_t = rand(8, 16).relu(), rand(8, 32, seed=3).relu()
    loss_d, loss_a = repdistiller_rkd(e_s, e_t)
    assert rkd_distance_loss(e_s, e_t).item() == pytest.approx(loss_d.item(), rel=1e-5)
    assert rkd_angle_loss(e_s, e_t).item() == pytest.approx(loss_a.item(), rel=1e-5)


def test_rkd_gradients_stay_finite_on_duplicate_samples():
    e_s = torch.cat([torch.randn(3, 8), torch.zeros(1, 8)]).repeat(2, 1).requires_grad_()  # duplicates, zero rows
    e_t = torch.randn(8, 8)
    (rkd_distance_loss(e_s, e_t) + rkd_angle_loss(e_s, e_t)).backward()
    assert torch.isfinite(e_s.grad).all()


# ---- PKT -----------------------------------------------------------------------------------
def naive_pkt(e_s, e_t):
    b = len(e_s)
    dens = []
    for e in (rows(e_s), rows(e_t)):
        u = [unit(r) for r in e]
        k = [[(dot(u[i], u[j]) + 1) / 2 for j in range(b)] for i in range(b)]
        dens.append([[v / sum(r) for v in r] for r in k])
    p_s, p_t = dens
    return sum(p_t[i][j] * math.log(p_t[i][j] / p_s[i][j]) for i in range(b) for j in range(b)) / b


def test_pkt_golden():
    e_s, e_t = rand(6, 5), rand(6, 11, seed=1)
    assert pkt_loss(e_s, e_t).item() == pytest.approx(naive_pkt(e_s, e_t), rel=1e-5)


def test_pkt_is_repdistillers_times_batch():
    """RepDistiller's PKT.cosine_similarity_loss takes torch.mean over the b^2 entries: ours / b
    (up to its eps = 1e-7 in the norms and the log ratio). Hence lam = 30000 / 64 at its batch 64."""
    b, eps = 16, 1e-7
    e_s, e_t = rand(b, 32).relu(), rand(b, 64, seed=4).relu()

    def densities(x):
        x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)
        sim = (x @ x.t() + 1) / 2
        return sim / sim.sum(1, keepdim=True)

    p_s, p_t = densities(e_s), densities(e_t)
    theirs = torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps))).item()
    assert pkt_loss(e_s, e_t).item() / b == pytest.approx(theirs, rel=1e-4)


# ---- CC ------------------------------------------------------------------------------------
def test_cc_kernel_is_the_gaussians_taylor_series():
    x = F.normalize(rand(5, 7), dim=1)
    gamma = 0.4
    for order in (1, 2, 3):
        expected = [[math.exp(-2 * gamma) * sum((2 * gamma) ** p / math.factorial(p) * dot(a, c) ** p
                                                for p in range(order + 1)) for c in rows(x)] for a in rows(x)]
        assert torch.allclose(taylor_gaussian_kernel(x, gamma, order), torch.tensor(expected, dtype=x.dtype))
    exact = torch.exp(-gamma * torch.cdist(x, x).pow(2))  # unit vectors: the series converges to it
    assert torch.allclose(taylor_gaussian_kernel(x, gamma, 12), exact, atol=1e-9)


def test_cc_golden():
    x_s, x_t, gamma, order = rand(6, 4), rand(6, 4, seed=1), 0.4, 2
    kernels = []
    for x in (rows(x_s), rows(x_t)):
        u = [unit(r) for r in x]
        kernels.append([[math.exp(-2 * gamma) * (1 + 2 * gamma * dot(a, c) + (2 * gamma) ** 2 / 2 * dot(a, c) ** 2)
                         for c in u] for a in u])
    expected = sum((kernels[1][i][j] - kernels[0][i][j]) ** 2 for i in range(6) for j in range(6)) / 36
    assert cc_loss(x_s, x_t, gamma, order).item() == pytest.approx(expected, rel=1e-5)


def test_cc_against_torchdistills_cckd_loss():
    """torchdistill's CCKDLoss (gaussian, batchmean) returns torch.dist(K_S, K_T) / b^2, the
    Frobenius norm not squared: on the same (unit) embeddings ours = b^2 * theirs^2."""
    b, gamma, max_p = 8, 0.4, 2
    x_s, x_t = F.normalize(rand(b, 16), dim=1), F.normalize(rand(b, 16, seed=5), dim=1)

    def cc_mat(outputs):
        rows_ = []
        for out in outputs:
            right, row = out @ outputs.t(), 1
            for p in range(1, max_p + 1):
                row = row + (2 * gamma) ** p / math.factorial(p) * right**p
            rows_.append(row * math.exp(-2 * gamma))
        return torch.stack(rows_)

    theirs = torch.dist(cc_mat(x_s), cc_mat(x_t), 2).item() / b**2
    assert cc_loss(x_s, x_t, gamma, max_p).item() == pytest.approx(b**2 * theirs**2, rel=1e-5)


def test_cc_heads_are_extra_parameters_and_train():
    p = probe()  # 64-wide penultimate vectors for both networks
    objective = build_objective(SPEC, "cc", {}, p)
    assert objective.extra_parameters() == 2 * (64 * 128 + 128)
    student, teachers = batch_features(p)
    objective(student, teachers, torch.zeros(8, dtype=torch.long))["cc"].backward()
    heads = objective.parts["cc"]
    assert heads.embed_teacher.weight.grad.abs().sum() > 0 and heads.embed_student.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["sp", "rkd", "pkt", "cc"])
def test_relational_terms_are_finite_on_vector_features(method):
    """The MLP pairs give vector stages: every relational method reads them too."""
    p = probe(vectors=True)
    student, teachers = batch_features(p)
    losses = build_objective(SPEC, method, {}, p)(student, teachers, torch.zeros(8, dtype=torch.long))
    assert all(torch.isfinite(v) for v in losses.values())
