"""The acceptance check's resume section: a run SIGKILLed mid-training and resumed must log the same
history as an uninterrupted one.

    python -m harness.performance.resume_check --device cpu --cell CELL --epochs 4 --out DIR   (a child)

The parent (resume_check) starts an uninterrupted child and one it kills: the kill is timed from
that child's own progress (it prints "epoch N done" once the epoch's checkpoint is written), right
after its first epoch, so the run dies inside its second and must resume from epoch 1, well before
the last. The check asserts the exit signal and the epoch resumed from, then compares the
histories. --forget-optimizer breaks the resume on purpose (the checkpoint's optimizer state, SGD's
momentum, is dropped on loading): the check must then fail, and its test says it does.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.performance.bench import untrained_teachers
from harness.running.runner import Runner
from harness.spec.options import RunOptions
from harness.spec.spec import load_spec
from harness.training.checkpoint import CheckpointStore
from harness.training.device import configure_determinism

CHILD_TIMEOUT_S = 240  # each child; the lent machine stops a command at 600 s
RESUMED = re.compile(r"resuming from epoch (\d+), step (\d+)")


class ForgetfulStore(CheckpointStore):
    """A deliberately broken resume: the optimizer's state (momentum) is lost on loading."""

    def load_latest(self) -> dict | None:
        state = super().load_latest()
        if state is not None:
            state["optimizer"]["state"] = {}
        return state


def resume_child(cell: str, device: str, epochs: int, directory: Path, data_root: str | None,
                 forget_optimizer: bool = False) -> None:
    """Train `cell` deterministically with checkpoints in `directory` (resuming from them), saying
    each finished epoch on stdout; then write the per-epoch history there."""
    home = Path(tempfile.mkdtemp(prefix="acceptance-home-"))
    runner = Runner(load_spec(), home, f"sqlite:///{home / 'unused.db'}")
    plan = runner.plan(runner.spec.cell(cell), RunOptions(epochs=epochs, progress=False, device=device,
                                                          deterministic=True, data_root=data_root))
    configure_determinism(True, plan.device)
    store = (ForgetfulStore if forget_optimizer else CheckpointStore)(directory / "ckpt")
    trainer = plan.trainer(untrained_teachers(runner, plan), checkpoints=store,
                           log=lambda metrics, epoch: print(f"epoch {epoch} done", flush=True))
    trainer.run()
    (directory / "history.json").write_text(json.dumps(trainer.history))


def resume_check(device: str, cell: str, epochs: int, data_root: str | None = None,
                 forget_optimizer: bool = False) -> dict:
    """Uninterrupted run vs. one SIGKILLed once its first epoch is reported, then resumed: the record,
    with "status" "ok" or "FAIL: why"."""
    if epochs < 3:
        raise ValueError("the resume check needs 3 epochs or more: a kill in the second, before the last")
    work = Path(tempfile.mkdtemp(prefix="acceptance-resume-"))
    child = [sys.executable, "-m", "harness.performance.resume_check", "--device", device, "--cell", cell,
             "--epochs", str(epochs)] + (["--data-root", data_root] if data_root else [])
    started = time.perf_counter()
    whole = subprocess.Popen(child + ["--out", str(work / "whole")], stdout=subprocess.DEVNULL)
    killed = subprocess.Popen(child + ["--out", str(work / "killed")], stdout=subprocess.PIPE, text=True)
    first_line = killed.stdout.readline()  # blocks until the child has checkpointed its first epoch
    if first_line.strip() == "epoch 0 done":
        killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=CHILD_TIMEOUT_S)
    record = {"cell": cell, "epochs": epochs, "killed_after": first_line.strip() or "nothing said",
              "exit": killed.returncode,
              "exit_signal": signal.Signals(-killed.returncode).name if killed.returncode < 0 else None}
    resumed = subprocess.run(child + ["--out", str(work / "killed")] + (["--forget-optimizer"] if forget_optimizer else []),
                             capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    whole.wait(timeout=CHILD_TIMEOUT_S)
    record["seconds"] = time.perf_counter() - started
    found = RESUMED.search(resumed.stderr)
    record["resumed_from"] = [int(found[1]), int(found[2])] if found else None
    if whole.returncode != 0 or resumed.returncode != 0:
        return record | {"status": f"FAIL: a child failed (exits {whole.returncode}, {resumed.returncode}): "
                                   f"{resumed.stderr.strip()[-500:]}"}
    if record["exit_signal"] != "SIGKILL":
        return record | {"status": f"FAIL: the run to kill was not killed (exit {killed.returncode})"}
    if found is None or not 1 <= int(found[1]) < epochs - 1:
        return record | {"status": f"FAIL: resumed from {record['resumed_from']}, not from epoch 1 .. {epochs - 2}"}
    histories = [json.loads((work / name / "history.json").read_text()) for name in ("whole", "killed")]
    keys = ("train/loss", "val/top1", "test/top1")
    record["epochs_logged"] = [len(h) for h in histories]
    record["max_abs_diff"] = {k: max(abs(a[k] - b[k]) for a, b in zip(*histories)) for k in keys}
    record["identical"] = all(d == 0 for d in record["max_abs_diff"].values()) and len(histories[0]) == len(histories[1])
    return record | {"status": "ok" if record["identical"] else "FAIL: the resumed run's history differs"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.performance.resume_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", required=True)
    p.add_argument("--cell", required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-root")
    p.add_argument("--forget-optimizer", action="store_true", help="break the resume on purpose (the check's test)")
    args = p.parse_args(argv)
    resume_child(args.cell, args.device, args.epochs, Path(args.out), args.data_root, args.forget_optimizer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
