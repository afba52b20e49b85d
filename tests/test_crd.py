"""CRD: the NCE loss against a naive computation and RepDistiller's procedure, the negatives'
sampling, and a SIGKILLed run that resumes with its memory banks intact."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods.crd import contrast_scores, momentum_update, nce_loss, sample_contrasts


def test_nce_loss_golden():
    torch.manual_seed(0)
    p = torch.rand(3, 5)  # 3 anchors, K = 4 negatives
    n = 100
    expected = 0.0
    for row in p.tolist():
        expected -= math.log(row[0] / (row[0] + 4 / n + 1e-7))
        expected -= sum(math.log((4 / n) / (q + 4 / n + 1e-7)) for q in row[1:])
    assert nce_loss(p, n).item() == pytest.approx(expected / 3, rel=1e-6)


def test_scores_are_exponentiated_dot_products_with_the_sampled_bank_rows():
    torch.manual_seed(1)
    bank, anchors = torch.randn(10, 4), torch.randn(2, 4)
    sample = torch.tensor([[3, 0, 7], [5, 5, 1]])
    scores = contrast_scores(bank, anchors, sample, 0.5)
    for i in range(2):
        for k in range(3):
            assert scores[i, k].item() == pytest.approx(math.exp(float(bank[sample[i, k]] @ anchors[i]) / 0.5), rel=1e-5)


def test_negatives_come_from_other_classes_and_cover_them_uniformly():
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 2, 1, 0, 0])
    by_class = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    torch.manual_seed(0)
    indices = torch.tensor([0, 3, 7])
    sample = sample_contrasts(indices, labels, by_class, starts, counts, k=6000)
    assert torch.equal(sample[:, 0], indices)  # the positive is the image itself ('exact' mode)
    for row, anchor in zip(sample, indices):
        negatives = row[1:]
        assert (labels[negatives] != labels[anchor]).all()
        others = (labels != labels[anchor]).nonzero().flatten()
        frequencies = torch.bincount(negatives, minlength=len(labels))[others].float() / len(negatives)
        assert torch.allclose(frequencies, torch.full_like(frequencies, 1 / len(others)), atol=0.03)


def test_the_method_is_repdistillers_contrast_memory_and_loss(monkeypatch):
    """RepDistiller's CRDLoss, written out step by step from its crd/memory.py and crd/criterion.py
    (out_v1 = exp(memory_v2[idx] . v1 / T) / Z_v1, Z from the first batch, ContrastLoss on each side,
    then each memory's positive rows moved by the momentum and renormalised): the same loss and banks."""
    from harness.running.probe import PROBE_BATCH  # noqa: F401  (the method's probe comes from make_probe in real runs)
    from methods.base import Probe
    from methods.crd import CRD, CRDParams

    torch.manual_seed(0)
    params = CRDParams(beta=0.8, feat_dim=4, nce_k=5, nce_t=0.07, nce_m=0.5)
    probe = Probe(teacher={"pre_logits": torch.zeros(2, 6)}, student={"pre_logits": torch.zeros(2, 3)}, hint=0,
                  batch_size=4)
    crd = CRD(params, probe)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    crd.bind_training_set(labels)
    memory_v1, memory_v2 = crd.bank_s.clone(), crd.bank_t.clone()
    f_s, f_t, idx = torch.randn(4, 3), torch.randn(4, 6), torch.tensor([0, 4, 8, 9])
    sample = sample_contrasts(idx, crd.labels, crd.by_class, crd.starts, crd.counts, 5)
    monkeypatch.setattr("methods.crd.sample_contrasts", lambda *a: sample)
    loss = crd({"pre_logits": f_s, "indices": idx}, {"pre_logits": f_t}, None)["crd"]

    v1 = F.normalize(crd.embed_s(f_s), dim=1)
    v2 = F.normalize(crd.embed_t(f_t), dim=1)
    n, k, t = len(labels), 5, 0.07
    out_v2 = torch.exp(torch.bmm(memory_v1[sample], v2[:, :, None]) / t).squeeze(2)
    out_v1 = torch.exp(torch.bmm(memory_v2[sample], v1[:, :, None]) / t).squeeze(2)
    out_v1, out_v2 = out_v1 / (out_v1.mean() * n), out_v2 / (out_v2.mean() * n)

    def contrast_loss(x):
        pn = 1 / n
        log_d1 = torch.log(x[:, 0] / (x[:, 0] + k * pn + 1e-7))
        log_d0 = torch.log((k * pn) / (x[:, 1:] + k * pn + 1e-7))
        return -(log_d1.sum() + log_d0.sum()) / x.shape[0]

    reference = 0.8 * (contrast_loss(out_v1) + contrast_loss(out_v2))
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    l_pos = memory_v1[idx] * 0.5 + v1.detach() * 0.5
    assert torch.allclose(crd.bank_s[idx], l_pos / l_pos.norm(dim=1, keepdim=True), atol=1e-6)
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(crd.bank_t[untouched], memory_v2[untouched])


def test_the_memory_update_renormalises_only_the_batch_rows():
    bank = F.normalize(torch.randn(6, 3), dim=1)
    before = bank.clone()
    momentum_update(bank, torch.tensor([1, 4]), torch.randn(2, 3), 0.5)
    assert torch.allclose(bank[[1, 4]].norm(dim=1), torch.ones(2))
    assert torch.equal(bank[[0, 2, 3, 5]], before[[0, 2, 3, 5]])


@pytest.mark.long
def test_crd_resumes_after_sigkill_with_its_memory_bank_intact(tmp_path):
    """The banks are method state: a run SIGKILLed mid-training resumes to the metrics of an
    uninterrupted run, epoch by epoch, exactly."""
    from test_reliability import checkpoints_of, client, fresh_home, harness, student_runs, wait_for_checkpoint

    import signal
    import time

    args = ["run", "--cell", "digits/hinton1200-hinton800/crd", "--epochs", "4", "--teacher-epochs", "1",
            "--set", "nce_k=256", "--no-progress"]
    teacher_home = tmp_path / "teacher"
    assert harness(teacher_home, "teacher", "digits/hinton1200", "--teacher-epochs", "1", "--no-progress").returncode == 0
    reference_home = fresh_home(teacher_home, tmp_path / "reference")
    assert harness(reference_home, *args).returncode == 0
    home = fresh_home(teacher_home, tmp_path / "killed")
    proc = harness(home, *args, wait=False)
    wait_for_checkpoint(home, proc, 1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert len(checkpoints_of(home)) >= 1
    resumed = harness(home, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from epoch" in resumed.stderr

    def history(home):
        (run,) = student_runs(home)
        c = client(home)
        return {key: [m.value for m in sorted(c.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
                for key in ("train/loss_crd", "train/loss", "val/top1", "test/top1")}

    ours, reference = history(home), history(reference_home)
    assert len(ours["train/loss_crd"]) == 4
    assert ours == reference
