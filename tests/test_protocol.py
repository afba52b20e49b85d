"""A suite's protocol (the papers' training set), a method's schedule under a shortened recipe, and
--teacher-seeds per-run: each read off the resolved plan (nothing trains)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from harness.errors import UserError
from harness.results.report import protocol_notes
from harness.running.runner import Runner
from harness.spec.options import RunOptions
from harness.spec.spec import load_spec
from methods.dkd import dkd_loss

FIELD_SUITES = ["crd_table1", "crd_table2", "dkd_cifar100_beta8", "dkd_cifar100_beta6", "dkd_cifar100_beta2",
                "dkd_imagenet_resnet34_resnet18", "dkd_imagenet_resnet50_mobilenetv1", "imagenet_resnet34_resnet18",
                "reviewkd_imagenet", "reviewkd_cifar100"]


@pytest.fixture
def runner(home):
    return Runner(load_spec(), home, f"sqlite:///{home / 'mlflow.db'}")


def plan(runner, cell, tmp_path, **options):
    return runner.plan(runner.spec.cell(cell), RunOptions(device="cpu", data_root=str(tmp_path), **options))


def test_the_field_suites_train_on_every_training_image_and_the_seed_suites_do_not():
    spec = load_spec()
    assert {name for name, s in spec.suites.items() if s.protocol.train_on == "train+val"} == set(FIELD_SUITES)


def test_a_crd_table1_cell_trains_on_all_training_images(runner, cifar_root):
    """cifar100 holds 5,000 images out for validation: the fixture's 6,000 train as 1,000 by default,
    all 6,000 under crd_table1's protocol (CIFAR-100's 50,000 as 45,000 and 50,000)."""
    cell = "cifar100/resnet56-resnet20/baseline"
    ours = plan(runner, cell, cifar_root, smoke=False)
    theirs = plan(runner, cell, cifar_root, suite="crd_table1")
    assert ours.identity["train_on"] == "train" and theirs.identity["train_on"] == "train+val"
    assert theirs.config["train_on"] == "train+val" and ours.run_key != plan(runner, cell, cifar_root, full_train=True).run_key
    assert len(ours.data.train) == 1000 and len(theirs.data.train) == 6000
    assert theirs.trainer(None).config.eval_splits == ("test",)  # no validation images left to read


def test_dkd_reaches_full_weight_within_a_shortened_run(runner, tmp_path):
    """DKD's 20-epoch warm-up under --epochs 3 of digits' recipe: scaled, never past the run's end."""
    shortened = plan(runner, "digits/resnet20-resnet8/dkd", tmp_path, epochs=3)
    dkd = shortened.objective.parts["dkd"]
    assert dkd.params.warmup_epochs == 3
    assert shortened.config["schedule_shortened"] == {"dkd.warmup_epochs": "20 -> 3"}
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    p = dkd.params
    full = dkd_loss(s, t, y, p.alpha, p.beta, p.tau)
    shortened.objective.set_epoch(2, 3)  # the run's last epoch
    assert torch.allclose(dkd({"logits": s}, {"logits": t}, y)["dkd"], full)
    shortened.objective.set_epoch(0, 3)
    assert dkd({"logits": s}, {"logits": t}, y)["dkd"] < full

    # the recipe as stated, and a value the user sets, keep their warm-up
    assert plan(runner, "digits/resnet20-resnet8/dkd", tmp_path).objective.parts["dkd"].params.warmup_epochs == 20
    assert "schedule_shortened" not in plan(runner, "digits/resnet20-resnet8/dkd", tmp_path).identity
    user = plan(runner, "digits/resnet20-resnet8/dkd", tmp_path, epochs=3, overrides={"dkd": {"warmup_epochs": 2}})
    assert user.objective.parts["dkd"].params.warmup_epochs == 2 and "schedule_shortened" not in user.config
    # ReviewKD's warm-up, scaled the same way (baselines2019_control: 1 of 15 epochs stays 1)
    review = plan(runner, "digits/resnet20-resnet8/reviewkd", tmp_path, epochs=3)
    assert review.objective.parts["reviewkd"].params.warmup_epochs == 3


def test_teacher_seeds_per_run_gives_student_seed_k_the_teacher_of_seed_k(runner, tmp_path):
    cell = "digits/resnet20-resnet8/kd"
    shared = plan(runner, cell, tmp_path, seed=2)
    per_run = plan(runner, cell, tmp_path, seed=2, teacher_seeds="per-run")
    assert shared.identity["teacher_seed"] == 0 and "teacher_seeds" not in shared.identity  # keys unchanged
    assert per_run.identity["teacher_seed"] == 2 and per_run.identity["teacher_seeds"] == "per-run"
    assert per_run.teacher_info["teacher.key"] == plan(runner, cell, tmp_path, seed=2, teacher_seed=2).teacher_info["teacher.key"]
    assert per_run.teacher_info["teacher.key"] != shared.teacher_info["teacher.key"]
    with pytest.raises(UserError, match="drop --teacher-seed 1"):
        plan(runner, cell, tmp_path, seed=2, teacher_seed=1, teacher_seeds="per-run")


