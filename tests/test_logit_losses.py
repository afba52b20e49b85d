"""The logit baselines (dkd, dist) and the logit standardisation option of kd and dkd: each loss
against a naive loop, against the peers' code rewritten here step by step (mdistiller's dkd_loss,
the DIST authors' loss), and the identities the papers rest on. The losses compute in fp32, hence
rel = 1e-5 against the float64 loops."""

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from harness.running.plan import identity_dump
from harness.spec.spec import load_spec
from methods import build_objective, resolve_params
from methods.dist import dist_terms
from methods.dkd import dkd_loss, dkd_warmup
from methods.kd import KDParams, kd_loss, standardize_logits
from tests.test_methods import batch_features, probe

SPEC = load_spec()


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def softmax(row, tau):
    z = [math.exp(v / tau) for v in row]
    return [v / sum(z) for v in z]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


# ---- DKD -----------------------------------------------------------------------------------
def naive_dkd(s, t, y, alpha, beta, tau):
    total = 0.0
    for s_row, t_row, c in zip(s.tolist(), t.tolist(), y.tolist()):
        p_s, p_t = softmax(s_row, tau), softmax(t_row, tau)
        tckd = kl([p_t[c], 1 - p_t[c]], [p_s[c], 1 - p_s[c]])
        rest_s = [v / (1 - p_s[c]) for j, v in enumerate(p_s) if j != c]
        rest_t = [v / (1 - p_t[c]) for j, v in enumerate(p_t) if j != c]
        total += alpha * tckd + beta * kl(rest_t, rest_s)
    return tau**2 * total / len(y)


def test_dkd_golden():
    s, t, y = rand(6, 5), 2 * rand(6, 5, seed=1), torch.tensor([0, 4, 2, 2, 1, 3])
    for alpha, beta, tau in ((1.0, 8.0, 4.0), (0.5, 2.0, 1.0)):
        assert dkd_loss(s, t, y, alpha, beta, tau).item() == pytest.approx(naive_dkd(s, t, y, alpha, beta, tau),
                                                                          rel=1e-5)


def mdistiller_dkd(s, t, y, alpha, beta, tau):
    """mdistiller's dkd_loss: probabilities gathered by masks, torch.log, the target masked with -1000."""
    gt = torch.zeros_like(s).scatter_(1, y.unsqueeze(1), 1).bool()

    def cat_mask(p):
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * ~gt).sum(1, keepdim=True)], dim=1)

    p_s, p_t = cat_mask(F.softmax(s / tau, dim=1)), cat_mask(F.softmax(t / tau, dim=1))
    tckd = F.kl_div(torch.log(p_s), p_t, reduction="sum") * tau**2 / len(y)
    nckd = F.kl_div(F.log_softmax(s / tau - 1000.0 * gt, dim=1), F.softmax(t / tau - 1000.0 * gt, dim=1),
                    reduction="sum") * tau**2 / len(y)
    return alpha * tckd + beta * nckd


def test_dkd_is_mdistillers_dkd_loss():
    """Ratio 1 (same batch mean, same tau^2): mdistiller's alpha = 1, beta = 8, tau = 4 carry over."""
    s, t, y = rand(16, 100), 3 * rand(16, 100, seed=2), torch.randint(0, 100, (16,))
    assert dkd_loss(s, t, y, 1.0, 8.0, 4.0).item() == pytest.approx(mdistiller_dkd(s, t, y, 1.0, 8.0, 4.0).item(),
                                                                    rel=1e-5)


def test_dkd_reassembles_kd():
    """DKD's Eq. 1: KD = TCKD + (1 - p^T_target) NCKD, sample by sample."""
    s, t, y, tau = rand(1, 7), rand(1, 7, seed=3), torch.tensor([2]), 2.0
    p_target = F.softmax(t / tau, dim=1)[0, 2].item()
    assert dkd_loss(s, t, y, 1.0, 1 - p_target, tau).item() == pytest.approx(kd_loss(s, t, tau).item(), rel=1e-5)


