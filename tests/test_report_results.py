"""What the report's tables say about results (issue #32 items 12 and 17): collapsed seeds are flagged,
the test set's resolution is stated, the teacher has a row and every method a Δ against the student."""

import math

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.results import render
from harness.results import report as rep
from harness.spec.spec import load_spec

BASE, KD, LPL = ("digits/resnet20-resnet8/baseline", "digits/resnet20-resnet8/kd", "digits/resnet20-resnet8/lpl")
VALUES = {BASE: [96.0, 96.5, 97.0], KD: [97.0, 97.5, 98.0], LPL: [11.35, 35.81, 10.09]}  # LPL: 2 seeds at chance


@pytest.fixture
def store(home):
    home.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("kd-harness")
    teacher = client.create_run(experiment, tags={"role": "teacher", "run_key": "T1", "dataset": "digits",
                                                  "model": "resnet20", "seed": "0"})
    client.log_batch(teacher.info.run_id, metrics=[Metric("test_top1_last", 98.5, 0, 15)],
                     params=[Param("recipe.epochs", "15")])
    client.set_terminated(teacher.info.run_id, "FINISHED")
    for cell, values in VALUES.items():
        for seed, value in enumerate(values):
            log_student(client, experiment, cell, seed, value)
    return uri


def log_student(client, experiment, cell, seed, value, tags=None):
    run = client.create_run(experiment, tags={"role": "student", "cell": cell, "seed": str(seed),
                                              "smoke": "False"} | (tags or {}))
    params = {"recipe_name": "digits", "recipe.epochs": "15", "env.device_name": "test-cpu",
              "env.git_commit": "abcdef0123456789", "env.device": "cpu", "env.torch": "2.14.1",
              "data.test_size": "360"} | ({} if cell == BASE else {"teacher.key": "T1"})
    summary = {"test_top1_last": value, "test_top5_last": 100.0, "test_top1_best_val": value,
               "test_top5_best_val": 100.0, "wall_seconds": 10.0, "mean_epoch_seconds": 1.0,
               "peak_memory_mb": 100, "extra_parameters": 0, "student_parameters": 1000}
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(k, v, 0, 15) for k, v in summary.items()] + [Metric("test/top1", value, 0, 0)])
    client.set_terminated(run.info.run_id, "FINISHED")


def build(uri):
    return rep.build(load_spec(None), uri, None, [BASE, KD, LPL], "last")


def test_collapsed_seeds_are_flagged_and_the_test_resolution_stated(store):
    result = build(store)
    d = result.detail.set_index("cell")
    assert d.loc[LPL, "near_chance"] == 2 and d.loc[KD, "near_chance"] == 0
    lpl = result.table.loc["lpl", "digits"]
    assert lpl == "19.08 ± 14.50 (3); 2 near chance; spread ≥ 10 points"
    assert result.table.loc["kd", "digits"] == "97.50 ± 0.50 (3)"
    assert "Test set: digits 360 images (one image = 0.28 points)" in result.caption
    assert "2 near chance" in render.render(result, "md").split("## Per cell")[1]


def test_the_main_table_has_the_teacher_and_a_delta_against_the_student(store):
    result = build(store)
    table = result.table
    assert list(table.index) == ["teacher", "baseline", "kd", "lpl"]
    assert list(table.columns) == ["digits", "Δ vs student"]
    assert table.loc["teacher", "digits"] == "98.50 (1)" and table.loc["teacher", "Δ vs student"] == "+2.00"
    assert table.loc["kd", "Δ vs student"] == "+1.00" and table.loc["baseline", "Δ vs student"] == ""
    assert result.detail.set_index("cell").loc[KD, "top1_vs_student"] == pytest.approx(1.0)
    assert "| teacher " in render.render(result, "md")


def test_without_a_student_run_there_is_no_delta_column(store):
    result = rep.build(load_spec(None), store, None, [KD, LPL], "last")
    assert list(result.table.columns) == ["digits"] and "teacher" in result.table.index
    assert math.isnan(result.detail["top1_vs_student"].iloc[0])


def test_report_shows_set_variants_side_by_side(store, capsys):
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("kd-harness").experiment_id
    for seed, value in enumerate([95.0, 95.5]):
        log_student(client, experiment, KD, seed, value, {"config_key": "tau3", "overrides": "kd.tau=3"})
    one = rep.build(load_spec(None), store, None, [BASE, KD], "last")
    assert list(one.table.index) == ["teacher", "baseline", "kd"]
    assert any("kd.tau=3" in note and "left out" in note for note in one.notes)
    both = rep.build(load_spec(None), store, None, [BASE, KD], "last", all_configurations=True)
    assert list(both.table.index) == ["teacher", "baseline", "kd", "kd [kd.tau=3]"]
    assert both.table.loc["kd [kd.tau=3]", "digits"] == "95.25 ± 0.35 (2)"
    assert both.table.loc["kd [kd.tau=3]", "Δ vs student"] == "-1.25"
    assert main(["--tracking-uri", store, "report", "--cells", BASE, KD, "--configs", "all"]) == 0
    assert "| kd [kd.tau=3] " in capsys.readouterr().out


def test_an_ad_hoc_claim_is_audited_on_the_given_cells(store, capsys):
    assert main(["--tracking-uri", store, "audit", "--claim", "kd > baseline", "--claim", "kd > lpl",
                 "--cells", BASE, KD, LPL]) == 0
    out = capsys.readouterr().out
    assert "## ad-hoc" in out and "| kd > baseline (top1) | digits/resnet20-resnet8 | --claim |" in out
    assert "| kd > lpl (top1) |" in out
    assert main(["--tracking-uri", store, "audit", "--suite", "digits"]) == 0  # the digits suite has a claim now
    assert "| kd > baseline (top1) |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["--claim", "kd >", "--cells", KD], "expected 'BETTER > THAN'"),
    (["--claim", "sp > kd", "--cells", KD, BASE], "digits/resnet20-resnet8/sp is not among --cells"),
    (["--claim", "kd > baseline"], "'kd' is a method; give --cells"),
    (["--cells", KD], "--cells goes with --claim"),
    (["--claim", "kd > baseline", "--suite", "digits"], "a --suite brings its own claims"),
    (["--claim", "kd > bogus", "--cells", KD], "unknown method"),
])
def test_ad_hoc_claim_mistakes(store, capsys, argv, expected):
    assert main(["--tracking-uri", store, "audit"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
