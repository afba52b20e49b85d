"""The feature baselines of #28 (vid, ab, ft, ofd, reviewkd): each loss against an independent naive
computation, and against the peers' own steps (RepDistiller, mdistiller, the authors' code)
rewritten here from their source, so that the ratio each card states is checked; the pre-ReLU taps
of the CIFAR ResNets; the pre-phases and what they train."""

import math

import pytest
import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.models import build_model, extract_features
from harness.spec.spec import load_spec
from methods import build_objective
from methods.ab import ab_loss
from methods.ft import ft_loss
from methods.ofd import bn_margin, ofd_loss
from methods.reviewkd import hcl_loss
from methods.vid import vid_loss
from tests.test_methods import batch_features, probe

SPEC = load_spec()


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def build(method, p=None, **overrides):
    p = p or probe()
    return build_objective(SPEC, method, {method: overrides} if overrides else {}, p).parts[method], p


def elements(x):
    """(index, value) for every element of a tensor."""
    return [(i, v) for i, v in enumerate(x.flatten().tolist())]


# ---- pre-ReLU taps ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet8x4"])
def test_pre_relu_taps_leave_every_other_feature_as_it_was(name):
    torch.manual_seed(0)
    model = build_model(SPEC.models[name], SPEC.datasets["cifar100"]).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        plain = extract_features(model, x, frozenset({"logits", "pre_logits", "stages"}), [0, 1, 2, 3])
        both = extract_features(model, x, frozenset({"logits", "pre_logits", "stages", "stages_pre_relu",
                                                     "stages_pre_relu_bn"}), [0, 1, 2, 3])
    assert torch.equal(both["logits"], plain["logits"]) and torch.equal(both["pre_logits"], plain["pre_logits"])
    for post, plain_post, pre, bn_feature, bn in zip(both["stages"], plain["stages"], both["stages_pre_relu"],
                                                     both["stages_pre_relu_bn"], model.pre_relu_batchnorms()):
        assert torch.equal(post, plain_post)
        assert torch.equal(torch.relu(pre), post) and (pre < 0).any()
        assert bn_feature.shape == (3, 2, bn.num_features)
        assert torch.equal(bn_feature[1], torch.stack([bn.weight, bn.bias]))
    # the stage's pre-activation is its last block's residual sum: bn2 output plus the shortcut
    block = model.stages[-1][-1]
    with torch.no_grad():
        inputs = model.forward_blocks(x)[1][-1][-2]
        assert torch.allclose(both["stages_pre_relu"][-1], block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(
            inputs))))) + block.shortcut(inputs), atol=1e-6)


@pytest.mark.parametrize("method", ["ab", "ofd", "reviewkd"])
def test_methods_on_pre_relu_features_refuse_models_without_them(method):
    p = probe()
    no_pre_relu = type(p)({k: v for k, v in p.teacher.items() if not k.startswith("stages_pre_relu")}, p.student,
                          p.hint, p.batch_size)
    with pytest.raises(UserError, match="before the ReLU, which the teacher's model does not give"):
        build(method, no_pre_relu)


@pytest.mark.parametrize("method", ["vid", "ab", "ft", "ofd", "reviewkd"])
def test_map_methods_refuse_vector_features(method):
    with pytest.raises(UserError, match="spatial feature maps"):
        build(method, probe(vectors=True))


def test_the_new_cells_are_listed_on_the_resnet_pair(home, capsys):
    from harness.cli import main

    assert main(["list", "--dataset", "digits"]) == 0
    listed = capsys.readouterr().out.split()
    for method in ("vid", "ab", "ft", "ofd", "reviewkd"):
        assert f"digits/resnet20-resnet8/{method}" in listed
        assert f"digits/hinton1200-hinton800/{method}" not in listed  # MLP: vectors, no maps


# ---- VID --------------------------------------------------------------------------------------
def test_vid_golden():
    mean, target, alpha = rand(2, 3, 2, 2), rand(2, 3, 2, 2, seed=1), rand(3, seed=2)
    variances = [math.log(1 + math.exp(a)) + 1e-5 for a in alpha.tolist()]
    total = 0.0
    for n in range(2):
        for c in range(3):
            for y in range(2):
                for x in range(2):
                    d = mean[n, c, y, x].item() - target[n, c, y, x].item()
                    total += 0.5 * (d * d / variances[c] + math.log(variances[c]))
    assert vid_loss(mean, target, alpha).item() == pytest.approx(total / 24, rel=1e-6)  # the target in fp32


