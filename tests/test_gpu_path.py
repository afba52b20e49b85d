"""The CUDA path's rules, checked where they can be on a CPU (autocast, the loop's guard, resume on
fewer devices, identity, the device-side epoch plan); tests marked `cuda` run them on a GPU."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.models import extract_features
from harness.running.runner import Runner
from harness.spec.options import RunOptions
from harness.spec.spec import load_spec
from harness.training.device import autocast
from harness.training.step import StudentStep
from methods import pair_mismatch

SPEC = load_spec()
PAIRS = ("resnet20-resnet8", "hinton1200x3-hinton800")  # a ResNet pair; the multi-teacher pair for mt
# a step under autocast against fp32 on the same weights and batch: the networks round their
# activations (bf16: 8 significant bits, fp16: 11), the losses may not move more than this
TOLERANCE = {"bf16": (0.15, 0.05), "fp16": (0.03, 0.01)}  # (relative, absolute)


def method_cells() -> list[str]:
    """One digits cell per method of benchmarks.yaml: every method is covered."""
    cells = []
    for method in SPEC.methods:
        pair = next(p for p in PAIRS if pair_mismatch(SPEC, method, p) is None)
        cells.append(f"digits/{pair}/{method}")
    return cells


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return Runner(SPEC, home, f"sqlite:///{home / 'mlflow.db'}")


def _step_inputs(runner, cell_id: str):
    """The cell's plan, its (smoke) teachers in fp32, and a fixed batch."""
    cell = SPEC.cell(cell_id)
    opts = RunOptions(smoke=True, progress=False)
    plan = runner.plan(cell, opts)
    teachers = plan.teachers() or []
    torch.manual_seed(0)
    batches = plan.data.batches(plan.device, ("train",))
    x, y = batches.train_batch(batches.epoch_plan(32, torch.Generator().manual_seed(0)), 0)
    plan.objective.bind_training_set(batches.splits["train"].labels)  # CRD's banks; a no-op for the rest
    plan.initial_state = copy.deepcopy(plan.objective.state_dict())
    return plan, teachers, x, y


def _losses(plan, teachers, x, y, amp: str, extract=extract_features) -> dict[str, float]:
    pair = plan.pair
    step = StudentStep(plan.student, plan.objective, extract, pair.stages.student)
    plan.objective.load_state_dict(plan.initial_state)  # method state (CRD's banks) as before every call
    indices = torch.arange(len(x)) if plan.objective.reads_indices else None
    torch.manual_seed(1)  # dropout of the Hinton MLPs, CRD's negatives: the same in every precision
    with autocast(x.device, amp):
        with torch.no_grad():
            teacher_features = [extract(t, x, plan.objective.teacher_features, pair.stages.teacher) for t in teachers]
        losses, _ = step(x, teacher_features or None, y, "main", indices)
    return {k: v.item() for k, v in losses.items()}


@pytest.mark.parametrize("cell_id", method_cells())
def test_loss_terms_run_in_fp32_under_autocast(runner, cell_id):
    """On fixed fp32 features, a method's terms under bf16/fp16 autocast are bit-identical to fp32's:
    autocast covers the networks only. Through the real networks, every term is finite under both
    and within TOLERANCE of fp32's."""
    plan, teachers, x, y = _step_inputs(runner, cell_id)
    pair = plan.pair
    with torch.no_grad():
        objective = plan.objective
        fixed = {id(model): extract_features(model, x, kinds, stages)
                 for model, kinds, stages in [(plan.student, objective.student_features, pair.stages.student)]
                 + [(t, objective.teacher_features, pair.stages.teacher) for t in teachers]}

    def fixed_extract(model, x, want, stages):
        return {k: v for k, v in fixed[id(model)].items() if k in want}

    reference = _losses(plan, teachers, x, y, "off", fixed_extract)
    for amp in ("bf16", "fp16"):
        assert _losses(plan, teachers, x, y, amp, fixed_extract) == reference, amp
    through_networks = _losses(plan, teachers, x, y, "off")
    for amp, (rel, abs_) in TOLERANCE.items():
        ours = _losses(plan, teachers, x, y, amp)
        assert set(ours) == set(through_networks)
        for term, value in ours.items():
            assert math.isfinite(value), (amp, term)
            assert value == pytest.approx(through_networks[term], rel=rel, abs=abs_), (amp, term)


def test_nmt_smoke_cell_finishes_under_bf16(home):
    """The issue's reproduction: `--amp bf16` NMT ended in 'linalg_eigh_cpu not implemented for BFloat16'."""
    assert main(["run", "--cell", "digits/resnet20-resnet8/nmt", "--smoke", "--amp", "bf16", "--no-progress"]) == 0
    # the student is logged as a CPU copy with a signature: it loads on a CPU-only host
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.role = 'student'")
    mlmodel = Path(client.download_artifacts(run.info.run_id, "model/MLmodel", str(home))).read_text()
    assert "signature:" in mlmodel and "inputs:" in mlmodel


