"""The seeds' missing baselines: several teachers in a cell (mt), the adversarial baselines (adv,
kdgan). Each loss against a naive loop; the one-backward adversarial split; multi-teacher pairs
through the spec, the engine and the CLI."""

import math

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.spec.spec import DEFAULT_SPEC, load_spec
from methods import build_objective
from methods.adv import Adversarial, discriminator_loss, generator_loss
from methods.common import Discriminator, judge_frozen, ramp
from methods.kdgan import KDGAN, kdgan_discriminator_loss
from methods.mt import averaged_soft_targets_loss, relative_dissimilarity_loss
from tests.test_methods import probe

SPEC = load_spec()


def test_averaged_soft_targets_match_a_naive_loop():
    torch.manual_seed(0)
    s, teachers, tau = torch.randn(5, 7), [torch.randn(5, 7) for _ in range(3)], 3.0
    total = 0.0
    for i in range(5):
        p = [sum(math.exp(t[i, c] / tau) / sum(math.exp(t[i, d] / tau) for d in range(7)) for t in teachers) / 3
             for c in range(7)]
        q = [math.exp(s[i, c] / tau) / sum(math.exp(s[i, d] / tau) for d in range(7)) for c in range(7)]
        total += sum(p[c] * math.log(p[c] / q[c]) for c in range(7))
    assert averaged_soft_targets_loss(s, teachers, tau).item() == pytest.approx(tau**2 * total / 5, rel=1e-5)


def _naive_rd(student, teachers, margin):
    def dist(f, a, b):
        fa, fb = f[a].flatten() / f[a].norm(), f[b].flatten() / f[b].norm()
        return (fa - fb).norm().item()

    n, terms = student.shape[0], []
    for i in range(n):
        for j in range(n):
            for k in range(n):
                if len({i, j, k}) < 3:
                    continue
                votes = sum((dist(t, i, j) < dist(t, i, k)) - (dist(t, i, j) > dist(t, i, k)) for t in teachers)
                if votes > 0:  # the teachers' majority puts j closer to i than k
                    terms.append(max(0.0, dist(student, i, j) - dist(student, i, k) + margin))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("n_teachers", [1, 2, 3])
def test_relative_dissimilarity_matches_a_naive_triple_loop(n_teachers):
    torch.manual_seed(n_teachers)
    student = torch.randn(6, 4, 3)  # maps are flattened per sample; widths differ from the teachers'
    teachers = [torch.randn(6, 9) for _ in range(n_teachers)]
    got = relative_dissimilarity_loss(student, teachers, margin=0.3).item()
    assert got == pytest.approx(_naive_rd(student, teachers, 0.3), rel=1e-4)


def test_relative_dissimilarity_is_zero_when_the_student_keeps_the_teachers_order_by_the_margin():
    teacher = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert relative_dissimilarity_loss(teacher, [teacher], margin=0.0).item() == 0.0
    reversed_order = teacher[[2, 1, 0]]  # the student puts the far image near: positive loss
    assert relative_dissimilarity_loss(reversed_order, [teacher], margin=0.0).item() > 0


def test_gan_losses_match_their_log_sigmoid_forms():
    torch.manual_seed(0)
    real, fake, other = torch.randn(8), torch.randn(8), torch.randn(8)
    log_sig = torch.nn.functional.logsigmoid
    assert discriminator_loss(real, fake).item() == pytest.approx(
        (-(log_sig(real).mean()) - log_sig(-fake).mean()).item() / 2, rel=1e-6)
    assert generator_loss(fake).item() == pytest.approx(-log_sig(fake).mean().item(), rel=1e-6)
    alpha = 0.3
    expected = -log_sig(real).mean() - alpha * log_sig(-fake).mean() - (1 - alpha) * log_sig(-other).mean()
    assert kdgan_discriminator_loss(real, fake, other, alpha).item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_frozen_judge_passes_gradients_to_its_input_only():
    torch.manual_seed(0)
    disc = Discriminator(4, 8)
    x = torch.randn(3, 4, requires_grad=True)
    judge_frozen(disc, x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())
    assert torch.equal(judge_frozen(disc, x), disc(x))  # the same function


def test_ramp():
    assert ramp(torch.tensor(5), 10).item() == pytest.approx(0.5)
    assert ramp(torch.tensor(50), 10).item() == 1.0
    assert ramp(torch.tensor(0), 0) == 1.0


