"""The GPU acceptance check: one command that a session with a lent GPU runs first.

    python -m harness.performance.acceptance --device cuda --out results/perf/gpu      (scripts/gpu_acceptance.sh)
    python -m harness.performance.acceptance --device cpu --out /tmp/acc               (the same check, small, in CI)

It needs the harness's code and pydantic, not MLflow or Optuna (the lent machine has neither): it
drives plans and the engine directly, with untrained teachers, so each figure is a speed or a
correctness check, never an accuracy. Sections: versions and precision flags; every method under
fp32, bf16, fp16, channels-last and compile (finite losses, ms/step); a cell killed (SIGKILL) and
resumed against an uninterrupted run; `harness bench` on ResNet-32 -> ResNet-14 (CIFAR-shaped
synthetic data); the image-folder path's images/s. Each section's failure is recorded, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.performance.bench import folder_throughput, sync, untrained_teachers
from harness.running.plan import deterministic
from harness.running.runner import Runner
from harness.spec.options import RunOptions
from harness.spec.spec import load_spec
from harness.tracking.provenance import GIT_COMMIT, GIT_DIRTY, cuda_params
from harness.training.checkpoint import CheckpointStore
from harness.training.device import configure_determinism
from methods import pair_mismatch

OPTION_SETS = {"fp32": {}, "bf16": {"amp": "bf16"}, "fp16": {"amp": "fp16"}, "channels-last": {"channels_last": True},
               "compile": {"compile": True, "deterministic": False}}
METHOD_PAIRS = ("resnet20-resnet8", "hinton1200x3-hinton800")  # digits: every method has a cell on one


def versions(device: torch.device) -> dict:
    out = {"torch": torch.__version__, "python": sys.version.split()[0], "device": str(device),
           "git_commit": GIT_COMMIT + ("+dirty" if GIT_DIRTY else ""), **cuda_params(device)}
    if device.type == "cuda":
        out |= {"gpu": torch.cuda.get_device_name(device), "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
                "bf16_supported": torch.cuda.is_bf16_supported(),
                "default_matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "default_cudnn_tf32": torch.backends.cudnn.allow_tf32}
    return out


def method_matrix(runner: Runner, device: str, option_sets: dict, steps: int, compile_budget_s: float = 1e9) -> list[dict]:
    """Every method of benchmarks.yaml on its digits cell, under each option set: `steps` engine
    steps with finite losses, and the median ms/step of the steps after the first. Compiled cells
    stop once the matrix has run `compile_budget_s` (each compiles anew): the rest say so."""
    rows, started = [], time.perf_counter()
    for method in runner.spec.methods:
        pair = next(p for p in METHOD_PAIRS if pair_mismatch(runner.spec, method, p) is None)
        for name, options in option_sets.items():
            row = {"method": method, "pair": pair, "options": name}
            if options.get("compile") and time.perf_counter() - started > compile_budget_s:
                rows.append(row | {"status": f"not run: past the {compile_budget_s:.0f} s budget"})
                continue
            try:
                plan = runner.plan(runner.spec.cell(f"digits/{pair}/{method}"),
                                   RunOptions(smoke=True, progress=False, device=device, **options))
                configure_determinism(deterministic(plan.opts, plan.device), plan.device)
                trainer = plan.trainer(untrained_teachers(runner, plan), eval_splits=(), label=method)
                epoch = trainer.batches.epoch_plan(trainer.recipe.batch_size, torch.Generator().manual_seed(0))
                times, terms = [], {}
                for step in range(steps):
                    sync(plan.device)
                    started = time.perf_counter()
                    losses, _ = trainer.step_on(epoch, step)
                    sync(plan.device)
                    times.append(time.perf_counter() - started)
                    terms = {k: v.detach().item() for k, v in losses.items()}
                bad = [k for k, v in terms.items() if not np.isfinite(v)]
                row |= {"status": "FAIL: non-finite " + ", ".join(bad) if bad else "ok",
                        "ms_per_step": 1000 * statistics.median(times[1:] or times), "losses": terms}
            except Exception as e:  # recorded: the matrix shows every failure at once
                row |= {"status": f"FAIL: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
            rows.append(row)
    return rows


# every method eager; the target's settings (bf16, channels-last, compile) for kd, whose epoch GPU.md times
BENCH_SETS = {"fp32": ({}, None), "bf16+channels-last": ({"amp": "bf16", "channels_last": True}, None),
              "bf16+channels-last+compile": ({"amp": "bf16", "channels_last": True, "compile": True,
                                              "deterministic": False}, ["kd"])}
RESUME_CELL = {"mnist": "mnist/hinton1200-hinton800/kd", "digits": "digits/hinton1200-hinton800/kd"}


def resume_child(runner: Runner, cell: str, device: str, epochs: int, directory: Path, data_root: str | None) -> None:
    """Train `cell` deterministically with checkpoints in `directory` (resuming from them), then
    write the per-epoch history there: what the parent kills and compares."""
    opts = RunOptions(epochs=epochs, progress=False, device=device, deterministic=True, data_root=data_root)
    plan = runner.plan(runner.spec.cell(cell), opts)
    configure_determinism(True, plan.device)
    trainer = plan.trainer(untrained_teachers(runner, plan), checkpoints=CheckpointStore(directory / "ckpt"))
    trainer.run()
    (directory / "history.json").write_text(json.dumps(trainer.history))


def resume_check(args, cell: str) -> dict:
    """Uninterrupted run vs. a run SIGKILLed after its second checkpoint and resumed: the same history."""
    work = Path(tempfile.mkdtemp(prefix="acceptance-resume-"))
    child = [sys.executable, "-m", "harness.performance.acceptance", "--device", args.device, "--resume-child", cell,
             "--epochs", str(args.epochs)] + (["--data-root", args.data_root] if args.data_root else [])
    started = time.perf_counter()
    subprocess.run(child + ["--out", str(work / "whole")], check=True, timeout=900)
    whole_seconds = time.perf_counter() - started
    killed = subprocess.Popen(child + ["--out", str(work / "killed")])
    while not (work / "killed" / "ckpt" / "ckpt-000001.sha256").exists():
        if killed.poll() is not None:
            raise RuntimeError(f"the run to kill ended first (exit {killed.returncode})")
        time.sleep(0.01)
    time.sleep(whole_seconds / args.epochs / 3)  # into the next epoch
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    subprocess.run(child + ["--out", str(work / "killed")], check=True, timeout=900)
    whole, resumed = (json.loads((work / name / "history.json").read_text()) for name in ("whole", "killed"))
    keys = ("train/loss", "val/top1", "test/top1")
    diffs = {k: max(abs(a[k] - b[k]) for a, b in zip(whole, resumed)) for k in keys}
    return {"cell": cell, "epochs": args.epochs, "epochs_logged": [len(whole), len(resumed)],
            "identical": all(d == 0 for d in diffs.values()) and len(whole) == len(resumed),
            "max_abs_diff": diffs, "seconds_uninterrupted": whole_seconds}


def synthetic_cifar100(root: Path, n_train: int, n_test: int) -> Path:
    """Random images in CIFAR-100's own pickle layout (read by torchvision's loader): a speed input."""
    rng = np.random.default_rng(0)
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 100, n)
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": labels.tolist(),
                         "coarse_labels": (labels // 5).tolist()}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}, f)
    return root


def bench_section(runner: Runner, args, dataset: str, pair: str, data_root: str, option_sets: dict) -> list[dict]:
    """`harness bench` under each option set: {name: (options, methods or None for every method)}."""
    import torchvision.datasets.cifar as tv_cifar

    from harness.performance.bench import bench

    # the synthetic files cannot match CIFAR's md5 sums: only this speed check skips torchvision's check
    tv_cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)

    every = [m for m in runner.spec.methods if pair_mismatch(runner.spec, m, pair) is None]
    out = []
    for name, (options, methods) in option_sets.items():
        methods = every if methods is None else methods
        opts = RunOptions(progress=False, device=args.device, data_root=data_root, **options)
        plan = runner.plan(runner.spec.cell(f"{dataset}/{pair}/kd"), opts)
        table = bench(runner, dataset, pair, methods, opts, args.bench_steps, 3, teachers=untrained_teachers(runner, plan))
        kd = table[(table.method == "kd") & (table.path == "harness")].iloc[0]
        out.append({"options": name, "harness_over_bare": table.attrs["harness_over_bare"],
                    "kd_images_per_s": kd.images_per_s, "epoch_seconds_50k": 50_000 / kd.images_per_s,
                    "table": table.drop(columns=[c for c in table.columns if c == "extra_parameters"]).to_dict("records")})
    return out


def render(report: dict) -> str:
    lines = [f"# GPU acceptance: {report['versions'].get('gpu', report['versions']['device'])}", "",
             f"Command: `{report['command']}`; wall {report['wall_seconds']:.0f} s.", "", "## Versions and precision flags", ""]
    lines += [f"- {k}: {v}" for k, v in report["versions"].items()]
    lines += ["", "## Every method under each option set (digits smoke cells, untrained teachers)", "",
              "| method | " + " | ".join(report["option_sets"]) + " |", "|---" * (1 + len(report["option_sets"])) + "|"]
    by_method: dict[str, dict] = {}
    for row in report.get("methods", []):
        cell = f"{row['ms_per_step']:.1f} ms" if row["status"] == "ok" else row["status"]
        by_method.setdefault(row["method"], {})[row["options"]] = cell
    lines += [f"| {m} | " + " | ".join(cells.get(o, "") for o in report["option_sets"]) + " |" for m, cells in by_method.items()]
    for bench in report.get("bench", []):
        lines += ["", f"## bench, cifar100/resnet32-resnet14 (synthetic CIFAR-shaped data), {bench['options']}", "",
                  f"harness kd step / bare kd loop = {bench['harness_over_bare']:.3f}; kd {bench['kd_images_per_s']:.0f} "
                  f"images/s, so one 50,000-image epoch takes {bench['epoch_seconds_50k']:.2f} s", "",
                  pd.DataFrame(bench["table"]).to_markdown(index=False, floatfmt=".3f")]
    for section in ("resume", "folder", "errors"):
        if section in report:
            lines += ["", f"## {section}", "", "```", json.dumps(report[section], indent=1, default=str), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.performance.acceptance", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", help="where MNIST lies (else the resume check runs on digits)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--bench-steps", type=int, default=20)
    p.add_argument("--resume-child", metavar="CELL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="acceptance-home-"))
    runner = Runner(load_spec(), home, f"sqlite:///{home / 'unused.db'}")
    if args.resume_child:
        resume_child(runner, args.resume_child, args.device, args.epochs, out, args.data_root)
        return 0
    on_gpu = args.device == "cuda"
    option_sets = OPTION_SETS if on_gpu else {k: OPTION_SETS[k] for k in ("fp32", "bf16", "fp16")}
    started = time.perf_counter()
    report = {"command": shlex.join(["python", "-m", "harness.performance.acceptance", *(argv or sys.argv[1:])]),
              "versions": versions(torch.device("cuda" if on_gpu else "cpu")), "option_sets": list(option_sets), "errors": {}}
    # the resume check on MNIST where it lies (on the GPU); digits keeps the CPU mode inside CI's minutes
    mnist = on_gpu and args.data_root and (Path(args.data_root) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()
    # on the GPU 50,000 training images once the recipe's 5,000 are held out: the target's epoch
    cifar = str(synthetic_cifar100(Path(tempfile.mkdtemp(prefix="acceptance-cifar-")), 55_000 if on_gpu else 5_600, 1000))
    sections = {
        "methods": lambda: method_matrix(runner, args.device, option_sets, steps=4 if on_gpu else 2,
                                         compile_budget_s=180),
        "resume": lambda: resume_check(args, RESUME_CELL["mnist" if mnist else "digits"]),
        "bench": lambda: bench_section(runner, args, "cifar100", "resnet32-resnet14", cifar, BENCH_SETS if on_gpu
                                       else {"fp32": ({}, ["kd", "at", "nst_poly"])}),
        "folder": lambda: folder_throughput(runner.spec, args.device, 2048 if on_gpu else 64, 256 if on_gpu else 16),
    }
    for name, section in sections.items():
        try:
            report[name] = section()
        except Exception:
            report["errors"][name] = traceback.format_exc()[-3000:]
        report["wall_seconds"] = time.perf_counter() - started
        (out / "acceptance.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "ACCEPTANCE.md").write_text(render(report))
        print(f"acceptance: {name} done ({report['wall_seconds']:.0f} s)", flush=True)
    failures = [r for r in report.get("methods", []) if r["status"] != "ok"]
    resumed = report.get("resume", {}).get("identical", False)
    print(f"acceptance: {len(failures)} method/option failures; resume identical: {resumed}; "
          f"sections failed: {sorted(report['errors']) or 'none'}; written to {out}")
    return 1 if failures or report["errors"] or not resumed else 0


if __name__ == "__main__":
    sys.exit(main())