def test_vid_is_repdistillers_vidloss_and_counts_its_parameters():
    """RepDistiller's VIDLoss (= mdistiller's vid_loss): pool the larger map, regress, variance
    log(1 + exp(log_scale)) + eps, mean of the NLL; summed over feat[1:-1] with -b 1. Ratio 1."""
    p = probe(student_channels=(8, 16, 32))
    vid, _ = build("vid", p)
    student, (teacher,) = batch_features(p)
    student["stages"][0] = torch.randn(8, 8, 64, 64)  # a student map larger than the teacher's (32 x 32)
    expected = 0.0
    for f_s, f_t, regressor, log_scale in zip(student["stages"], teacher["stages"], vid.regressors, vid.alphas):
        s_h, t_h = f_s.shape[2], f_t.shape[2]
        if s_h > t_h:
            f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
        elif s_h < t_h:
            f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
        pred_var = (torch.log(1.0 + torch.exp(log_scale)) + 1e-5).view(1, -1, 1, 1)
        expected = expected + torch.mean(0.5 * ((regressor(f_s) - f_t) ** 2 / pred_var + torch.log(pred_var)))
    assert vid(student, teacher, None)["vid"].item() == pytest.approx(expected.item(), rel=1e-5)
    start = vid.alphas[0]
    assert torch.allclose(F.softplus(start) + 1e-5, torch.full_like(start, 5.0))  # init_pred_var = 5
    assert vid.regressors[2][0].in_channels == 32 and vid.regressors[2][0].out_channels == 64  # mid = teacher width
    regressors = sum(q.numel() for q in vid.regressors.parameters())
    assert vid.extra_parameters() == regressors + 16 + 32 + 64  # the variances count too


# ---- AB ---------------------------------------------------------------------------------------
def naive_ab(source, target, margin):
    total = 0.0
    for (_, x), (_, t) in zip(elements(source), elements(target)):
        if t > 0 and x <= margin:
            total += (x - margin) ** 2
        elif t <= 0 and x > -margin:
            total += (x + margin) ** 2
    return total


def test_ab_golden():
    source, target = 2 * rand(3, 4, 3, 3), rand(3, 4, 3, 3, seed=1)
    for margin in (1.0, 0.3):
        assert ab_loss(source, target, margin).item() == pytest.approx(naive_ab(source, target, margin), rel=1e-9)
    assert ab_loss(target.sign() * 2, target, 1.0).item() == 0  # every neuron past its boundary by the margin


def test_ab_pre_phase_is_repdistillers_abloss_and_the_main_phase_is_ce_alone():
    """RepDistiller's ABLoss over feat[1:-1] (preact): w = 2^(i - n + 1), each sum / bsz / 1000 * 3,
    identity connectors for equal shapes, 30 init epochs of 240. Ratio 1."""
    ab, p = build("ab")
    objective = build_objective(SPEC, "ab", {}, p)
    assert objective.phases(240) == [("ab", 30), ("main", 240)]
    student, (teacher,) = batch_features(p)
    g_s, g_t = student["stages_pre_relu"], teacher["stages_pre_relu"]
    weights = [2 ** (i - 3 + 1) for i in range(3)]
    expected = 0.0
    for w, s, t in zip(weights, g_s, g_t):
        loss = ((s + 1.0) ** 2 * ((s > -1.0) & (t <= 0)).float() + (s - 1.0) ** 2 * ((s <= 1.0) & (t > 0)).float())
        expected += w * loss.abs().sum() / 8 / 1000 * 3
    assert ab.phase_losses("ab", student, teacher, None)["ab"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert ab(student, teacher, None) == {} and ab.extra_parameters() == 0


def test_ab_connects_a_narrower_student_and_trains_through_it():
    p = probe(student_channels=(8, 16, 32))
    ab, _ = build("ab", p)
    assert [c.proj[0].in_channels for c in ab.connectors] == [8, 16, 32]
    student, (teacher,) = batch_features(p)
    student = {k: [s.requires_grad_(True) for s in v] if isinstance(v, list) else v for k, v in student.items()}
    ab.phase_losses("ab", student, teacher, None)["ab"].backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student["stages_pre_relu"])


# ---- FT ---------------------------------------------------------------------------------------
def naive_factor_code(f, form):
    out = []
    for sample in f:
        c, h, w = sample.shape
        if form == "repdistiller":
            v = [sum(sample[k, y, x].item() ** 2 for k in range(c)) / c for y in range(h) for x in range(w)]
        else:
            v = sample.flatten().tolist()
        norm = math.sqrt(sum(a * a for a in v))
        out.append([a / norm for a in v])
    return out


