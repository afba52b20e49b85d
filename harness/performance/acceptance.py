"""The GPU acceptance check: one command that a session with a lent GPU runs first.

    python -m harness.performance.acceptance --device cuda --out OUT      (scripts/gpu_acceptance.sh OUT)
    python -m harness.performance.acceptance --device cpu --out /tmp/acc  (the same check, small, in CI)

It needs the harness's code and pydantic, not MLflow or Optuna (the lent machine has neither): it
drives plans and the engine directly, with untrained teachers, so each figure is a speed or a
correctness check, never an accuracy. The cheap, decisive sections first: versions and precision
flags; a cell SIGKILLed mid-training and resumed against an uninterrupted run (resume_check.py);
`harness bench` on ResNet-32 -> ResNet-14 (CIFAR-shaped synthetic data); the image-folder path's
images/s; then every method under each eager option set, then compiled (--compile-methods; matrix.py).
The report (acceptance.json, ACCEPTANCE.md in OUT) is rewritten after every section and every method,
so a run stopped at any point has left what it measured. Past --budget seconds no section or cell
starts (they say "not run"). A section's failure is recorded, not fatal; the exit code is 1 when
something that ran failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.performance.bench import folder_throughput, untrained_teachers
from harness.performance.matrix import method_matrix
from harness.performance.resume_check import resume_check
from harness.running.runner import Runner
from harness.spec.options import RunOptions
from harness.spec.spec import load_spec
from harness.tracking.provenance import GIT_COMMIT, GIT_DIRTY, cuda_params
from methods import pair_mismatch

EAGER_SETS = {"fp32": {}, "bf16": {"amp": "bf16"}, "fp16": {"amp": "fp16"}, "channels-last": {"channels_last": True}}
COMPILE_SET = {"compile": {"compile": True, "deterministic": False}}
SECTIONS = ("resume", "bench", "folder", "methods", "compile")  # in this order, after the versions
# every method under bf16 + channels-last (the ratio to kd GPU.md targets); the harness's overhead in fp32;
# the target's settings (compile too) for kd, whose epoch GPU.md times
BENCH_SETS = {"fp32": ({}, ["kd"]), "bf16+channels-last": ({"amp": "bf16", "channels_last": True}, None),
              "bf16+channels-last+compile": ({"amp": "bf16", "channels_last": True, "compile": True,
                                              "deterministic": False}, ["kd"])}
RESUME_CELL = {"mnist": "mnist/hinton1200-hinton800/kd", "digits": "digits/hinton1200-hinton800/kd"}


def versions(device: torch.device) -> dict:
    out = {"torch": torch.__version__, "python": sys.version.split()[0], "device": str(device),
           "git_commit": GIT_COMMIT + ("+dirty" if GIT_DIRTY else ""), **cuda_params(device),
           "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
    if device.type == "cuda":
        out |= {"gpu": torch.cuda.get_device_name(device), "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
                "bf16_supported": torch.cuda.is_bf16_supported(),
                "default_matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "default_cudnn_tf32": torch.backends.cudnn.allow_tf32}
    return out


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


def bench_section(runner: Runner, device: str, steps: int, batch_size: int | None, dataset: str, pair: str,
                  data_root: str, option_sets: dict) -> list[dict]:
    """`harness bench` under each option set: {name: (options, methods or None for every method)}, at
    the recipe's batch size unless `batch_size`."""
    import torchvision.datasets.cifar as tv_cifar

    from harness.performance.bench import bench

    # the synthetic files cannot match CIFAR's md5 sums: only this speed check skips torchvision's check
    tv_cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)

    every = [m for m in runner.spec.methods if pair_mismatch(runner.spec, m, pair) is None]
    out = []
    for name, (options, methods) in option_sets.items():
        methods = every if methods is None else methods
        opts = RunOptions(progress=False, device=device, data_root=data_root, **options)
        plan = runner.plan(runner.spec.cell(f"{dataset}/{pair}/kd"), opts)
        table = bench(runner, dataset, pair, methods, opts, steps, 3, batch_size=batch_size,
                      teachers=untrained_teachers(runner, plan))
        kd = table[(table.method == "kd") & (table.path == "harness")].iloc[0]
        batch = batch_size or plan.recipe.batch_size
        out.append({"options": name, "harness_over_bare": table.attrs["harness_over_bare"],
                    "kd_images_per_s": kd.images_per_s, "batch_size": batch,
                    # the epoch a user sees: steps back to back, one sync at the end
                    "epoch_seconds_50k": 50_000 / batch * kd.block_ms_per_step / 1000,
                    "table": table.drop(columns=[c for c in table.columns if c == "extra_parameters"]).to_dict("records")})
    return out


