"""Paper fidelity: initialisation schemes, GCN + ZCA, the FitNet regressor's output, AT's weighting,
reduced training sets with a full-data teacher, the claims audit and reports that never mix
configurations."""

import math
import pickle

import pandas as pd
import pytest
import torch
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.data import preprocess
from harness.data.sources import load_data
from harness.errors import UserError
from harness.models import build_model
from harness.results import audit as aud
from harness.results import render
from harness.results import report as rep
from harness.results.configurations import suite_rank
from harness.spec.spec import DEFAULT_SPEC, load_spec
from methods.at import AT, ATParams
from methods.base import Probe
from methods.fitnet import FitNetHint, HintParams

SPEC = load_spec()


def refused(tmp_path, capsys, edit, command="list") -> str:
    """benchmarks.yaml changed by `edit(raw)`: the command must exit 2 with one line; returns it."""
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    edit(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--spec", str(path), command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


# ---- initialisation ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["maxout3", "maxout6"])
def test_uniform_init_gives_the_papers_range(model):
    net = build_model(SPEC.models[model], SPEC.datasets["mnist"])
    tensors = [p for name, p in net.named_parameters()]
    assert tensors and all(p.abs().max() <= 0.005 for p in tensors)
    weights = torch.cat([p.flatten() for p in tensors])
    # U(-0.005, 0.005): spread over the whole range, mean ~0, std = 0.01 / sqrt(12)
    assert weights.max() > 0.0049 and weights.min() < -0.0049
    assert weights.std().item() == pytest.approx(0.01 / 12 ** 0.5, rel=0.05)


def test_normal_init_and_default_init():
    spec = SPEC.models["maxout6"].model_copy(update={"init": None})
    default = build_model(spec, SPEC.datasets["mnist"])
    assert max(p.abs().max().item() for p in default.parameters()) > 0.05  # PyTorch's default is wider
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["models"]["maxout6"]["init"] = {"kind": "normal", "std": 0.02}
    from harness.spec.spec import Spec

    net = build_model(Spec.model_validate(raw).models["maxout6"], SPEC.datasets["mnist"])
    weights = torch.cat([p.flatten() for p in net.parameters()])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("init, message", [({"kind": "uniform", "a": 0.1, "b": -0.1}, "a < b"),
                                           ({"kind": "orthogonal"}, "kind")])
def test_bad_init_is_one_line_exit_2(tmp_path, capsys, init, message):
    err = refused(tmp_path, capsys, lambda raw: raw["models"]["maxout6"].update(init=init))
    assert "models.maxout6.init" in err and message in err


# ---- GCN + ZCA ----------------------------------------------------------------------------------
def test_zca_whitens_to_identity_covariance():
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(20, 20, generator=g)
    x = torch.randn(5000, 20, generator=g) @ mixing + 3.0
    mean, w = preprocess.zca_fit(x, bias=1e-9)
    white = (x - mean) @ w
    cov = white.T.double() @ white.double() / len(white)
    assert torch.allclose(cov, torch.eye(20, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(w, w.T, atol=1e-5)  # ZCA (not PCA) whitening: symmetric, stays close to the image


def test_gcn_centres_and_scales_each_image():
    images = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    out = preprocess.gcn(images).flatten(1)
    assert torch.allclose(out.mean(1), torch.zeros(8), atol=1e-4)
    assert torch.allclose(out.pow(2).mean(1).sqrt(), torch.full((8,), preprocess.GCN_SCALE), rtol=1e-5)


def test_zca_dataset_uses_training_statistics_only(cifar_zca_root):
    spec = SPEC.datasets["cifar10zca"]
    data = load_data("cifar10zca", spec, cifar_zca_root)
    assert data.train.images.dtype == torch.float32 and data.preprocess_fingerprint
    assert len(list(preprocess.cache_dir().glob("cifar10zca-*.pt"))) == 1  # cached
    # whitened training images: per-dimension mean ~0, no covariance larger than ~1
    x = data.train.images.flatten(1).double()
    assert x.mean(0).abs().max() < 1e-3
    assert torch.linalg.eigvalsh(x.T @ x / len(x)).max() <= 1.0 + 1e-3
    # another test split gives the same statistics and the same training images
    batch = cifar_zca_root / "cifar-10-batches-py" / "test_batch"
    content = pickle.loads(batch.read_bytes())
    content["data"] = 255 - content["data"]
    batch.write_bytes(pickle.dumps(content))
    again = load_data("cifar10zca", spec, cifar_zca_root)
    assert again.preprocess_fingerprint == data.preprocess_fingerprint
    assert torch.equal(again.train.images, data.train.images)
    assert not torch.equal(again.test.images, data.test.images)


def test_zca_refused_where_it_cannot_fit(tmp_path, capsys):
    err = refused(tmp_path, capsys, lambda raw: raw["datasets"]["imagenet"].update(preprocess="gcn_zca"))
    assert "datasets.imagenet" in err


# ---- FitNet regressor, AT weighting ---------------------------------------------------------------
def _probe(hint: torch.Tensor, guided: torch.Tensor) -> Probe:
    return Probe({"stages": [hint], "logits": torch.zeros(2, 10)}, {"stages": [guided], "logits": torch.zeros(2, 10)},
                 0, 8)


@pytest.mark.parametrize("hint_sign, relu", [("signed", False), ("relu", True)])
def test_fitnet_regressor_follows_the_hints_sign_range(hint_sign, relu):
    torch.manual_seed(0)
    hint = torch.randn(2, 6, 4, 4)
    hint = hint if hint_sign == "signed" else hint.relu()
    method = FitNetHint(HintParams(lam=1.0, regressor_output="auto"), _probe(hint, torch.randn(2, 3, 4, 4)))
    assert method.regressor.relu is relu
    out = method.regressor(torch.randn(16, 3, 4, 4))
    assert bool(out.min() >= 0) is relu  # a signed hint gets a signed regressor, a ReLU hint a ReLU one


def test_fitnet_regressor_on_the_maxout_pair_is_linear():
    data_spec = SPEC.datasets["mnist"]
    teacher = build_model(SPEC.models["maxout3"], data_spec)
    student = build_model(SPEC.models["maxout6"], data_spec)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        _, t = teacher.forward_intermediates(x, indices=SPEC.pairs["maxout3-maxout6"].stages.teacher)
        _, s = student.forward_intermediates(x, indices=SPEC.pairs["maxout3-maxout6"].stages.student)
    assert t[1].min() < 0  # maxout hints are signed
    method = FitNetHint(HintParams(lam=1.0, regressor_output="auto"), Probe({"stages": t}, {"stages": s}, 1, 8))
    assert method.regressor.relu is False


def test_at_weighting_conventions():
    torch.manual_seed(0)
    t, s = [torch.randn(4, 8, 6, 6)], [torch.randn(4, 4, 6, 6)]
    probe = Probe({"stages": t}, {"stages": s}, 0, 4)
    paper = AT(ATParams(beta=1000.0, p=2.0, layers="all", weighting="paper"), probe)({"stages": s}, {"stages": t}, None)
    code = AT(ATParams(beta=1000.0, p=2.0, layers="all", weighting="code"), probe)({"stages": s}, {"stages": t}, None)
    assert code["at"].item() == pytest.approx(2 * paper["at"].item())
    assert SPEC.methods["at"].defaults["weighting"].value == "paper"


# ---- reduced training sets ----------------------------------------------------------------------
def test_train_size_is_stratified_and_the_teacher_sees_the_full_set(mnist_root):
    from harness.running.paths import data_root

    small = load_data("mnist1k", SPEC.datasets["mnist1k"], data_root(mnist_root))
    full = load_data("mnist", SPEC.datasets["mnist"], data_root(mnist_root))
    assert len(small.train) == 1000 and torch.bincount(small.train.labels).tolist() == [100] * 10
    assert torch.equal(small.val.labels, full.val.labels) and small.split_fingerprint == full.split_fingerprint
    # the small set is drawn from the full training split, never from validation
    full_rows = {bytes(img.numpy()) for img in full.train.images}
    assert all(bytes(img.numpy()) in full_rows for img in small.train.images[:50])
    assert SPEC.datasets["mnist1k"].teacher_dataset == "mnist"


def test_teacher_dataset_must_match(tmp_path, capsys):
    err = refused(tmp_path, capsys, lambda raw: raw["datasets"]["mnist1k"].update(teacher_dataset="cifar10"))
    assert "datasets.mnist1k.teacher_dataset" in err


def test_every_suite_resolves_its_recipes():
    for name, suite in SPEC.suites.items():
        for cell_id in suite.cells:
            cell = SPEC.cell(cell_id)
            pair = SPEC.pairs[cell.pair]
            for model, teacher in ((pair.student, False), (pair.teacher, True)):
                recipe_name, recipe = SPEC.recipe_for(cell.dataset, model, suite=name, teacher=teacher)
                assert recipe.source, f"{name}: recipe {recipe_name} has no source"


# ---- the claims audit ----------------------------------------------------------------------------
BASE, KD, AT_ = "digits/resnet20-resnet8/baseline", "digits/resnet20-resnet8/kd", "digits/resnet20-resnet8/at"
FITNET, NST = "digits/resnet20-resnet8/fitnet", "digits/resnet20-resnet8/nst_poly"


def _log_runs(client, experiment, cell, values, tags=None, params=None):
    for seed, value in enumerate(values):
        run = client.create_run(experiment, tags={"role": "student", "cell": cell, "seed": str(seed), "smoke": "False"}
                                | (tags or {}))
        logged = {"recipe_name": "digits", "recipe.epochs": "3", "env.device_name": "test-cpu",
                  "env.git_commit": "abcdef0123456789", "env.device": "cpu", "env.torch": "2.14.1"} | (params or {})
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in logged.items()],
                         metrics=[Metric("test_top1_last", value, 0, 3), Metric("test_top5_last", 100.0, 0, 3),
                                  Metric("test_top1_best_val", value, 0, 3), Metric("wall_seconds", 1.0, 0, 3),
                                  Metric("mean_epoch_seconds", 1.0, 0, 3), Metric("peak_memory_mb", 1.0, 0, 3),
                                  Metric("extra_parameters", 0, 0, 3), Metric("student_parameters", 1, 0, 3),
                                  Metric("test/top1", value, 0, 0)],
                         tags=[RunTag("mlflow.runName", cell)])
        client.set_terminated(run.info.run_id, "FINISHED")


@pytest.fixture
def claims_store(home, tmp_path):
    uri = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.create_experiment("kd-harness")
    _log_runs(client, experiment, BASE, [90.0, 90.5, 89.5])
    _log_runs(client, experiment, KD, [95.0, 95.5, 94.5])  # clearly above baseline
    _log_runs(client, experiment, AT_, [90.2, 89.8, 90.6])  # indistinguishable from baseline
    _log_runs(client, experiment, FITNET, [93.0])  # one seed only
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["suites"]["claims_test"] = {
        "title": "Claims", "source": "Test", "cells": [BASE, KD, AT_, FITNET, NST],
        "references": [{"cell": KD, "value": 95.2, "metric": "top1", "source": "Test, KD"},
                       {"cell": BASE, "value": 80.0, "metric": "top1", "source": "Test, baseline"}],
        "claims": [{"better": "kd", "than": ["baseline", "at"], "setting": "digits/resnet20-resnet8", "source": "T1"},
                   {"better": "baseline", "than": "kd", "setting": "digits/resnet20-resnet8", "source": "T2"},
                   {"better": AT_, "than": [BASE, FITNET, NST], "source": "T3"}]}
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(raw))
    return uri, path


