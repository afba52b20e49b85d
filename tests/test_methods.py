"""Every method through the harness: declared loss terms, combinations, extra parameters,
set-up errors, phases, and a smoke cell on digits and on the CIFAR fixture."""

import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.errors import UserError
from harness.spec.spec import load_spec
from methods import build_objective
from methods.base import Probe

SPEC = load_spec()
METHODS = sorted(SPEC.methods)
COMBINATIONS = ["kd+nst_poly", "kd+fitnet_hint", "kd+at", "kd+fitnet_hint+nst_poly"]


def probe(teacher_channels=(16, 32, 64), student_channels=(16, 32, 64), batch=64, vectors=False):
    def features(channels, classes=10, blocks=False):
        if vectors:
            stages = [torch.randn(2, c) for c in channels]
        else:
            stages = [torch.randn(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate(channels)]
        out = {"stages": stages, "logits": torch.randn(2, classes), "pre_logits": torch.randn(2, channels[-1])}
        if not vectors:  # the CIFAR ResNets' taps before their last ReLU, and the BN (weight, bias) feeding it
            out["stages_pre_relu"] = [torch.randn_like(s) for s in stages]
            out["stages_pre_relu_bn"] = [torch.stack([torch.rand(c) + 0.5, torch.randn(c)]).expand(2, -1, -1)
                                         for c in channels]
        if blocks and not vectors:  # per stage: its input, then 3 residual blocks' outputs (a ResNet-20)
            inputs = [torch.randn(2, channels[0], 32, 32)] + stages[:-1]
            out["blocks"] = [[x] + [torch.randn_like(s) for _ in range(3)] for x, s in zip(inputs, stages)]
        return out
    return Probe(features(teacher_channels, blocks=True), features(student_channels), hint=1, batch_size=batch)


def _grow(value, n):
    if isinstance(value, list):
        return [_grow(v, n) for v in value]
    return value.repeat(n // 2, *[1] * (value.ndim - 1)) + 0.1 * torch.randn(n, *value.shape[1:])


def batch_features(p: Probe, n=8):
    """Student features and the teachers' (a list of one feature dict per teacher, as the engine gives)."""
    return ({k: _grow(v, n) for k, v in p.student.items()}, [{k: _grow(v, n) for k, v in p.teacher.items()}])


@pytest.mark.parametrize("method", METHODS + COMBINATIONS)
def test_terms_are_exactly_the_declared_ones(method):
    p = probe()
    objective = build_objective(SPEC, method, {}, p)
    student, teacher = batch_features(p)
    if objective.reads_indices:  # CRD: a training set of 64 images, the batch its first 8
        objective.bind_training_set(torch.arange(64) % 10)
        student["indices"] = torch.arange(8)
    losses = objective(student, teacher, torch.randint(0, 10, (8,)))
    declared = {"ce"}.union(*(part.loss_terms for part in objective.parts.values()))
    assert set(losses) == declared
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    for name, _ in objective.phases(10)[:-1]:
        assert set(objective(student, teacher, None, name)) == {name}


def test_fitnet_two_stage_declares_its_hint_phase_and_combinations_add():
    p = probe()
    assert build_objective(SPEC, "fitnet", {}, p).phases(10) == [("hint", 2), ("main", 10)]
    assert build_objective(SPEC, "fsp+kd", {}, p).phases(10) == [("fsp", 2), ("main", 10)]
    fitnet = build_objective(SPEC, "fitnet_hint", {}, p).extra_parameters()
    assert fitnet == 32 * 32 * 3 * 3 + 32  # the 3x3 conv regressor at the hint pair
    assert build_objective(SPEC, "kd+fitnet_hint+nst_poly", {}, p).extra_parameters() == fitnet
    assert build_objective(SPEC, "kr", {}, p).extra_parameters() > 0  # aggregation layers and projections
    for free in ("kd", "at", "nst_poly", "lpl", "fsp"):
        assert build_objective(SPEC, free, {}, p).extra_parameters() == 0  # LPL's claim: no extra parameters


def test_lpl_weights_are_the_paper_eq8():
    p = probe()
    objective = build_objective(SPEC, "lpl", {"lpl": {"lam": 0.0}}, p)
    assert set(objective.parts["lpl"].params.model_dump()) >= {"k", "gamma", "sigma", "lam", "tau"}
    student, teacher = batch_features(p)
    assert "lpl_kd" not in objective(student, teacher, torch.zeros(8, dtype=torch.long))


@pytest.mark.parametrize("method, make_probe, overrides, expected", [
    ("kd+fitnet", probe, {}, "both give the loss term 'kd'"),
    ("at", lambda: probe(vectors=True), {}, "spatial feature maps"),
    ("fsp", lambda: probe(vectors=True), {}, "spatial feature maps"),
    ("fsp", lambda: probe(student_channels=(8, 16, 32)), {}, "equal channel counts"),
    ("lpl", lambda: probe(batch=4), {}, "batch larger than k"),
    ("lpl", probe, {"lpl": {"k": 0}}, "k"),
    ("nst_poly", probe, {"nst_poly": {"lam": -1}}, "lam"),
    ("at", probe, {"at": {"layers": "middle"}}, "layers"),
    ("fitnet", probe, {"fitnet": {"hint_fraction": 0}}, "hint_fraction"),
    ("lpl", probe, {"lpl": {"sigma": 0}}, "sigma"),
])
def test_setup_errors(method, make_probe, overrides, expected):
    with pytest.raises(UserError, match=expected):
        build_objective(SPEC, method, overrides, make_probe())


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """One home for the smoke runs of this module, so each teacher is trained once."""
    import os

    home = tmp_path_factory.mktemp("methods_home")
    old = os.environ.get("KD_HARNESS_HOME")
    os.environ["KD_HARNESS_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["KD_HARNESS_HOME"]
    else:
        os.environ["KD_HARNESS_HOME"] = old


def _finished(home, cell, epochs="1"):
    """The one FINISHED run of `cell` trained for `epochs` main epochs."""
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = [r for r in client.search_runs(experiments, f"tags.cell = '{cell}'")
            if r.info.status == "FINISHED" and r.data.params["recipe.epochs"] == epochs]
    assert len(runs) == 1
    return client, runs[0]


def _pair(method: str, single: str, ensemble: str = "resnet32x2-resnet14") -> str:
    """A multi-teacher method runs on an ensemble pair; every other method on the single-teacher one."""
    from methods import runs_on_pair

    return single if runs_on_pair(SPEC, method, single) else ensemble


@pytest.mark.parametrize("method", METHODS + COMBINATIONS)
def test_smoke_on_digits(shared_home, method):
    cell = f"digits/{_pair(method, 'resnet20-resnet8')}/{method}"
    assert main(["run", "--cell", cell, "--smoke", "--no-progress"]) == 0
    _, run = _finished(shared_home, cell)
    assert run.data.metrics["extra_parameters"] >= 0


# ft's paraphraser phase diverges (NaN at step 5) on this fixture under the cifar_nst recipe (lr 0.2,
# the phase at 0.2 of it): a finding recorded on its card, kept here as a strict expected failure
CIFAR_FINDINGS = {"ft": "ft's paraphraser phase diverges on the CIFAR fixture at the cifar_nst recipe's lr (docs/methods/ft.md)"}


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.xfail(reason=CIFAR_FINDINGS[m], strict=True))
                                    if m in CIFAR_FINDINGS else m for m in METHODS + ["kd+nst_poly"]])