def _mlp_trainer(home, epochs: int = 1):
    from harness.training.engine import Trainer

    runner = Runner(SPEC, home, f"sqlite:///{home / 'mlflow.db'}")
    plan = runner.plan(SPEC.cell("digits/hinton1200-hinton800/baseline"), RunOptions(epochs=epochs, progress=False))
    trainer = plan.trainer(None, eval_splits=())
    assert isinstance(trainer, Trainer)
    return trainer


def test_the_guard_reads_the_device_every_few_steps_and_reports_the_first_bad_step(home, monkeypatch):
    """No host sync per step: the non-finite record is read every GUARD_EVERY steps (and at the
    epoch's end), yet the step reported is the one whose loss went non-finite."""
    import harness.training.monitor
    from harness.training.monitor import FiniteGuard, NonFiniteLoss

    every = 5
    monkeypatch.setattr(harness.training.monitor, "GUARD_EVERY", every)
    trainer = _mlp_trainer(home)
    steps = len(trainer.batches.splits["train"]) // trainer.recipe.batch_size
    assert steps > 2 * every and steps % every
    reads = []
    went_bad = FiniteGuard.went_bad
    monkeypatch.setattr(FiniteGuard, "went_bad", lambda self: reads.append(1) or went_bad(self))
    trainer.run()
    assert len(reads) == math.ceil(steps / every)  # every 5 steps and the epoch's last

    bad_step = every + 3
    trainer = _mlp_trainer(home)
    objective_forward = trainer.objective.forward
    calls = [0]

    def poisoned(*args, **kwargs):
        losses = objective_forward(*args, **kwargs)
        calls[0] += 1
        return losses | {"ce": losses["ce"] * math.inf} if calls[0] - 1 == bad_step else losses

    monkeypatch.setattr(trainer.objective, "forward", poisoned)
    with pytest.raises(NonFiniteLoss) as failure:
        trainer.run()
    assert (failure.value.epoch, failure.value.step, failure.value.term) == (0, bad_step, "ce")
    assert calls[0] == 2 * every  # found at the next look, not at once