def test_welch_verdicts_on_a_known_store(claims_store):
    uri, path = claims_store
    table = aud.audit(load_spec(path), uri, ["claims_test"]).table.set_index("claim")
    assert table.loc["kd > baseline", "verdict"] == "confirmed"
    assert table.loc["kd > baseline", "diff"] == pytest.approx(5.0)
    from scipy.stats import ttest_ind

    expected = ttest_ind([95.0, 95.5, 94.5], [90.0, 90.5, 89.5], equal_var=False).pvalue
    assert table.loc["kd > baseline", "p"] == pytest.approx(expected)
    assert table.loc["kd > at", "verdict"] == "confirmed"
    assert table.loc["baseline > kd", "verdict"] == "refuted"
    assert table.loc["at > baseline", "verdict"] == "inconclusive"
    assert table.loc["at > fitnet", "verdict"] == "inconclusive"  # one seed: no variance to test with
    assert table.loc["at > nst_poly", "verdict"] == "not run"
    # the paper's KD number lies within our mean ± 2 std, its baseline number does not
    assert table.loc["kd > baseline", "paper_within_2sd"] == "yes/no"
    assert table.loc["kd > baseline", "paper_diff"] == pytest.approx(15.2)


def test_welch_interval_against_the_formula_written_out(claims_store):
    """Welch's 95% interval of the difference, with the Welch–Satterthwaite degrees of freedom by hand
    (unequal sizes and spreads, where the pooled-variance interval differs)."""
    from scipy.stats import t as student_t

    a, b = [95.0, 96.5, 93.0, 95.5], [90.0, 90.2, 89.9]
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    va, vb = (sum((x - mean(v)) ** 2 for x in v) / (len(v) - 1) / len(v) for v in (a, b))  # variances of the means
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = student_t.ppf(0.975, df) * (va + vb) ** 0.5
    diff = mean(a) - mean(b)
    assert aud.welch(pd.Series(a), pd.Series(b)).ci == (pytest.approx(diff - half), pytest.approx(diff + half))

    uri, path = claims_store
    row = aud.audit(load_spec(path), uri, ["claims_test"]).table.set_index("claim").loc["kd > baseline"]
    assert row["ci_low"] < 5.0 < row["ci_high"]
    assert row["paper_diff"] == pytest.approx(15.2) and row["paper_diff_in_ci"] == "no"


