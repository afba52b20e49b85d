"""`harness perf`: the standing speed record (results/perf/record.md). Run it alone on the machine:
a step time measured beside other work is wrong by several times.

1. `harness bench` on each DATASET/PAIR asked for, every method the pair can run, under each speed
   option: every method's step against KD's, the harness against the bare loop, and each option's
   speed-up over eager fp32, method by method;
2. the accuracy cost of each option: one real cell over several seeds under each option, its test
   top-1 against fp32's by Welch's t-test (two-sided; p >= 0.05: no difference detected).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

import pandas as pd
import torch

from harness.spec.options import SPEED_OPTION_SETS, RunOptions


def option_sets(names: list[str], device: torch.device) -> dict[str, dict]:
    """The chosen sets, less `amp auto` where it picks fp32 (it would only repeat eager fp32)."""
    from harness.training.device import resolve_amp

    return {name: SPEED_OPTION_SETS[name] for name in names
            if name != "amp-auto" or resolve_amp("auto", device.type) != "off"}


def runnable_methods(runner, dataset: str, pair: str) -> list[str]:
    """Every method `harness list` shows for the dataset and pair."""
    from harness.running.compat import mismatches

    cells = [c for c in runner.spec.cells(dataset=dataset) if c.pair == pair]
    verdicts = mismatches(runner.spec, cells, runner.home)
    return [c.method for c in cells if verdicts[c.id] is None]


def step_times(runner, targets: list[tuple[str, str]], sets: dict[str, dict], base: RunOptions, steps: int,
               warmup: int) -> pd.DataFrame:
    """One row per (pair, option set, method, path): ms per step and the ratios."""
    from harness.performance.bench import bench

    frames = []
    for dataset, pair in targets:
        methods = runnable_methods(runner, dataset, pair)
        for name, values in sets.items():
            table = bench(runner, dataset, pair, methods, replace(base, **values), steps, warmup)
            frames.append(table.assign(pair=f"{dataset}/{pair}", options=name,
                                       harness_over_bare=table.attrs["harness_over_bare"]))
    frame = pd.concat(frames, ignore_index=True)
    eager = frame[frame.options == "fp32"].set_index(["pair", "method", "path"]).ms_per_step
    frame["speedup_vs_eager"] = [eager.get((r.pair, r.method, r.path), math.nan) / r.ms_per_step
                                 for r in frame.itertuples()]
    return frame


def accuracy_costs(runner, cell: str, seeds: int, sets: dict[str, dict], base: RunOptions) -> pd.DataFrame:
    """The cell's test top-1 (last epoch) over `seeds` seeds under each option set, against fp32."""
    from scipy.stats import ttest_ind

    from harness.running.worklist import run_plans

    target = runner.spec.cell(cell)
    plans = [(target, replace(base, seed=seed, **values)) for values in sets.values() for seed in range(seeds)]
    outcomes, failed = run_plans(runner, plans)
    done = {name: [outcomes[i] for i in range(k * seeds, (k + 1) * seeds) if i in outcomes]
            for k, name in enumerate(sets)}
    top1 = {name: pd.Series([o.summary["test_top1_last"] for o in done[name]], dtype=float) for name in sets}
    reference = top1["fp32"]
    rows = []
    for name, values in top1.items():
        testable = name != "fp32" and len(values) > 1 and len(reference) > 1 and values.std() + reference.std() > 0
        rows.append({"options": name, "test_top1_mean": values.mean(), "std": values.std(ddof=1), "n": len(values),
                     "delta_vs_fp32": values.mean() - reference.mean(),
                     "welch_p": float(ttest_ind(values, reference, equal_var=False).pvalue) if testable else math.nan,
                     "mlflow_runs": " ".join(o.run_id[:8] for o in done[name])})
    frame = pd.DataFrame(rows)
    frame.attrs["failed"] = failed
    return frame