def render(report: dict) -> str:
    lines = [f"# GPU acceptance: {report['versions'].get('gpu', report['versions']['device'])}", "",
             f"Command: `{report['command']}`; wall {report['wall_seconds']:.0f} s of a {report['budget_s']:.0f} s budget.",
             "", "## Sections", ""] + [f"- {name}: {state}" for name, state in report["sections"].items()]
    lines += ["", "## Versions and precision flags", ""] + [f"- {k}: {v}" for k, v in report["versions"].items()]
    if "resume" in report:
        lines += ["", "## resume (SIGKILL mid-training, then resumed)", "", "```", json.dumps(report["resume"], indent=1), "```"]
    for bench in report.get("bench", []):
        lines += ["", f"## bench, cifar100/resnet32-resnet14 (synthetic CIFAR-shaped data), {bench['options']}", "",
                  f"harness kd step / bare kd loop = {bench['harness_over_bare']:.3f}; kd {bench['kd_images_per_s']:.0f} "
                  f"images/s (per-step median); one 50,000-image epoch at the back-to-back pace: "
                  f"{bench['epoch_seconds_50k']:.2f} s", "",
                  pd.DataFrame(bench["table"]).to_markdown(index=False, floatfmt=".3f")]
    if "folder" in report:
        lines += ["", "## folder input", "", "```", json.dumps(report["folder"], indent=1), "```"]
    rows = report.get("methods", []) + report.get("compile", [])
    if rows:
        sets = list(dict.fromkeys(row["options"] for row in rows))
        lines += ["", "## Every method under each option set (digits smoke cells, untrained teachers)", "",
                  "ms/step: per-step median / back to back; host reads of device values in one step (each a GPU sync)",
                  "", "| method | " + " | ".join(sets) + " |", "|---" * (1 + len(sets)) + "|"]
        by_method: dict[str, dict] = {}
        for row in rows:
            cell = (f"{row['ms_per_step']:.1f} / {row['block_ms_per_step']:.1f} ms, {row['host_reads_per_step']} reads"
                    if row["status"] == "ok" else row["status"])
            by_method.setdefault(row["method"], {})[row["options"]] = cell
        lines += [f"| {m} | " + " | ".join(cells.get(o, "") for o in sets) + " |" for m, cells in by_method.items()]
    if report["errors"]:
        lines += ["", "## errors", "", "```", json.dumps(report["errors"], indent=1), "```"]
    return "\n".join(lines) + "\n"