@pytest.mark.parametrize("form", ["repdistiller", "paper"])
def test_ft_golden(form):
    f_s, f_t = rand(3, 4, 2, 2), rand(3, 4, 2, 2, seed=1)
    a, b = naive_factor_code(f_s, form), naive_factor_code(f_t, form)
    expected = sum(abs(u - v) for ra, rb in zip(a, b) for u, v in zip(ra, rb)) / (3 * len(a[0]))
    assert ft_loss(f_s, f_t, form).item() == pytest.approx(expected, rel=1e-9)


def test_ft_is_repdistillers_factor_transfer_and_the_authors_eq3():
    """RepDistiller's FactorTransfer (p1 = 2, p2 = 1, the larger map pooled) and the authors'
    utils.FT with nn.L1Loss: ratio 1 to each, in its own form."""
    f_s, f_t = rand(4, 8, 4, 4), rand(4, 8, 2, 2, seed=3)

    def factor(f):
        return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))

    pooled = F.adaptive_avg_pool2d(f_s, (2, 2))
    assert ft_loss(f_s, f_t, "repdistiller").item() == pytest.approx(
        (factor(pooled) - factor(f_t)).abs().mean().item(), rel=1e-9)
    authors = torch.nn.L1Loss()(F.normalize(pooled.view(4, -1)), F.normalize(f_t.view(4, -1)))
    assert ft_loss(f_s, f_t, "paper").item() == pytest.approx(authors.item(), rel=1e-9)


def test_ft_paraphraser_phase_moves_only_the_paraphraser_and_the_main_phase_leaves_it_frozen():
    ft, p = build("ft")
    objective = build_objective(SPEC, "ft", {}, p)
    assert objective.phases(240) == [("ft_paraphraser", 30), ("main", 240)]
    assert objective.phase_lr_scale("ft_paraphraser", 240) == pytest.approx(0.2)  # RepDistiller's 0.01 of 0.05
    assert ft.paraphraser.encoder[2].out_channels == 32 and ft.translator[3].out_channels == 32  # k = 0.5 of 64
    student, (teacher,) = batch_features(p)
    student = {k: [s.requires_grad_(True) for s in v] if isinstance(v, list) else v for k, v in student.items()}
    ft.phase_losses("ft_paraphraser", student, teacher, None)["ft_paraphraser"].backward()
    assert all(q.grad is not None for q in ft.paraphraser.parameters())
    assert all(q.grad is None for q in ft.translator.parameters())
    assert all(s.grad is None for s in student["stages"])
    ft.zero_grad(set_to_none=True)
    ft(student, teacher, None)["ft"].backward()
    assert all(q.grad is None for q in ft.paraphraser.parameters())
    assert all(q.grad is not None for q in ft.translator.parameters())
    assert student["stages"][-1].grad.abs().sum() > 0


def test_ft_paraphraser_phase_through_the_engine_changes_no_student_parameter(home):
    from harness.running.runner import Runner
    from harness.spec.options import RunOptions
    from harness.tracking.tracking import default_tracking_uri
    from harness.training.engine import TrainConfig, Trainer

    runner = Runner(SPEC, home, default_tracking_uri(home))
    cell = SPEC.cell("digits/resnet20-resnet8/ft")
    opts = RunOptions(smoke=True, progress=False)
    plan = runner.plan(cell, opts)
    pair = SPEC.pairs[cell.pair]
    teacher = build_model(SPEC.models[pair.teacher], SPEC.datasets["digits"])  # untrained: shapes are enough
    trainer = Trainer(plan.student, plan.objective, plan.data.batches(plan.device, splits=("train",)),
                      TrainConfig(plan.recipe, 0, pair.stages.teacher, pair.stages.student, opts, label=cell.id),
                      plan.device, teacher=[teacher])
    ft = plan.objective.parts["ft"]
    before = {name: [q.detach().clone() for q in module.parameters()]
              for name, module in [("student", plan.student), ("translator", ft.translator),
                                   ("paraphraser", ft.paraphraser), ("teacher", teacher)]}
    batch_plan = trainer.batches.epoch_plan(plan.recipe.batch_size, torch.Generator().manual_seed(0))
    losses, _ = trainer.train_step(*trainer.batches.train_batch(batch_plan, 0), 0, "ft_paraphraser")
    assert set(losses) == {"ft_paraphraser"} and torch.isfinite(losses["ft_paraphraser"])
    after = {"student": plan.student, "translator": ft.translator, "paraphraser": ft.paraphraser, "teacher": teacher}
    for name, module in after.items():
        moved = any(not torch.equal(q, r) for q, r in zip(module.parameters(), before[name]))
        assert moved == (name == "paraphraser"), name