def test_a_solver_failure_ends_the_run_failed_with_its_reason(home, monkeypatch, capsys):
    import methods.kd

    def failing(*args, **kwargs):  # as a solver inside a loss would
        raise torch.linalg.LinAlgError("linalg.eigh: the algorithm failed to converge")

    monkeypatch.setattr(methods.kd, "kd_loss", failing)
    assert main(["run", "--cell", "digits/hinton1200-hinton800/kd", "--smoke", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "training failed" in err[-1] and "could not compute its loss" in err[-1] and "Traceback" not in "".join(err)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.role = 'student'")
    assert run.info.status == "FAILED" and run.data.tags["failure"] == "method_failed"
    assert "failed to converge" in run.data.tags["failure_reason"]


def test_a_checkpoint_holds_the_training_device_rng_only_and_resumes_on_fewer_gpus(home, monkeypatch):
    """A run trained on cuda:3 of an 8-GPU node resumes on a node whose one GPU is cuda:0 (a SLURM
    takeover): the checkpoint holds one generator state, restored to the device the run has now."""
    trainer = _mlp_trainer(home)
    assert trainer.state()["cuda_rng"] is None  # a CPU run stores no CUDA state
    state = trainer.state()
    state["cuda_rng"] = torch.zeros(16, dtype=torch.uint8)  # as saved by torch.cuda.get_rng_state("cuda:3")
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda value, device: restored.append((value, device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda *a: pytest.fail("restores every GPU's state"))
    resumed = _mlp_trainer(home)
    resumed.device = torch.device("cuda", 0)  # the takeover's only GPU
    resumed.restore(state)
    assert len(restored) == 1 and restored[0][1] == torch.device("cuda", 0)
    legacy = dict(state, cuda_rng=[torch.zeros(16, dtype=torch.uint8)] * 8)  # get_rng_state_all() of 8 GPUs
    _mlp_trainer(home).restore(legacy)


def test_the_epoch_plan_lives_on_the_training_device():
    from harness.data.sources import load_data

    data = load_data("digits", SPEC.datasets["digits"], None, False, True)
    batches = data.batches(torch.device("cpu"))
    plan = batches.epoch_plan(32, torch.Generator().manual_seed(0))
    assert all(v.device == batches.device for v in plan.values() if isinstance(v, torch.Tensor))


def _cuda_identity(monkeypatch):
    import harness.running.plan
    import harness.running.runner

    cuda = lambda name, context=None: torch.device("cuda", 0)  # noqa: E731
    monkeypatch.setattr(harness.running.plan, "resolve_device", cuda)
    monkeypatch.setattr(harness.running.runner, "resolve_device", cuda)


def test_the_device_type_names_a_cuda_run_and_leaves_cpu_keys_unchanged(home, monkeypatch):
    runner = Runner(SPEC, home, f"sqlite:///{home / 'mlflow.db'}")
    cell = SPEC.cell("digits/resnet20-resnet8/kd")
    cpu = runner.plan(cell, RunOptions(progress=False))
    assert "device_type" not in cpu.identity  # CPU runs keep their pinned keys (tests/test_plan.py)
    _cuda_identity(monkeypatch)
    gpu = runner.plan(cell, RunOptions(progress=False))
    assert gpu.identity["device_type"] == "cuda" and gpu.run_key != cpu.run_key
    assert gpu.teacher_info["teacher.key"] != cpu.teacher_info["teacher.key"]
    tf32 = runner.plan(cell, RunOptions(progress=False, tf32=True))
    assert tf32.identity["tf32"] is True and tf32.run_key != gpu.run_key
    assert tf32.teacher_info["teacher.key"] != gpu.teacher_info["teacher.key"]


@pytest.mark.parametrize("flag, message", [("--tf32", "--tf32 sets CUDA's matmul"),
                                           ("--sync-bn", "--sync-bn synchronises batch norm")])
def test_cuda_only_options_on_a_cpu_run_are_one_line(home, capsys, flag, message):
    assert main(["run", "--cell", "digits/resnet20-resnet8/kd", "--smoke", "--device", "cpu", flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (home / "mlflow.db").exists() or "student" not in str(list(home.glob("runs/*")))


def test_gpu_runs_are_never_marked_as_measured_under_load():
    import pandas as pd

    from harness.results.report import under_load

    runs = pd.DataFrame({"metrics.max_load_1m": [9.0, 9.0, 1.0], "metrics.cpu_count": [16, 16, 16],
                         "params.env.threads": ["1", "1", "1"], "params.env.device": ["cuda:0", "cpu", "cpu"]})
    assert under_load(runs).tolist() == [False, True, False]


def test_device_auto_says_so_when_nvidia_smi_sees_a_gpu_torch_cannot_use(monkeypatch, capsys):
    import harness.tracking.provenance
    from harness.running.plan import resolve_device, warn_unusable_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(harness.tracking.provenance, "nvidia_smi", lambda *q: ["GPU 0: NVIDIA H200 (UUID: GPU-1)"])
    warn_unusable_gpu.cache_clear()
    assert resolve_device("auto") == torch.device("cpu")
    assert "nvidia-smi sees 1 GPU(s)" in capsys.readouterr().err
    warn_unusable_gpu.cache_clear()


def test_the_local_launcher_gives_each_worker_its_own_gpu(monkeypatch):
    from harness.running.launch import gpu_per_worker, local_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert local_gpus() == ["2", "5"]
    assert gpu_per_worker(2, local_gpus()) == ["2", "5"]
    assert gpu_per_worker(3, ["0"]) == ["0", "0", "0"]
    assert gpu_per_worker(2, []) == [None, None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpus() == []


def test_the_default_test_run_hides_gpus():
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_torchrun_picks_the_backend_of_the_device_and_refuses_misplaced_ranks(monkeypatch):
    import torch.distributed as dist

    from harness.errors import UserError
    from harness.training import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    context = distributed.from_environment("cpu")  # a GPU machine, a CPU run: gloo
    assert (context.rank, context.world_size) == (1, 2)
    assert calls[-1][0] == "gloo" and calls[-1][1]["timeout"].total_seconds() == 1800
    with pytest.raises(UserError, match="local rank 1 has no GPU: 1 visible"):
        distributed.from_environment("auto")
    with pytest.raises(UserError, match="--device cuda:1 under torchrun"):
        distributed.from_environment("cuda:1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    distributed.from_environment("cuda")
    assert calls[-1][0] == "nccl" and calls[-1][1]["device_id"] == torch.device("cuda", 1)


def test_an_error_on_rank_0_before_its_decision_reaches_the_other_ranks(home, monkeypatch):
    """Rank 0 fails before it broadcasts skip/train: it broadcasts the error instead (no rank waits
    for a broadcast that never comes), and a follower given that error stops at once."""
    from harness.running import lifecycle
    from harness.running.lifecycle import Job, TrainingFailed
    from harness.training import distributed

    sent = []
    monkeypatch.setattr(distributed, "broadcast", lambda context, value=None: sent.append(value) or value)
    runner = Runner(SPEC, home, f"sqlite:///{home / 'mlflow.db'}", distributed.Context(0, 2, 0))
    monkeypatch.setattr(Runner, "tracker", property(lambda self: (_ for _ in ()).throw(OSError("store unreachable"))))
    job = Job("key", "a run", {}, dict, {}, make_trainer=None)
    with pytest.raises(OSError, match="store unreachable"):
        lifecycle.execute(runner, job, force=False)
    assert sent == [("error", "OSError: store unreachable")]
    follower = Runner(SPEC, home, "sqlite://", distributed.Context(1, 2, 1))
    monkeypatch.setattr(distributed, "broadcast", lambda context, value=None: ("error", "OSError: store unreachable"))
    with pytest.raises(TrainingFailed, match="rank 0 failed before training"):
        lifecycle.execute(follower, job, force=False)