def test_holm_adjustment_golden_values():
    p = pd.Series([0.01, 0.04, math.nan, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> 0.09 (non-decreasing), 0.5
    expected = [0.04, 0.09, math.nan, 0.09, 0.5]
    assert aud.holm(p).tolist() == pytest.approx(expected, nan_ok=True)
    assert aud.holm(pd.Series([0.3, 0.6])).tolist() == [0.6, 0.6]  # 0.3 × 2 and 0.6 × 1
    assert aud.holm(pd.Series([0.6, 0.7])).tolist() == [1.0, 1.0]


def _log_failed(client, experiment, cell, seed, failure):
    run = client.create_run(experiment, tags={"role": "student", "cell": cell, "seed": str(seed), "smoke": "False",
                                              "failure": failure, "failure_term": "lpl", "failure_epoch": "3"})
    for k, v in {"recipe_name": "digits", "recipe.epochs": "3", "env.device_name": "test-cpu",
                 "env.git_commit": "abcdef0123456789", "env.device": "cpu", "env.torch": "2.14.1"}.items():
        client.log_param(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id, "FAILED")


def test_diverged_runs_are_a_result_not_a_missing_cell(claims_store, tmp_path):
    """Seeds whose loss became non-finite (FAILED, failure=non_finite_loss) show as diverged in the
    report and the audit; other failures stay out."""
    uri, path = claims_store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("kd-harness").experiment_id
    for seed in (0, 1):
        _log_failed(client, experiment, NST, seed, "non_finite_loss")  # every NST seed diverged
    _log_failed(client, experiment, FITNET, 1, "non_finite_loss")  # FitNet: seed 0 finished, seed 1 diverged
    _log_failed(client, experiment, BASE, 3, "out_of_memory")  # not a result of the recipe: left out
    spec = load_spec(path)
    table = aud.audit(spec, uri, ["claims_test"]).table.set_index("claim")
    assert table.loc["at > nst_poly", "verdict"] == "diverged" and table.loc["at > nst_poly", "ours_than"] == "diverged (2)"
    assert table.loc["at > fitnet", "ours_than"] == "93.00 (1); 1 diverged"
    assert table.loc["at > fitnet", "verdict"] == "inconclusive"
    assert table.loc["kd > baseline", "ours_than"] == "90.00 ± 0.50 (3)"  # the out-of-memory run is not counted
    report = rep.build(spec, uri, "claims_test", None, "last")
    detail = report.detail.set_index("cell")
    assert (detail.loc[NST, "n"], detail.loc[NST, "diverged"]) == (0, 2)
    assert "diverged (2)" in render.render(report, "md")
    runs_md = render.provenance(report, "harness report --suite claims_test")
    assert runs_md.count("diverged: lpl non-finite at epoch 3") == 3


def test_report_names_the_teachers_its_students_learned_from(home):
    uri = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.create_experiment("kd-harness")
    teacher = client.create_run(experiment, tags={"role": "teacher", "run_key": "tkey0001", "dataset": "digits",
                                                  "model": "resnet20", "seed": "0"})
    client.log_param(teacher.info.run_id, "recipe.epochs", "7")
    client.log_metric(teacher.info.run_id, "test_top1_last", 97.5)
    client.set_terminated(teacher.info.run_id, "FINISHED")
    _log_runs(client, experiment, KD, [95.0, 95.5], params={"teacher.key": "tkey0001"})
    _log_runs(client, experiment, NST, [94.0], params={"teacher.key": "tkey0002"})
    notes = rep.build(SPEC, uri, None, [KD, NST, BASE], "last").notes
    assert f"teacher digits/resnet20 seed 0, 7 epochs: 97.50% test top-1 (MLflow run {teacher.info.run_id})" in notes
    assert "teacher tkey0002: no finished run in this store (its file was trained elsewhere)" in notes


def test_audit_at_a_named_recipe_setting(claims_store, capsys):
    uri, path = claims_store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("kd-harness").experiment_id
    _log_runs(client, experiment, BASE, [95.0, 95.2], tags={"config_key": "b2", "overrides": "epochs=2"})
    _log_runs(client, experiment, KD, [80.0, 80.4], tags={"config_key": "k2", "overrides": "epochs=2"})
    spec = load_spec(path)
    assert aud.audit(spec, uri, ["claims_test"]).table.set_index("claim").loc["kd > baseline", "verdict"] == "confirmed"
    short = aud.audit(spec, uri, ["claims_test"], departures="epochs=2").table.set_index("claim")
    assert short.loc["kd > baseline", "verdict"] == "refuted" and short.loc["kd > baseline", "diff"] == pytest.approx(-14.9)
    capsys.readouterr()
    assert main(["--spec", str(path), "--tracking-uri", uri, "audit", "--departures", "epochs=2"]) == 2
    assert "--departures needs --suite" in capsys.readouterr().err


def test_a_store_whose_runs_all_diverged_still_renders(home, tmp_path):
    uri = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.create_experiment("kd-harness")
    _log_failed(client, experiment, KD, 0, "non_finite_loss")
    report = rep.build(SPEC, uri, None, [KD, BASE], "last")
    assert "diverged (1)" in render.render(report, "md")
    assert "diverged: lpl non-finite at epoch 3" in render.provenance(report, "harness report")
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["suites"]["claims_test"] = {"title": "Claims", "source": "Test", "cells": [BASE, KD],
                                    "claims": [{"better": KD, "than": BASE, "source": "T"}]}
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(raw))
    row = aud.audit(load_spec(path), uri, ["claims_test"]).table.iloc[0]
    assert (row["ours_better"], row["verdict"]) == ("diverged (1)", "not run")  # the student side never ran


def test_audit_command_writes_markdown(claims_store, tmp_path, monkeypatch):
    uri, path = claims_store
    out = tmp_path / "CLAIMS.md"
    assert main(["--spec", str(path), "--tracking-uri", uri, "audit", "--suite", "claims_test", "--out", str(out)]) == 0
    text = out.read_text()
    assert "**confirmed**" in text and "**refuted**" in text and "**not run**" in text
    assert "Verdicts: confirmed 2, refuted 1, equivalent 0, inconclusive 2, diverged 0, not run 1, n/a 0 (of 6)" in text
    assert "After Holm's correction within each suite: confirmed 2, refuted 1." in text
    assert "## Runs used" in text


@pytest.mark.parametrize("claim, message", [
    ({"better": "nosuch", "than": "kd", "setting": "digits/resnet20-resnet8", "source": "x"}, "unknown method"),
    ({"better": "kd", "than": "baseline", "setting": "digits/nopair", "source": "x"}, "unknown teacher-student pair"),
    ({"better": "kd", "than": [], "setting": "digits/resnet20-resnet8", "source": "x"}, "at least 1"),
])
def test_claim_with_a_bad_reference_is_exit_2(tmp_path, capsys, claim, message):
    err = refused(tmp_path, capsys, lambda raw: raw["suites"]["digits"].update(claims=[claim]), "audit")
    assert "suites.digits.claims" in err and message in err


def test_every_seed_table_has_claims():
    tables = ["nmt_table1", "nmt_table2", "lpl_table1", "lpl_table3", "lpl_table5", "lpl_table6", "nst_table1",
              "nst_table2", "nst_table3", "kr_table1", "kr_table2", "kr_table4", "positive_control"]
    for name in tables:
        assert SPEC.suites[name].claims, f"{name} has no claims"


# ---- one configuration per cell ------------------------------------------------------------------
def test_report_never_mixes_configurations(home, tmp_path):
    """A --set run beside default runs of the same cell: the report keeps them apart."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.create_experiment("kd-harness")
    _log_runs(client, experiment, KD, [56.25], tags={"config_key": "default0", "overrides": ""})
    _log_runs(client, experiment, KD, [55.47], tags={"config_key": "tau3cfg0", "overrides": "kd.tau=3"})
    result = rep.build(SPEC, uri, None, [KD], "last")
    assert result.detail.set_index("cell").loc[KD, "top1_mean"] == pytest.approx(56.25)
    assert result.detail.set_index("cell").loc[KD, "n"] == 1
    assert len(result.notes) == 1 and "kd.tau=3" in result.notes[0] and "left out" in result.notes[0]
    assert "kd.tau=3" in render.render(result, "md")


def test_a_suites_report_takes_the_configuration_run_for_it(home):
    """A suite whose overrides set a cell apart (lpl_table3_sigma10) beside the cell's defaults: each
    suite's report and audit shows its own configuration, whichever has more seeds or is newer."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.create_experiment("kd-harness")
    _log_runs(client, experiment, KD, [50.0], tags={"config_key": "defaults", "overrides": "", "suite": ""})
    _log_runs(client, experiment, KD, [70.0, 71.0], tags={"config_key": "variant", "overrides": "", "suite": "v"})
    _log_runs(client, experiment, BASE, [40.0], tags={"config_key": "base", "overrides": "", "suite": ""})
    top1 = {suite: rep.load_runs(uri, [KD, BASE], suite=suite)[0].groupby("tags.cell")["metrics.test_top1_last"].mean()
            for suite in (None, "other", "v")}
    assert top1[None][KD] == top1["other"][KD] == 50.0 and top1["v"][KD] == pytest.approx(70.5)
    assert top1[None][BASE] == top1["v"][BASE] == 40.0  # a cell the suite leaves alone: its default runs
    assert any("left out: variant (2 seeds, suite v)" in n for n in rep.load_runs(uri, [KD, BASE])[1])
    assert suite_rank(pd.DataFrame({"tags.suite": ["other"]}), "v") == 2
    assert SPEC.suites["lpl_table3_sigma10"].overrides == {"lpl": {"sigma": 10.0}}


def test_cells_are_compared_at_one_recipe_setting(home, capsys):
    """A shortened run (--epochs 2) of every cell and the recipe's own epochs for some: the table never
    puts one cell's shortened runs beside another's full ones."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.create_experiment("kd-harness")
    short = {"overrides": "epochs=2 teacher_epochs=2"}
    _log_runs(client, experiment, BASE, [80.0, 81.0], tags={"config_key": "b-short"} | short)
    _log_runs(client, experiment, KD, [82.0, 83.0], tags={"config_key": "k-short"} | short)
    _log_runs(client, experiment, BASE, [90.0], tags={"config_key": "b-full", "overrides": ""})
    d = rep.build(SPEC, uri, None, [BASE, KD], "last").detail.set_index("cell")  # the setting covering both cells
    assert d.loc[BASE, "top1_mean"] == pytest.approx(80.5) and d.loc[KD, "top1_mean"] == pytest.approx(82.5)
    notes = rep.load_runs(uri, [BASE, KD])[1]
    assert any("left out: the recipe as stated (1 runs, 1 cells)" in n for n in notes)
    _log_runs(client, experiment, KD, [95.0], tags={"config_key": "k-full", "overrides": ""})
    d = rep.build(SPEC, uri, None, [BASE, KD], "last").detail.set_index("cell")  # both cover both: as stated wins
    assert d.loc[BASE, "top1_mean"] == pytest.approx(90.0) and d.loc[KD, "top1_mean"] == pytest.approx(95.0)
    d = rep.build(SPEC, uri, None, [BASE, KD], "last", departures="teacher_epochs=2 epochs=2").detail.set_index("cell")
    assert d.loc[BASE, "n"] == 2 and d.loc[KD, "top1_mean"] == pytest.approx(82.5)
    for bad in ("epochs=3", "lr=0.1"):
        with pytest.raises(UserError, match="--departures"):
            rep.build(SPEC, uri, None, [BASE, KD], "last", departures=bad)
    capsys.readouterr()
    assert main(["--tracking-uri", uri, "report", "--cells", BASE, "--departures", "lr=0.1"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cost_figures_flagged_when_another_process_shared_the_cores():
    runs = pd.DataFrame({"metrics.max_load_1m": [2.1, 2.1, 1.2, 3.0, 2.1, math.nan],
                         "metrics.cpu_count": [2.0] * 6,
                         "params.env.threads": ["2", "1", "1", "2", None, "2"]})
    # alone with 2 threads; 1 thread beside another process; 1 thread alone; 2 threads beside another;
    # threads not logged (the core count stands in); load not logged (unknown, not flagged)
    assert rep.under_load(runs).tolist() == [False, True, False, True, False, False]
    assert rep.under_load(runs.drop(columns="params.env.threads")).tolist() == [False] * 3 + [True] + [False] * 2


def test_report_keeps_legacy_runs_of_different_settings_apart(home):
    uri = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.create_experiment("kd-harness")
    _log_runs(client, experiment, KD, [60.0, 61.0, 62.0], params={"method_params.kd.tau": "4.0"})
    _log_runs(client, experiment, KD, [10.0], params={"method_params.kd.tau": "3.0"})
    d = rep.build(SPEC, uri, None, [KD], "last").detail.set_index("cell")
    assert d.loc[KD, "n"] == 3 and d.loc[KD, "top1_mean"] == pytest.approx(61.0)


def test_runs_record_their_configuration_and_overrides(home):
    assert main(["run", "--cell", KD, "--smoke", "--no-progress", "--set", "tau=3"]) == 0
    assert main(["run", "--cell", KD, "--smoke", "--no-progress"]) == 0
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
            if r.data.tags["role"] == "student"]
    tags = sorted((r.data.tags["overrides"], r.data.tags["config_key"]) for r in runs)
    assert [t[0] for t in tags] == ["", "kd.tau=3"] and tags[0][1] != tags[1][1]
    for r in runs:
        assert r.data.metrics["max_load_1m"] >= 0 and r.data.metrics["cpu_count"] >= 1
        assert "epoch_cpu_seconds" in r.data.metrics
    result = rep.build(SPEC, f"sqlite:///{home / 'mlflow.db'}", None, [KD], "last", include_smoke=True)
    assert result.runs["tags.overrides"].tolist() == [""]


def test_artifacts_stay_in_the_runs_home_and_the_ui_opens_on_runs(home, tmp_path, monkeypatch):
    from harness.tracking.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}")
    run_id = tracker.create("r", {"role": "student"})
    tracker.log_dict(run_id, {"a": 1}, "config.json")
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (home / "artifacts").resolve().as_uri()
    assert list((home / "artifacts").rglob("config.json")) and not (tmp_path / "mlruns").exists()


def test_small_user_errors_are_one_clear_line(home, capsys, tmp_path):
    assert main(["run", "--cell", KD, "--smoke", "--set", "tua=2"]) == 2
    err = capsys.readouterr().err
    assert "no hyperparameter 'tua'" in err and "tau" in err and err.count("\n") == 1
    assert main(["run", "--suite", "digits", "--smoke", "--set", "tau=2"]) == 2
    assert "METHOD.NAME" in capsys.readouterr().err
    assert main(["run", "--suite", "digits", "--smoke", "--set", "nmt.lam=2"]) == 2
    assert "no cell of the suite uses method 'nmt'" in capsys.readouterr().err
    assert main(["report", "--cells", KD, "--out", str(tmp_path / "missing" / "r.md")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert not (home / "mlflow.db").exists() or not MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_experiments()])


def test_suite_set_applies_where_the_method_is(home):
    from harness.commands.commands import cell_overrides

    cells = SPEC.cells(suite="digits")
    by_cell = {c.method: cell_overrides(["kd.tau=2"], c, True, cells) for c in cells}
    assert by_cell["kd"] == {"kd": {"tau": 2}} and by_cell["kd+nst_poly"] == {"kd": {"tau": 2}}
    assert by_cell["baseline"] == {} and by_cell["lpl"] == {}


def test_register_without_a_registry_is_refused_before_training(home, monkeypatch, capsys):
    """A store whose registry does not answer (simulated: MLflow raises as a registry-less server does)."""
    import mlflow

    from harness.tracking.tracking import Tracker

    def no_registry(self, *args, **kwargs):
        raise mlflow.exceptions.MlflowException("model registry functionality is unavailable")

    monkeypatch.setattr(MlflowClient, "search_registered_models", no_registry)
    assert main(["run", "--cell", KD, "--smoke", "--no-progress", "--register", "digits-kd"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("harness: error: --register:") and "no usable model registry" in err
    assert len(err.splitlines()) == 1
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}")
    assert tracker.client.search_runs([e.experiment_id for e in tracker.client.search_experiments()]) == []


def test_student_is_a_loadable_mlflow_model_that_reproduces_its_accuracy(home):
    import os

    import mlflow

    from harness.data.sources import load_data

    assert main(["run", "--cell", KD, "--smoke", "--no-progress", "--register", "digits-kd"]) == 0
    rep.build(SPEC, f"sqlite:///{home / 'mlflow.db'}", None, [KD], "last", include_smoke=True)
    # nothing process-wide leaks: a later command in this process must not inherit this store
    assert "MLFLOW_TRACKING_URI" not in os.environ
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (student,) = [r for r in runs if r.data.tags["role"] == "student"]
    (teacher,) = [r for r in runs if r.data.tags["role"] == "teacher"]
    assert student.info.run_name.startswith("kd · digits/resnet20-resnet8 · seed 0")
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(f"runs:/{student.info.run_id}/model").eval()
    data = load_data("digits", SPEC.datasets["digits"], home, smoke=True)
    batches = data.batches(torch.device("cpu"), ("test",))
    correct = total = 0
    with torch.no_grad():
        for x, y in batches.eval_batches("test", 128):
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    assert 100.0 * correct / total == pytest.approx(student.data.metrics["test_top1_last"], abs=1e-6)
    assert mlflow.pytorch.load_model(f"runs:/{teacher.info.run_id}/model") is not None
    assert teacher.data.tags["teacher_file"].endswith(".safetensors")
    assert [str(v.version) for v in client.search_model_versions("name = 'digits-kd'")] == ["1"]
    mlflow.set_tracking_uri(None)  # this test's own use of the fluent API, undone
