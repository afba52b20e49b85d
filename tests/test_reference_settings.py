"""The settings where our methods followed their references' papers but not their code (issue 40):
kd_ls's cross-entropy weight, CRD's negatives without replacement, OFD's teacher in train mode,
PKT's weight tied to the batch, ReviewKD's 0-based warm-up. Each is an option whose default is the
reference's value, with the old behaviour one --set away."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.running.runner import Runner
from harness.spec.options import RunOptions
from harness.spec.spec import load_spec
from methods import Objective, build_objective
from methods.crd import distinct_below, sample_contrasts
from methods.dkd import dkd_warmup
from methods.pkt import pkt_loss
from tests.test_methods import batch_features, probe

SPEC = load_spec()


def test_kd_ls_weighs_the_cross_entropy_as_its_authors_code():
    p = probe()
    student, teachers = batch_features(p)
    y = torch.randint(0, 10, (8,))
    ce = F.cross_entropy(student["logits"], y)
    assert build_objective(SPEC, "kd_ls", {}, p)(student, teachers, y)["ce"].item() == pytest.approx(0.1 * ce.item())
    assert build_objective(SPEC, "kd", {}, p)(student, teachers, y)["ce"].item() == pytest.approx(ce.item())
    assert build_objective(SPEC, "kd_ls", {"kd_ls": {"ce_weight": 1.0}}, p)(student, teachers, y)["ce"] == ce
    # a part that sets none takes the one set beside it (RepDistiller's crd+kd: -r 0.1); two that differ are refused
    assert build_objective(SPEC, "crd+kd", {"kd": {"ce_weight": 0.1}}, p).ce_weight == 0.1
    with pytest.raises(UserError, match="disagree on ce_weight"):
        Objective._agreed("ce_weight", {"kd": 0.1, "other": 1.0, "crd": None}, 1.0)
    assert build_objective(SPEC, "kd+nst_poly", {}, p).ce_weight == 1.0


def test_crd_draws_distinct_negatives_when_the_other_classes_hold_enough():
    labels = torch.arange(600) % 3  # 400 images of other classes for every anchor
    by_class = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    indices = torch.arange(0, 600, 70)
    torch.manual_seed(0)
    for k in (5, 30, 400):  # sparse (redraws), dense (a permutation's head), every negative
        sample = sample_contrasts(indices, labels, by_class, starts, counts, k)
        assert torch.equal(sample[:, 0], indices)
        for row, anchor in zip(sample, indices):
            negatives = row[1:]
            assert len(set(negatives.tolist())) == k and (labels[negatives] != labels[anchor]).all()
    # K above the number of negatives: with replacement (RepDistiller's replace = k > len(negatives)), as before
    sample = sample_contrasts(indices, labels, by_class, starts, counts, 500)
    assert all(len(set(row[1:].tolist())) < 500 for row in sample)
    repeats = sample_contrasts(indices, labels, by_class, starts, counts, 100, distinct=False)
    assert any(len(set(row[1:].tolist())) < 100 for row in repeats)  # the old option repeats (100 of 400: surely)
    assert SPEC.methods["crd"].defaults["negatives"].value == "distinct"


@pytest.mark.parametrize("high, k", [(64, 4), (10, 3)])  # redrawn repeats; a permutation's head
def test_distinct_draws_are_uniform(high, k):
    torch.manual_seed(0)
    draws = distinct_below(torch.full((4000,), high), k)
    assert all(len(set(row.tolist())) == k for row in draws)
    frequencies = torch.bincount(draws.flatten(), minlength=high).float() / draws.numel()
    assert torch.allclose(frequencies, torch.full((high,), 1 / high), atol=0.3 / high)


def test_ofd_reads_its_teacher_in_train_mode(home, tmp_path):
    runner = Runner(SPEC, home, f"sqlite:///{home / 'mlflow.db'}")

    def plan(method, **options):
        return runner.plan(runner.spec.cell(f"digits/resnet20-resnet8/{method}"),
                           RunOptions(device="cpu", smoke=True, data_root=str(tmp_path), **options))

    teacher = plan("baseline").student  # a ResNet-8 stands in for the teacher: the mode is what is read
    for method, training in (("ofd", True), ("kd", False)):
        trainer = plan(method).trainer([teacher])
        trainer._teacher_features(torch.randn(4, 1, 8, 8))
        assert teacher.training is training
    eval_ofd = plan("ofd", overrides={"ofd": {"teacher_mode": "eval"}})
    assert eval_ofd.objective.teacher_mode == "eval"
    with pytest.raises(UserError, match="train mode"):
        plan("ofd", teacher_cache=True)


@pytest.mark.parametrize("batch", [16, 64, 128])
def test_pkt_weight_is_repdistillers_at_every_batch(batch):
    """RepDistiller's -b 30000 on its mean over b^2 entries (ours / b): 30000 * pkt_loss / b at batch b."""
    p = probe(batch=batch)
    student, teachers = batch_features(p)
    term = build_objective(SPEC, "pkt", {}, p)(student, teachers, torch.zeros(8, dtype=torch.long))["pkt"]
    assert term.item() == pytest.approx(30000 * pkt_loss(student["pre_logits"], teachers[0]["pre_logits"]).item() / batch,
                                        rel=1e-5)
    untied = build_objective(SPEC, "pkt", {"pkt": {"lam_batch": None}}, p)(student, teachers, torch.zeros(8, dtype=torch.long))
    assert untied["pkt"].item() == pytest.approx(468.75 * pkt_loss(student["pre_logits"], teachers[0]["pre_logits"]).item(),
                                                 rel=1e-5)


def test_reviewkd_warms_up_from_epoch_zero_in_its_authors_suite(home, tmp_path):
    assert dkd_warmup(0, 20, first=0) == 0.0 and dkd_warmup(0, 20) == 1 / 20 and dkd_warmup(20, 20, first=0) == 1.0
    runner = Runner(SPEC, home, f"sqlite:///{home / 'mlflow.db'}")

    def params(pair, **options):
        opts = RunOptions(device="cpu", data_root=str(tmp_path), **options)
        return runner.plan(runner.spec.cell(f"cifar100/{pair}/reviewkd"), opts).objective.parts["reviewkd"].params

    assert params("resnet56-resnet20", suite="reviewkd_cifar100").warmup_from == 0
    assert params("resnet56-resnet20", suite="reviewkd_cifar100").lam == 0.6  # its per-pair weight
    assert params("resnet56-resnet20").warmup_from == 1  # mdistiller's, the method's default