# ---- OFD --------------------------------------------------------------------------------------
def naive_margin(gamma, beta):
    """E[x | x < 0] for N(beta, gamma^2) by the trapezoid rule on [beta - 12 |gamma|, 0]."""
    s, m = abs(gamma), beta
    lo, steps = min(m - 12 * s, -1e-9), 200000
    h = -lo / steps
    xs = [lo + k * h for k in range(steps + 1)]
    density = [math.exp(-((x - m) / s) ** 2 / 2) for x in xs]
    weights = [0.5 if k in (0, steps) else 1.0 for k in range(steps + 1)]
    mass = sum(w * d for w, d in zip(weights, density))
    return sum(w * d * x for w, d, x in zip(weights, density, xs)) / mass


def test_ofd_margin_golden_and_its_tail_rule():
    gamma, beta = torch.tensor([1.0, 0.5, -2.0, 0.3]), torch.tensor([0.0, 0.4, -1.0, 0.6])
    margins = bn_margin(gamma, beta)
    for g, b, got in zip(gamma.tolist(), beta.tolist(), margins.tolist()):
        assert got == pytest.approx(naive_margin(g, b), rel=1e-4)
    # P(x < 0) <= 0.001 (beta > 3.09 sigma): -3 sigma, as the authors' get_margin_from_BN
    assert bn_margin(torch.tensor([1.0]), torch.tensor([3.2])).item() == pytest.approx(-3.0)


def test_ofd_margin_is_the_authors_get_margin_from_bn():
    from scipy.stats import norm

    torch.manual_seed(0)
    gamma, beta = torch.rand(16) + 0.1, torch.randn(16) * 2
    expected = []
    for s, m in zip(gamma.abs().tolist(), beta.tolist()):
        if norm.cdf(-m / s) > 0.001:
            expected.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / norm.cdf(-m / s) + m)
        else:
            expected.append(-3 * s)
    assert torch.allclose(bn_margin(gamma, beta), torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6)


def test_ofd_loss_golden():
    source, target, margin = rand(2, 3, 2, 2), rand(2, 3, 2, 2, seed=1), -rand(3, seed=2).abs()
    total = 0.0
    for n in range(2):
        for c in range(3):
            for y in range(2):
                for x in range(2):
                    s, t = source[n, c, y, x].item(), max(target[n, c, y, x].item(), margin[c].item())
                    if s > t or t > 0:
                        total += (s - t) ** 2
    assert ofd_loss(source, target, margin).item() == pytest.approx(total / 2, rel=1e-6)  # the target in fp32


def test_ofd_is_mdistillers_ofd_loss():
    """mdistiller's feat_loss (three cases, mean over the batch, summed) over preact_feats[1:], the
    teacher pooled to the student's size, / 2^(n - i - 1), times FEAT_WEIGHT 0.001. Ratio 1."""
    p = probe(student_channels=(8, 16, 32))
    ofd, _ = build("ofd", p)
    student, (teacher,) = batch_features(p)
    teacher["stages_pre_relu"][0] = torch.randn(8, 16, 64, 64)  # a teacher map larger than the student's
    expected = 0.0
    for i, (connector, f_s, f_t, bn) in enumerate(zip(ofd.connectors, student["stages_pre_relu"],
                                                      teacher["stages_pre_relu"], teacher["stages_pre_relu_bn"])):
        margin = bn_margin(*bn[0]).view(1, -1, 1, 1)
        source, target = connector(f_s), F.adaptive_avg_pool2d(f_t, f_s.shape[-2:])
        loss = ((source - margin) ** 2 * ((source > margin) & (target <= margin)).float()
                + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0)).float()
                + (source - target) ** 2 * (target > 0).float())
        expected = expected + loss.abs().mean(dim=0).sum() / 2 ** (3 - i - 1)
    assert ofd(student, teacher, None)["ofd"].item() == pytest.approx(0.001 * expected.item(), rel=1e-5)
    assert ofd.extra_parameters() == sum(s * t + 2 * t for s, t in [(8, 16), (16, 32), (32, 64)])


def test_ofd_reads_the_margins_of_the_teachers_own_batch_norms():
    torch.manual_seed(0)
    model = build_model(SPEC.models["resnet20"], SPEC.datasets["digits"]).eval()
    for bn in model.pre_relu_batchnorms():
        bn.weight.data.uniform_(0.2, 1.5)
        bn.bias.data.normal_()
    with torch.no_grad():
        features = extract_features(model, torch.randn(2, 1, 8, 8), frozenset({"stages_pre_relu_bn"}), [1, 2, 3])
    for bn_feature, bn in zip(features["stages_pre_relu_bn"], model.pre_relu_batchnorms()[1:]):
        assert torch.equal(bn_margin(*bn_feature[0]), bn_margin(bn.weight, bn.bias))