def test_smoke_on_the_cifar_fixture(shared_home, cifar_root, method):
    cell = f"cifar100/{_pair(method, 'resnet32-resnet14')}/{method}"
    assert main(["run", "--cell", cell, "--smoke", "--no-progress", "--data-root", str(cifar_root)]) == 0
    _finished(shared_home, cell)


@pytest.mark.parametrize("cell", ["cifar100zca/maxout5-fitnets1/lpl", "cifar10zca/maxout5-fitnets4/fitnet"])
def test_whitened_lpl_pairs_smoke_on_the_cifar_fixture(shared_home, cifar_zca_root, cell):
    assert main(["run", "--cell", cell, "--smoke", "--no-progress", "--data-root", str(cifar_zca_root)]) == 0
    _, run = _finished(shared_home, cell)
    assert run.data.params["data.preprocess"] == "gcn_zca" and run.data.params["data.preprocess_fingerprint"]


@pytest.mark.parametrize("cell", ["cifar100/resnet164-incbn/nst_poly", "cifar100/vgg19bn-alexnet8/nmt",
                                  "cifar100/vgg19bn-alexnet8/fitnet"])
def test_paper_pairs_smoke_on_the_cifar_fixture(shared_home, cifar_root, cell):
    assert main(["run", "--cell", cell, "--smoke", "--no-progress", "--data-root", str(cifar_root)]) == 0
    _finished(shared_home, cell)


def test_lpl_table3_pair_smoke(shared_home, mnist_root):
    cell = "mnist/maxout3-maxout6/lpl"
    assert main(["run", "--cell", cell, "--smoke", "--no-progress", "--data-root", mnist_root]) == 0
    _finished(shared_home, cell)


def test_fitnet_run_shows_both_stages(shared_home):
    cell = "digits/resnet20-resnet8/fitnet"
    assert main(["run", "--cell", cell, "--epochs", "5", "--no-progress"]) == 0
    client, run = _finished(shared_home, cell, epochs="5")
    assert (run.data.params["phases.hint"], run.data.params["phases.main"]) == ("1", "5")
    phase = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "phase")}
    assert phase == {0: 0, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_hint")] == [0]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss_kd")) == [1, 2, 3, 4, 5]
    assert run.data.metrics["best_val_epoch"] >= 1  # selection ignores the hint stage
    assert run.data.metrics["extra_parameters"] > 0



def test_fsp_stage_runs_at_its_scaled_lr(shared_home):
    cell = "digits/resnet20-resnet8/fsp"
    assert main(["run", "--cell", cell, "--epochs", "5", "--no-progress"]) == 0
    client, run = _finished(shared_home, cell, epochs="5")
    lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr")}
    base = float(run.data.params["recipe.lr"])
    assert lr[0] == pytest.approx(0.1 * base)  # the FSP stage (pretrain_lr_scale 0.1)
    assert lr[1] == pytest.approx(base)  # the main stage starts at the recipe's lr