def record(runner, bench_targets: list[str], cell: str, seeds: int, option_names: list[str], base: RunOptions,
           steps: int, warmup: int, command: str) -> str:
    """The record as Markdown; every pair, cell, option and data set checked before anything trains."""
    from harness.errors import UserError
    from harness.running.plan import resolve_device
    from harness.training.device import machine_load

    if seeds < 2:
        raise UserError("--seeds: at least 2, to compare an option's accuracy with fp32's")
    if base.amp != "off" or base.channels_last or base.compile:
        raise UserError("perf sets the speed options itself: choose them with --options, not --amp, "
                        "--channels-last or --compile")
    sets = option_sets(["fp32"] + [o for o in option_names if o != "fp32"], resolve_device(base.device))
    targets, target_cell = [], runner.spec.cell(cell)
    for target in bench_targets:
        dataset, _, pair = target.partition("/")
        targets.append((dataset, pair))
        runner.plan(runner.spec.cell(f"{dataset}/{pair}/kd"), base).data  # noqa: B018  (a known pair, its data)
    # the accuracy cell trains its teacher with its recipe: --teacher-epochs shortens the bench's only
    full = replace(base, teacher_epochs=None)
    for values in sets.values():
        runner.plan(target_cell, replace(full, **values)).data  # noqa: B018
    info = machine()
    times = step_times(runner, targets, sets, base, steps, warmup)
    accuracy = accuracy_costs(runner, target_cell.id, seeds, sets, full)
    info["1-minute load at the end"] = f"{machine_load():.2f}"
    return render(times, accuracy, info, command)


def machine() -> dict:
    """What the figures were measured on (the load is taken again at the end)."""
    from harness.tracking.provenance import environment_params
    from harness.training.device import machine_load, speed_features

    env = environment_params(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return {"device": f"{env['env.device_name']}; {os.cpu_count()} logical CPUs, {env['env.threads']} threads; "
                      f"CPU features: {' '.join(speed_features()) or 'none of avx2, avx512f, avx512_bf16, amx'}",
            "software": f"torch {env['env.torch']}, Python {env['env.python']}",
            "commit": env["env.git_commit"] + (" (dirty tree)" if env["env.git_dirty"] else ""),
            "1-minute load at the start": f"{machine_load():.2f} (an average: it lags by about a minute)"}


def render(steps: pd.DataFrame, accuracy: pd.DataFrame | None, info: dict, command: str) -> str:
    lines = ["# Speed record (`harness perf`)", "", f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()] + [""]
    lines += ["The option sets run one after another: a drift of the machine's speed between them (5-15% on a "
              "shared 2-core VM) enters the speed-ups; the ratios to KD are taken within one set.", ""]
    for pair, group in steps.groupby("pair", sort=False):
        lines += [f"## {pair}: ms per step, and each method against KD", ""]
        ms = group.pivot_table(index=["method", "path"], columns="options", values="ms_per_step", sort=False)
        vs_kd = group.pivot_table(index=["method", "path"], columns="options", values="vs_kd", sort=False)
        table = ms.round(1).astype(str) + " (" + vs_kd.round(2).astype(str) + "x KD)"
        lines += [table.reset_index().to_markdown(index=False), ""]
        speedup = group[(group.path == "harness") & (group.options != "fp32")].pivot_table(
            index="method", columns="options", values="speedup_vs_eager", sort=False)
        lines += ["Speed-up of each option over eager fp32, method by method:", "",
                  speedup.round(2).reset_index().to_markdown(index=False), "",
                  "Harness KD step / bare KD loop: " + ", ".join(
                      f"{name} {value:.3f}" for name, value in group.groupby("options", sort=False)
                      .harness_over_bare.first().items()), ""]
    if accuracy is not None:
        lines += ["## The accuracy cost of each option", "",
                  accuracy.to_markdown(index=False, floatfmt=("", ".2f", ".2f", "", "+.2f", ".3g", "")), ""]
        if accuracy.attrs.get("failed"):
            lines += [f"Failed runs: {', '.join(accuracy.attrs['failed'])}", ""]
    return "\n".join(lines)