def _adversarial_objective(method: str):
    p = probe(vectors=True)
    objective = build_objective(SPEC, method, {}, p)
    torch.manual_seed(0)
    n = 8
    student = {k: v.repeat(n // 2, *[1] * (v.ndim - 1)).requires_grad_(True) for k, v in p.student.items()
               if k != "stages"}
    teacher = [{k: v.repeat(n // 2, *[1] * (v.ndim - 1)) for k, v in p.teacher.items() if k != "stages"}]
    return objective, student, teacher, torch.randint(0, 10, (n,))


@pytest.mark.parametrize("method, student_term, critic_term", [("adv", "adv", "adv_d"),
                                                                ("kdgan", "kdgan_adv", "kdgan_d")])
def test_one_backward_moves_each_side_only_by_its_own_loss(method, student_term, critic_term):
    objective, student, teacher, y = _adversarial_objective(method)
    part = objective.parts[method]
    critic = list(part.discriminator.parameters())
    owned = {id(p) for opt in objective.extra_optimizers() for p in opt.params}
    assert owned == {id(p) for p in critic}  # the critic steps with its own optimizer, not the student's

    losses = objective(student, teacher, y)
    grads = torch.autograd.grad(losses[critic_term], [student["logits"], student["pre_logits"]] + critic,
                                allow_unused=True)
    assert grads[0] is None and grads[1] is None  # the critic's loss does not move the student
    assert any(g is not None and g.abs().sum() > 0 for g in grads[2:])

    losses = objective(student, teacher, y)
    grads = torch.autograd.grad(losses[student_term], [student["logits"], student["pre_logits"]] + critic,
                                allow_unused=True)
    assert all(g is None for g in grads[2:])  # the student's adversarial loss does not move the critic
    assert any(g is not None and g.abs().sum() > 0 for g in grads[:2])


def test_adversarial_weight_ramps_with_training_steps():
    objective, student, teacher, y = _adversarial_objective("adv")
    ramped = build_objective(SPEC, "adv", {"adv": {"warmup_steps": 4}}, probe(vectors=True))
    ramped.load_state_dict(objective.state_dict())
    full = objective(student, teacher, y)["adv"].item()
    first = ramped(student, teacher, y)["adv"].item()
    assert first == pytest.approx(full / 4, rel=1e-5)  # step 1 of 4
    assert int(ramped.parts["adv"].steps) == 1  # a buffer: checkpointed and resumed with the objective


def test_adv_projects_a_narrower_student_and_counts_its_extra_parameters():
    p = probe(teacher_channels=(16, 32, 64), student_channels=(8, 16, 32), vectors=True)
    adv = Adversarial(build_objective(SPEC, "adv", {}, p).parts["adv"].params, p)
    assert adv.projection.in_features == 32 and adv.projection.out_features == 64
    assert adv.extra_parameters() == sum(x.numel() for x in adv.parameters()) > 32 * 64


def test_kdgan_judges_labels_given_the_teachers_view_of_the_image():
    p = probe(vectors=True)
    kdgan = KDGAN(build_objective(SPEC, "kdgan", {}, p).parts["kdgan"].params, p)
    assert kdgan.discriminator.net[0].in_features == 64 + 10  # teacher's penultimate width + classes


def test_kr_combines_with_kdgan():
    objective = build_objective(SPEC, "kr+kdgan", {}, probe())
    assert {"kr", "kr_agg", "kdgan_kd", "kdgan_adv", "kdgan_d"} <= set().union(
        *(part.loss_terms for part in objective.parts.values()))
    assert len(objective.extra_optimizers()) == 2  # KR's aggregation layers and KDGAN's critic


def test_mt_reads_every_teacher_and_single_teacher_methods_are_refused_on_an_ensemble():
    p = probe(vectors=True)
    objective = build_objective(SPEC, "mt", {}, p)
    objective.check_teachers(3)
    with pytest.raises(Exception, match="reads one teacher, and this pair has 3"):
        build_objective(SPEC, "kd", {}, p).check_teachers(3)
    build_objective(SPEC, "baseline", {}, p).check_teachers(3)  # no teacher read: fine
    with pytest.raises(Exception, match="learns from several teachers, and this pair has 1"):
        objective.check_teachers(1)
    # the soft term averages the teachers: two copies of one teacher equal that teacher alone
    n = 8
    student = {k: (v.repeat(n // 2, 1) if k != "stages" else [s.repeat(n // 2, 1) for s in v])
               for k, v in p.student.items()}
    teacher = {k: (v.repeat(n // 2, 1) if k != "stages" else [s.repeat(n // 2, 1) + torch.randn_like(s.repeat(n // 2, 1))
                                                              for s in v]) for k, v in p.teacher.items()}
    y = torch.zeros(n, dtype=torch.long)
    one, two = objective(student, [teacher], y), objective(student, [teacher, teacher], y)
    assert one["mt_kd"].item() == pytest.approx(two["mt_kd"].item(), rel=1e-6)
    assert one["mt_rd"].item() == pytest.approx(two["mt_rd"].item(), rel=1e-6)


def _spec_with_pair(tmp_path, name, pair):
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["pairs"][name] = pair
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("name, more, message", [
    ("hinton1200-hinton800x", [{"model": "hinton1200", "seed": 1}], "named TEACHER-STUDENT"),
    ("hinton1200x2-hinton800", [{"model": "hinton1200", "seed": 0}], "its own \\(model, seed\\)"),
    ("hinton1200x2-hinton800", [{"model": "nosuchnet", "seed": 1}], "unknown model"),
])
def test_bad_multi_teacher_pairs_are_refused(tmp_path, capsys, name, more, message):
    path = _spec_with_pair(tmp_path, name, {"teacher": "hinton1200", "student": "hinton800", "datasets": ["digits"],
                                            "stages": {"teacher": [0], "student": [0]}, "more_teachers": more})
    assert main(["--spec", str(path), "list"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err)


@pytest.mark.parametrize("cell, message", [("digits/hinton1200x3-hinton800/kd", "reads one teacher, and this pair has 3"),
                                           ("digits/hinton1200-hinton800/mt", "learns from several teachers"),
                                           ("digits/resnet20-resnet8/adv", "hyperparameter d_lr")])
def test_a_method_that_does_not_fit_the_pair_fails_before_any_teacher_trains(home, capsys, cell, message):
    args = ["--set", "adv.d_lr=-1"] if "adv" in cell else []
    assert main(["run", "--cell", cell, "--smoke", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (home / "teachers").exists()
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_mt_cell_trains_each_teacher_once_and_logs_their_cost(home):
    assert main(["run", "--cell", "digits/hinton1200x3-hinton800/mt", "--smoke", "--no-progress"]) == 0
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    teachers = sorted(r.data.tags["seed"] for r in runs if r.data.tags["role"] == "teacher")
    assert teachers == ["0", "1", "2"] and len(list((home / "teachers").glob("*.safetensors"))) == 3
    (student,) = [r for r in runs if r.data.tags["role"] == "student"]
    assert student.data.metrics["teacher_parameters"] == 3 * sum(
        p.numel() for p in __import__("harness.models", fromlist=["build_model"]).build_model(
            SPEC.models["hinton1200"], SPEC.datasets["digits"]).parameters())
    assert student.data.metrics["epoch_teacher_seconds"] > 0
    assert len(student.data.params["teacher.key"].split("+")) == 3
    assert {"train/loss_mt_kd", "train/loss_mt_rd"} <= set(student.data.metrics)
    # a second run of the cell reuses the three cached teachers: no new teacher run
    assert main(["run", "--cell", "digits/hinton1200x3-hinton800/mt", "--smoke", "--no-progress", "--seed", "1"]) == 0
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sum(r.data.tags["role"] == "teacher" for r in runs) == 3


@pytest.mark.parametrize("method", ["adv", "kdgan"])
def test_adversarial_cells_run_and_their_critic_moves(home, method):
    assert main(["run", "--cell", f"digits/resnet20-resnet8/{method}", "--smoke", "--no-progress"]) == 0
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (student,) = [r for r in runs if r.data.tags["role"] == "student"]
    assert student.data.metrics["extra_parameters"] > 0
    critic = f"train/loss_{method}_d" if method == "adv" else "train/loss_kdgan_d"
    assert math.isfinite(student.data.metrics[critic])


def test_list_and_suites_keep_the_teacher_rule(home, capsys):
    from methods import runs_on_pair

    assert main(["list", "--dataset", "digits"]) == 0
    listed = capsys.readouterr().out.split()
    assert "digits/hinton1200x3-hinton800/mt" in listed and "digits/hinton1200x3-hinton800/baseline" in listed
    assert "digits/hinton1200x3-hinton800/kd" not in listed and "digits/hinton1200-hinton800/kd" in listed
    assert main(["list", "--dataset", "digits", "--all"]) == 0
    everything = capsys.readouterr().out.splitlines()
    assert "digits/hinton1200x3-hinton800/kd  # cannot run: kd reads one teacher; the pair has several" in everything
    assert "digits/hinton1200-hinton800/mt  # cannot run: mt needs a multi-teacher pair" in everything
    for name, suite in SPEC.suites.items():
        for cell in map(SPEC.cell, suite.cells):
            assert runs_on_pair(SPEC, cell.method, cell.pair), f"suite {name}: {cell.id}"


def test_every_method_has_a_card_with_its_departures():
    """docs/methods/<module>.md for every method class, with the sections the guide asks for."""
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs" / "methods"
    for name, method in SPEC.methods.items():
        card = docs / f"{method.class_.split('.')[1]}.md"
        assert card.exists(), f"method {name}: no card {card.name}"
        text = card.read_text()
        assert "Departures from the paper" in text and "Formula as implemented" in text, card.name


def test_every_teacher_runs_once_per_batch_and_gets_no_gradient(home):
    """Through the engine: a 3-teacher mt step calls each teacher's forward once and leaves the
    teachers' parameters without gradients and unchanged."""
    from harness.running.runner import Runner
    from harness.spec.options import RunOptions
    from harness.tracking.tracking import default_tracking_uri
    from harness.training.engine import TrainConfig, Trainer

    runner = Runner(SPEC, home, default_tracking_uri(home))
    cell = SPEC.cell("digits/hinton1200x3-hinton800/mt")
    opts = RunOptions(smoke=True, progress=False)
    plan = runner.plan(cell, opts)
    recipe, device, data, student, objective = plan.recipe, plan.device, plan.data, plan.student, plan.objective
    teachers = runner.teachers(cell.dataset, SPEC.pairs[cell.pair], opts)
    assert len(teachers) == 3 and len({id(t) for t in teachers}) == 3
    calls = [0, 0, 0]
    for i, teacher in enumerate(teachers):
        # the classifier: every feature path (plain forward or forward_intermediates) ends in it
        teacher.get_classifier().register_forward_pre_hook(
            lambda module, args, i=i: calls.__setitem__(i, calls[i] + 1))
    before = [[p.detach().clone() for p in t.parameters()] for t in teachers]
    pair = SPEC.pairs[cell.pair]
    trainer = Trainer(student, objective, data.batches(device, splits=("train",)),
                      TrainConfig(recipe, 0, pair.stages.teacher, pair.stages.student, opts, label=cell.id),
                      device, teacher=teachers)
    batches = trainer.batches
    plan = batches.epoch_plan(recipe.batch_size, torch.Generator().manual_seed(0))
    for step in range(2):
        trainer.train_step(*batches.train_batch(plan, step), step, "main")
    assert calls == [2, 2, 2]
    for teacher, saved in zip(teachers, before):
        assert all(p.grad is None for p in teacher.parameters())
        assert all(torch.equal(p, q) for p, q in zip(teacher.parameters(), saved))


def test_one_engine_step_moves_both_the_student_and_the_critic(home):
    """adv in the engine: one step changes the student's and the discriminator's parameters, each by
    its own optimizer (the card's simultaneous updates)."""
    from harness.running.runner import Runner
    from harness.spec.options import RunOptions
    from harness.tracking.tracking import default_tracking_uri
    from harness.training.engine import TrainConfig, Trainer

    runner = Runner(SPEC, home, default_tracking_uri(home))
    cell = SPEC.cell("digits/hinton1200-hinton800/adv")
    opts = RunOptions(smoke=True, progress=False)
    plan = runner.plan(cell, opts)
    recipe, device, data, student, objective = plan.recipe, plan.device, plan.data, plan.student, plan.objective
    teachers = runner.teachers(cell.dataset, SPEC.pairs[cell.pair], opts)
    pair = SPEC.pairs[cell.pair]
    trainer = Trainer(student, objective, data.batches(device, splits=("train",)),
                      TrainConfig(recipe, 0, pair.stages.teacher, pair.stages.student, opts, label=cell.id),
                      device, teacher=teachers)
    critic = objective.parts["adv"].discriminator
    student_before = [p.detach().clone() for p in student.parameters()]
    critic_before = [p.detach().clone() for p in critic.parameters()]
    main_ids = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not main_ids & {id(p) for p in critic.parameters()}
    plan = trainer.batches.epoch_plan(recipe.batch_size, torch.Generator().manual_seed(0))
    trainer.train_step(*trainer.batches.train_batch(plan, 0), 0, "main")
    assert any(not torch.equal(p, q) for p, q in zip(student.parameters(), student_before))
    assert any(not torch.equal(p, q) for p, q in zip(critic.parameters(), critic_before))