def test_dkd_stays_finite_where_probabilities_underflow():
    s = torch.tensor([[400.0, 0.0, -400.0], [0.0, 300.0, 0.0]], requires_grad=True)  # p_target -> 1, 0
    t = torch.tensor([[-300.0, 300.0, 0.0], [0.0, 0.0, 500.0]])
    loss = dkd_loss(s, t, torch.tensor([0, 1]), 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_dkd_warmup_is_mdistillers_ramp_at_our_zero_based_epoch():
    # mdistiller: min(epoch / 20, 1), epoch counted from 1
    assert [dkd_warmup(e, 20) for e in (0, 9, 18, 19, 100)] == [1 / 20, 10 / 20, 19 / 20, 1.0, 1.0]
    assert dkd_warmup(0, 0) == 1.0


def test_dkd_is_told_the_epoch_by_the_engine(home):
    """Each main-phase epoch reaches the method before its steps: the DKD term's weight ramps."""
    from harness.running.runner import Runner
    from harness.spec.options import RunOptions
    from harness.spec.spec import load_spec

    spec = load_spec()
    runner = Runner(spec, home, f"sqlite:///{home / 'mlflow.db'}")
    plan = runner.plan(spec.cell("digits/hinton1200-hinton800/dkd"),
                       RunOptions(epochs=3, teacher_epochs=1, progress=False, overrides={"dkd": {"warmup_epochs": 4}}))
    dkd = plan.objective.parts["dkd"]
    seen = []
    forward = dkd.forward
    dkd.forward = lambda *args: seen.append(dkd.epoch) or forward(*args)
    plan.trainer(plan.teachers(), eval_splits=()).run()
    assert sorted(set(seen)) == [0, 1, 2]
    assert [dkd_warmup(e, 4) for e in sorted(set(seen))] == [0.25, 0.5, 0.75]


# ---- DIST ----------------------------------------------------------------------------------
def pearson(a, b):
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    num = sum((u - ma) * (v - mb) for u, v in zip(a, b))
    return num / math.sqrt(sum((u - ma) ** 2 for u in a) * sum((v - mb) ** 2 for v in b))


def test_dist_golden():
    s, t, tau = rand(6, 5), 2 * rand(6, 5, seed=1), 4.0
    y_s = [softmax(r, tau) for r in s.tolist()]
    y_t = [softmax(r, tau) for r in t.tolist()]
    inter = 1 - statistics.fmean(pearson(a, b) for a, b in zip(y_s, y_t))
    intra = 1 - statistics.fmean(pearson([r[c] for r in y_s], [r[c] for r in y_t]) for c in range(5))
    got = dist_terms(s, t, tau)
    assert (got[0].item(), got[1].item()) == (pytest.approx(inter, rel=1e-5), pytest.approx(intra, rel=1e-5))


def test_dist_method_is_the_authors_loss():
    """image_classification_sota's DIST(beta, gamma, tau): tau^2 (beta inter + gamma intra), its
    Pearson a cosine of centred vectors with 1e-8 in the denominator. Ratio 1."""
    def cosine(a, b):
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)

    def relation(a, b):
        return 1 - cosine(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1)).mean()

    p = probe()
    student, teachers = batch_features(p)
    losses = build_objective(SPEC, "dist", {}, p)(student, teachers, torch.zeros(8, dtype=torch.long))
    beta, gamma, tau = 2.0, 2.0, 4.0  # the yaml defaults
    y_s, y_t = (F.softmax(f["logits"].float() / tau, dim=1) for f in (student, teachers[0]))
    theirs = tau**2 * (beta * relation(y_s, y_t) + gamma * relation(y_s.t(), y_t.t()))
    assert (losses["dist_inter"] + losses["dist_intra"]).item() == pytest.approx(theirs.item(), rel=1e-5)


# ---- logit standardisation -----------------------------------------------------------------
def test_standardize_logits_is_a_z_score_with_bessels_correction():
    z = rand(4, 9)
    expected = [[(v - statistics.fmean(r)) / (statistics.stdev(r) + 1e-7) for v in r] for r in z.tolist()]
    assert torch.allclose(standardize_logits(z), torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    assert torch.isfinite(standardize_logits(torch.ones(2, 5))).all()  # constant logits: zeros, not nan


@pytest.mark.parametrize("method, term", [("kd_ls", "kd"), ("dkd_ls", "dkd")])
def test_standardised_variants_ignore_the_teachers_logit_scale_and_shift(method, term):
    """Sun et al.'s point: after the Z-score only the logits' relations matter, not their range."""
    p = probe()
    student, teachers = batch_features(p)
    objective, y = build_objective(SPEC, method, {}, p), torch.randint(0, 10, (8,))
    moved = [{**teachers[0], "logits": 5 * teachers[0]["logits"] + 3}]
    assert objective(student, moved, y)[term].item() == pytest.approx(objective(student, teachers, y)[term].item(),
                                                                      rel=1e-4)
    plain = build_objective(SPEC, method, {method: {"standardize": False}}, p)
    assert plain(student, moved, y)[term].item() != pytest.approx(plain(student, teachers, y)[term].item(), rel=1e-2)


def test_kd_ls_is_kd_on_standardised_logits():
    p = probe()
    student, teachers = batch_features(p)
    got = build_objective(SPEC, "kd_ls", {}, p)(student, teachers, torch.zeros(8, dtype=torch.long))["kd"]
    s, t = standardize_logits(student["logits"]), standardize_logits(teachers[0]["logits"])
    assert got.item() == pytest.approx(9.0 * kd_loss(s, t, 2.0).item(), rel=1e-6)


def test_the_standardize_option_leaves_kd_run_keys_alone():
    """A kd run's identity holds only values that differ from the Params defaults: standardize=False
    (the yaml default) is left out, so kd runs made before the option keep their keys."""
    assert identity_dump(resolve_params(SPEC, "kd")) == {"tau": 4.0, "lam": 1.0}
    assert identity_dump(KDParams(tau=4.0, lam=1.0, standardize=True)) == {"tau": 4.0, "lam": 1.0, "standardize": True}
