"""The speed options on CPU: the teacher-output cache, channels-last, bf16 and fp16 autocast
(fp16 with its GradScaler) and torch.compile; each must train, be recorded, and change the
numbers no more than its rounding explains."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.running.runner import Runner
from harness.spec.options import RunOptions
from harness.spec.spec import load_spec
from harness.training.engine import TrainConfig, Trainer

CELL = "digits/resnet20-resnet8/kd"
MLP_CELL = "digits/hinton1200-hinton800/kd"  # fast under fp16 on CPU, where convolutions have no fp16 kernels


def _trainer(home, cell=CELL, epochs=2, **config):
    """A Trainer for `cell` on the full digits set, with a teacher trained for one epoch."""
    runner = Runner(load_spec(), home, f"sqlite:///{home / 'mlflow.db'}")
    opts = RunOptions(epochs=epochs, teacher_epochs=1, progress=False)
    spec_cell = runner.spec.cell(cell)
    plan = runner.plan(spec_cell, opts)
    recipe, device, data, student, objective = plan.recipe, plan.device, plan.data, plan.student, plan.objective
    pair = runner.spec.pairs[spec_cell.pair]
    teacher = runner.teacher(spec_cell.dataset, pair.teacher, opts) if objective.needs_teacher else None
    train_config = TrainConfig(recipe, 0, pair.stages.teacher, pair.stages.student,
                               RunOptions(progress=False, **config), label="t")
    return Trainer(student, objective, data.batches(device), train_config, device, teacher=teacher)


def count_images(model: torch.nn.Module) -> list[int]:
    """A counter of the images entering `model`'s first layer, by any forward path."""
    first = next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    seen = [0]
    first.register_forward_pre_hook(lambda module, args: seen.__setitem__(0, seen[0] + len(args[0])))
    return seen


@pytest.mark.parametrize("cell", [MLP_CELL, "digits/hinton1200-hinton800/kd+fitnet_hint"])
def test_teacher_cache_sees_each_image_once_and_matches_per_batch_features(home, cell):
    plain = _trainer(home, cell)
    cached = _trainer(home, cell, teacher_cache=True)
    plain_seen, cached_seen = count_images(plain.teachers[0]), count_images(cached.teachers[0])
    plain_summary, cached_summary = plain.run(), cached.run()
    n_train = len(cached.batches.splits["train"])
    steps = len(plain.history) * (n_train // plain.recipe.batch_size)
    assert cached_seen[0] == n_train  # once, whatever the number of epochs
    assert plain_seen[0] == steps * plain.recipe.batch_size
    for a, b in zip(plain.history, cached.history):  # same batches, same teacher: rounding only
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-3)
    assert plain_summary["test_top1_last"] == pytest.approx(cached_summary["test_top1_last"], abs=1.0)


def test_teacher_cache_is_refused_for_augmented_data_and_recorded_otherwise(home, cifar_root, capsys):
    code = main(["run", "--cell", "cifar100/resnet32-resnet14/kd", "--smoke", "--teacher-cache",
                 "--data-root", str(cifar_root), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--teacher-cache needs a dataset trained without augmentation" in err[0]
    assert main(["run", "--cell", CELL, "--smoke", "--teacher-cache", "--no-progress"]) == 0
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.role = 'student'")
    assert [r.data.params["teacher_cache"] for r in runs] == ["True"]
    # the option is part of the run's identity: without it, the cell trains again
    assert main(["run", "--cell", CELL, "--smoke", "--no-progress"]) == 0
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "tags.role = 'student'")) == 2


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_trains_close_to_fp32(home, amp):
    reference = _trainer(home, MLP_CELL, epochs=3).run()
    trainer = _trainer(home, MLP_CELL, epochs=3, amp=amp)
    summary = trainer.run()
    assert summary["test_top1_last"] > 75
    assert summary["test_top1_last"] == pytest.approx(reference["test_top1_last"], abs=5)
    state = trainer.state()["grad_scaler"]
    if amp == "fp16":  # the loss was scaled, and the scale is checkpointed
        assert trainer.scaler.is_enabled() and state["scale"] > 1
    else:
        assert not trainer.scaler.is_enabled()


def test_channels_last_is_the_same_training(home):
    reference = _trainer(home, epochs=1)
    trainer = _trainer(home, epochs=1, channels_last=True)
    reference.run()
    summary = trainer.run()
    assert next(trainer.student.parameters()).is_contiguous(memory_format=torch.channels_last) or \
        any(p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last) for p in trainer.student.parameters())
    assert reference.history[0]["train/loss"] == pytest.approx(trainer.history[0]["train/loss"], rel=1e-3)
    assert summary["test_top1_last"] == pytest.approx(reference.history[0]["test/top1"], abs=2)


