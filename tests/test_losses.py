"""Golden values: every loss against an independent, naive computation."""

import math

import torch

from methods.kd import kd_loss


def naive_kd(student, teacher, tau):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = sum(math.exp(v / tau) for v in s_row)
        zt = sum(math.exp(v / tau) for v in t_row)
        for s, t in zip(s_row, t_row):
            p, q = math.exp(t / tau) / zt, math.exp(s / tau) / zs
            total += p * math.log(p / q)
    return tau**2 * total / len(student)


def test_kd_loss_golden():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    for tau in (1.0, 4.0, 0.5):
        assert abs(kd_loss(s, t, tau).item() - naive_kd(s, t, tau)) < 1e-5


def test_kd_loss_is_zero_for_equal_logits_and_has_tau_squared_gradient_scale():
    t = torch.randn(4, 10)
    assert kd_loss(t.clone(), t, 4.0).abs().item() < 1e-6
    s = torch.randn(4, 10, requires_grad=True)
    kd_loss(s, t, 4.0).backward()
    # d/ds of tau^2 KL = tau * (softmax(s/tau) - softmax(t/tau)) / batch
    expected = 4.0 * (torch.softmax(s / 4, 1) - torch.softmax(t / 4, 1)) / 4
    assert torch.allclose(s.grad, expected.detach(), atol=1e-6)