# ---- ReviewKD ---------------------------------------------------------------------------------
def naive_mean_pool(f, size):
    n, c, h, w = f.shape
    k = h // size
    return [[[[sum(f[a, b, y * k + i, x * k + j].item() for i in range(k) for j in range(k)) / k**2
               for x in range(size)] for y in range(size)] for b in range(c)] for a in range(n)]


def naive_mse(a, b):
    flat_a, flat_b = torch.tensor(a, dtype=torch.float64).flatten(), torch.tensor(b, dtype=torch.float64).flatten()
    return sum((u - v) ** 2 for u, v in zip(flat_a.tolist(), flat_b.tolist())) / len(flat_a)


def test_hcl_golden():
    levels_s = [rand(2, 3, 8, 8), rand(2, 3, 2, 2, seed=1), rand(2, 3, 1, 1, seed=2)]
    levels_t = [rand(2, 3, 8, 8, seed=3), rand(2, 3, 2, 2, seed=4), rand(2, 3, 1, 1, seed=5)]
    expected = 0.0
    for s, t in zip(levels_s, levels_t):
        terms = [(1.0, naive_mse(s.tolist(), t.tolist()))]
        for size in [l for l in (4, 2, 1) if l < s.shape[-1]]:
            terms.append((terms[-1][0] / 2, naive_mse(naive_mean_pool(s, size), naive_mean_pool(t, size))))
        expected += sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    assert hcl_loss(levels_s, levels_t).item() == pytest.approx(expected, rel=1e-6)  # the teacher in fp32


def test_reviewkd_is_mdistillers_review_kd():
    """mdistiller's ReviewKD.forward_train re-derived step by step (features reversed, ABF with
    `shape` = the student's size and `out_shape` = the teacher's, hcl_loss with cnt / tot), on our
    modules' weights; times REVIEWKD_WEIGHT and min(epoch / 20, 1). Ratio 1 at weight 1."""
    p = probe(student_channels=(8, 16, 32))
    review, _ = build("reviewkd", p)
    student, (teacher,) = batch_features(p)
    student["stages"][0] = torch.randn(8, 8, 16, 16)  # a student map smaller than the teacher's (32 x 32)

    def mdistiller_abf(abf, x, y, shape, out_shape):
        n, _, h, w = x.shape
        x = abf.reduce(x)
        if abf.attention is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = abf.attention(torch.cat([x, y], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return abf.out(x), x

    def mdistiller_hcl(fstudent, fteacher):
        loss_all = 0.0
        for fs, ft in zip(fstudent, fteacher):
            h = fs.shape[2]
            loss, cnt, tot = F.mse_loss(fs, ft, reduction="mean"), 1.0, 1.0
            for l in [4, 2, 1]:
                if l >= h:
                    continue
                cnt /= 2.0
                loss += F.mse_loss(F.adaptive_avg_pool2d(fs, (l, l)), F.adaptive_avg_pool2d(ft, (l, l))) * cnt
                tot += cnt
            loss_all = loss_all + loss / tot
        return loss_all

    x = (student["stages"] + [student["pre_logits"][:, :, None, None]])[::-1]
    t_levels = teacher["stages_pre_relu"] + [teacher["pre_logits"][:, :, None, None]]
    shapes, out_shapes = [f.shape[-1] for f in x], [f.shape[-1] for f in t_levels[::-1]]
    results = []
    out, res = mdistiller_abf(review.fusions[0], x[0], None, None, out_shapes[0])
    results.append(out)
    for features, abf, shape, out_shape in zip(x[1:], review.fusions[1:], shapes[1:], out_shapes[1:]):
        out, res = mdistiller_abf(abf, features, res, shape, out_shape)
        results.insert(0, out)
    expected = mdistiller_hcl(results, t_levels)
    for epoch, ramp in [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (100, 1.0)]:  # mdistiller's epoch = ours + 1
        review.set_epoch(epoch, 240)
        assert review(student, teacher, None)["reviewkd"].item() == pytest.approx(ramp * expected.item(), rel=1e-5)
    assert review.fusions[0].attention is None and all(f.attention is not None for f in review.fusions[1:])
    assert review.fusions[0].reduce[0].out_channels == 32  # min(512, the deepest student width)