def test_compile_trains_through_inductor(home):
    reference = _trainer(home, epochs=1)
    trainer = _trainer(home, epochs=1, compile=True)
    reference.run()
    summary = trainer.run()
    assert trainer.extract is not reference.extract
    assert reference.history[0]["train/loss"] == pytest.approx(trainer.history[0]["train/loss"], rel=1e-2)
    assert summary["test_top1_last"] == pytest.approx(reference.history[0]["test/top1"], abs=2)


def test_each_compiled_trainer_starts_from_a_clean_dynamo_cache(home):
    """Dynamo's recompile limit counts every graph of `extract_features` in the process; without a
    reset per Trainer, a suite (or `harness perf`) in one process fell back to eager after a few cells."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from harness.models import extract_features

    def graphs_after_one_step(trainer):
        plan = trainer.batches.epoch_plan(trainer.recipe.batch_size, torch.Generator().manual_seed(0))
        trainer.train_step(*trainer.batches.train_batch(plan, 0))
        return len(_debug_get_cache_entry_list(extract_features.__code__))

    torch._dynamo.reset()
    alone = graphs_after_one_step(_trainer(home, CELL, epochs=1, compile=True))  # the ResNet cell's graphs
    kept = _trainer(home, MLP_CELL, epochs=1, compile=True)  # alive, as a suite's shared teacher is
    assert graphs_after_one_step(kept) > 0
    after = graphs_after_one_step(_trainer(home, CELL, epochs=1, compile=True))
    assert after == alone  # the MLP cell's graphs were dropped, not added to (measured without: 4 vs 2)


def test_bench_times_profiles_and_logs(home, capsys):
    args = ["bench", "--dataset", "digits", "--pair", "resnet20-resnet8", "--methods", "nst_poly", "--steps", "2",
            "--warmup", "1", "--teacher-epochs", "1", "--log", "--profile", "--batch-size", "16", "--no-progress",
            "--folder-images", "200"]  # enough for 8 loader workers' steady window
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "harness kd step / bare kd loop = " in out
    assert "CPU: " in out and "native bf16: " in out  # the CPU line (a GPU run prints its GPU instead)
    assert "image-folder input: " in out and "images/s (400x350 JPEG -> 224 crop; bound: JPEG decode on" in out
    assert "## nst_poly: operators by CPU time (torch.profiler)" in out and "aten::" in out
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.role = 'bench'")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"bench.csv", "profile-baseline.txt", "profile-kd.txt", "profile-nst_poly.txt"} <= artifacts
    assert run.data.metrics["nst_poly.harness.ms_per_step"] > 0
    assert run.data.params["batch_size"] == "16"
    import io

    import pandas as pd
    from mlflow.artifacts import download_artifacts

    csv = download_artifacts(run_id=run.info.run_id, artifact_path="bench.csv",
                             tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    table = pd.read_csv(io.StringIO(open(csv).read()))
    assert (table.images_per_s * table.ms_per_step / 1000).round(6).eq(16).all()  # 16 images a step, not 64
    kd = table[table.method == "kd"].set_index("path").ms_per_step
    # timings on a shared machine vary too much to bound; the ratio must be the one of the rows
    assert run.data.metrics["harness_over_bare"] == pytest.approx(kd["harness"] / kd["bare loop"])
    assert list(table.method) == ["baseline", "kd", "kd", "nst_poly"]


def test_sweep_trials_share_one_teacher_cache(home):
    """--teacher-cache in a sweep: the teacher sees each training image once for the whole study."""
    from harness.tuning.options import SweepOptions
    from harness.tuning.sweep import Sweep

    runner = Runner(load_spec(), home, f"sqlite:///{home / 'mlflow.db'}")
    opts = RunOptions(epochs=1, teacher_epochs=1, progress=False, teacher_cache=True)
    sweep = Sweep(runner, runner.spec.cell(MLP_CELL), opts, SweepOptions(
        trials=3, study="cache", storage=f"sqlite:///{home / 'optuna.db'}", pruner="none", space=["tau=float:1:8"]))
    seen = count_images(sweep.teachers[0])
    study = sweep.run()
    assert len([t for t in study.trials if t.value is not None]) == 3
    assert seen[0] == len(runner.data("digits", opts).train)


def test_amp_auto_and_the_bf16_warning_follow_the_cpu(monkeypatch, capsys):
    from harness.training import device

    device._warn_emulated_bf16.cache_clear()  # once per process: an earlier test may have said it already
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2", "fma"})  # an AVX2-only CPU
    assert device.resolve_amp("auto", "cpu") == "off"
    assert device.resolve_amp("bf16", "cpu") == "bf16"  # allowed, but said loudly
    assert "emulated" in capsys.readouterr().err
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16"})
    assert device.resolve_amp("auto", "cpu") == "bf16"
    assert device.resolve_amp("bf16", "cpu") == "bf16" and capsys.readouterr().err == ""
    assert device.resolve_amp("off", "cpu") == "off"