def write(out: Path, report: dict, started: float) -> None:
    report["wall_seconds"] = time.perf_counter() - started
    (out / "acceptance.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "ACCEPTANCE.md").write_text(render(report))


def failures(report: dict) -> list[str]:
    """What ran and failed: method cells, the resume check, sections that raised."""
    bad = [f"{r['method']}/{r['options']}" for r in report.get("methods", []) + report.get("compile", [])
           if r["status"].startswith("FAIL")]
    if report.get("resume", {}).get("status", "ok") != "ok":
        bad.append("resume")
    return bad + sorted(report["errors"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.performance.acceptance", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", help="where MNIST lies (else the resume check runs on digits)")
    p.add_argument("--budget", type=float, default=270, help="seconds after which no section or cell starts")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="which to run, in %(choices)s order")
    p.add_argument("--compile-methods", nargs="*", metavar="M", help="the methods compiled (default: kd fitnet crd "
                   "on cuda, none on cpu; 'all' for every method)")
    p.add_argument("--compile-budget", type=float, default=75, help="seconds the compile section may start cells in")
    p.add_argument("--epochs", type=int, default=4, help="the resume check's run (a kill in its second epoch)")
    p.add_argument("--bench-steps", type=int, help="timed steps of each bench row, each way (default: 20 on cuda, 3 on cpu)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    on_gpu = args.device == "cuda"
    home = Path(tempfile.mkdtemp(prefix="acceptance-home-"))
    runner = Runner(load_spec(), home, f"sqlite:///{home / 'unused.db'}")
    compiled = args.compile_methods if args.compile_methods is not None else ["kd", "fitnet", "crd"] if on_gpu else []
    compiled = list(runner.spec.methods) if compiled == ["all"] else compiled
    # the CPU: fp32 only (each method's bf16/fp16 step is checked against it in tests/test_gpu_path.py)
    eager_sets = EAGER_SETS if on_gpu else {"fp32": EAGER_SETS["fp32"]}
    report = {"command": " ".join(["python -m harness.performance.acceptance", *(argv if argv is not None else sys.argv[1:])]),
              "budget_s": args.budget, "versions": versions(torch.device("cuda" if on_gpu else "cpu")),
              "sections": {name: "to run" if name in args.sections else "not asked for" for name in SECTIONS},
              "errors": {}}
    write(out, report, started)
    # the resume check on MNIST where it lies (on the GPU); digits keeps the CPU mode inside CI's minutes
    mnist = on_gpu and args.data_root and (Path(args.data_root) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()

    def bench():
        # on the GPU 50,000 training images once the recipe's 5,000 are held out: the target's epoch
        cifar = str(synthetic_cifar100(Path(tempfile.mkdtemp(prefix="acceptance-cifar-")), 55_000 if on_gpu else 5_600, 1000))
        return bench_section(runner, args.device, args.bench_steps or (20 if on_gpu else 3), None if on_gpu else 16,
                             "cifar100", "resnet32-resnet14", cifar,
                             BENCH_SETS if on_gpu else {"fp32": ({}, ["kd"])})

    def matrix(name, option_sets, methods, budget_s=float("inf")):
        def progress(rows):
            report[name] = rows
            write(out, report, started)
        return method_matrix(runner, args.device, option_sets, steps=4 if on_gpu else 1, methods=methods,
                             budget_s=budget_s, deadline=deadline, on_method=progress)

    sections = {
        "resume": lambda: resume_check(args.device, RESUME_CELL["mnist" if mnist else "digits"], args.epochs,
                                       args.data_root if mnist else None),
        "bench": bench,
        "folder": lambda: folder_throughput(runner.spec, args.device, 10_240 if on_gpu else 320),
        "methods": lambda: matrix("methods", eager_sets, None),
        "compile": lambda: matrix("compile", COMPILE_SET, compiled, args.compile_budget) if compiled else [],
    }
    for name in [s for s in SECTIONS if s in args.sections]:
        if time.perf_counter() > deadline:
            report["sections"][name] = "not run: past the budget"
            write(out, report, started)
            continue
        section_started = time.perf_counter()
        report["sections"][name] = "running"
        write(out, report, started)
        try:
            report[name] = sections[name]()
            report["sections"][name] = f"done in {time.perf_counter() - section_started:.0f} s"
            if name in ("methods", "compile") and (skipped := sum(r["status"].startswith("not run") for r in report[name])):
                report["sections"][name] += f"; {skipped} of {len(report[name])} cells not run (budget)"
        except Exception:
            report["errors"][name] = traceback.format_exc()[-3000:]
            report["sections"][name] = "FAIL: raised (see errors)"
        write(out, report, started)
        print(f"acceptance: {name}: {report['sections'][name]} ({report['wall_seconds']:.0f} s)", flush=True)
    bad = failures(report)
    print(f"acceptance: failed: {', '.join(bad) or 'nothing'}; written to {out}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