def test_a_report_says_how_its_runs_trained():
    runs = pd.DataFrame({"tags.cell": ["a/b/dkd", "a/b/dkd", "a/b/kd"], "params.train_on": ["train+val", None, "train"],
                         "params.teacher_seeds": [None, "per-run", None],
                         "params.schedule_shortened.dkd.warmup_epochs": ["20 -> 3", "20 -> 3", None]})
    notes = protocol_notes(runs)
    assert "train+val (1 runs)" in notes[0] and "train (2 runs)" in notes[0]  # unrecorded: train, as they trained
    assert notes[1].startswith("teachers: 1 runs distil from the teacher of their own seed")
    assert notes[2].startswith("a/b/dkd: shortened schedule (dkd.warmup_epochs 20 -> 3)") and len(notes) == 3
    # runs at our defaults: nothing to say (the committed reports of the seed suites stay as they are)
    assert protocol_notes(runs.assign(**{"params.train_on": "train", "params.teacher_seeds": None}).iloc[2:]) == []


def test_the_dkd_settle_suites_change_one_thing_each(runner, tmp_path):
    """dkd_mnist_settle is baselines2019_control's cell as it ran (its finished seeds count); beta2 changes
    DKD's beta only, lr001 every student's lr only; the teacher is the same in all."""
    def key(method, suite):
        return plan(runner, f"mnist1k/hinton1200-hinton800/{method}", tmp_path, suite=suite)

    control = {m: key(m, "baselines2019_control") for m in ("baseline", "kd", "dkd")}
    assert all(key(m, "dkd_mnist_settle").run_key == control[m].run_key for m in control)
    beta2, lr001 = key("dkd", "dkd_mnist_settle_beta2"), key("dkd", "dkd_mnist_settle_lr001")
    assert beta2.objective.parts["dkd"].params.beta == 2.0 and beta2.run_key != control["dkd"].run_key
    assert key("kd", "dkd_mnist_settle_beta2").run_key == control["kd"].run_key
    assert lr001.recipe.lr == 0.01 and control["dkd"].recipe.lr == 0.02
    assert lr001.teacher_info["teacher.key"] == beta2.teacher_info["teacher.key"] == control["dkd"].teacher_info["teacher.key"]


def test_a_report_takes_the_runs_of_the_suites_protocol_and_names_the_others(home):
    """Runs made before a suite trained on train+val are another configuration: left out (named in a
    note) even when they have more seeds."""
    from mlflow.tracking import MlflowClient

    from harness.results.configurations import load_runs

    uri = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.create_experiment("kd-harness")
    cell = "cifar100/resnet56-resnet20/kd"
    for config, train_on, seeds in (("old", "train", 3), ("new", "train+val", 1)):
        for seed in range(seeds):
            run = client.create_run(experiment, tags={"role": "student", "cell": cell, "seed": str(seed), "smoke": "False",
                                                      "suite": "crd_table1", "config_key": config})
            client.log_param(run.info.run_id, "train_on", train_on)
            client.log_metric(run.info.run_id, "test_top1_last", 70.0)
            client.set_terminated(run.info.run_id, "FINISHED")
    runs, notes = load_runs(uri, [cell], suite="crd_table1", train_on="train+val")
    assert set(runs["params.train_on"]) == {"train+val"} and len(runs) == 1
    assert any("left out: old (3 seeds, suite crd_table1)" in n for n in notes)
    runs, notes = load_runs(uri, [cell], suite="crd_table1")
    assert set(runs["params.train_on"]) == {"train"} and any("trained on train+val" in n for n in notes)


def test_list_says_a_suites_training_set(home, capsys):
    from harness.cli import main

    assert main(["list", "--suite", "dkd_cifar100_beta2"]) == 0
    out, err = capsys.readouterr()
    assert "cifar100/resnet56-resnet20/dkd" in out and "trains its students on train+val" in err
    assert main(["list", "--suite", "positive_control"]) == 0
    assert "train+val" not in capsys.readouterr().err


def test_a_train_val_suite_is_not_read_at_the_best_validation_epoch(home, capsys):
    from harness.cli import main

    assert main(["report", "--suite", "crd_table1", "--select", "best-val"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no validation split" in err and len(err.splitlines()) == 1
