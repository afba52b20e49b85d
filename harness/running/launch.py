"""Several workers for one command, through submitit: K local processes or a SLURM job array.

Each worker runs the same `harness` command without the launcher flags, on the same store; the
workers split the work the way separate terminals would (`run`: claims in the tracking store,
`sweep`: the shared Optuna storage). The launcher validates the command before it submits
anything, so a mistake is one line here rather than K failed jobs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from harness.errors import UserError

# the flags that configure the launch itself (each takes a value)
LAUNCHER_FLAGS = frozenset({"--launcher", "--workers", "--partition", "--gpus-per-task", "--cpus-per-task",
                            "--array-parallelism", "--timeout-min"})


def add_arguments(p) -> None:
    group = p.add_argument_group("launching workers (submitit)")
    group.add_argument("--launcher", choices=["local", "slurm"],
                       help="run the work on --workers workers: local processes or a SLURM job array")
    group.add_argument("--workers", type=int, help="how many workers (default 2 local, 4 on SLURM)")
    group.add_argument("--partition", help="SLURM partition")
    group.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per SLURM task")
    group.add_argument("--cpus-per-task", type=int, help="CPUs per SLURM task (local: torch threads per worker)")
    group.add_argument("--array-parallelism", type=int, help="SLURM: at most K array tasks at once")
    group.add_argument("--timeout-min", type=int, default=24 * 60, help="each job's time limit (minutes)")


def worker_argv(argv: list[str], home: Path, tracking_uri: str) -> list[str]:
    """The command without the launcher flags, its store named explicitly (a SLURM node may not
    see this shell's environment)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in LAUNCHER_FLAGS:
            skip = "=" not in item  # its value is the next item
            continue
        out.append(item)
    command = next(i for i, item in enumerate(out) if item in ("run", "sweep") and
                   (i == 0 or "=" in out[i - 1] or out[i - 1] not in ("--spec", "--home", "--tracking-uri")))
    return out[:command] + ["--home", str(home), "--tracking-uri", tracking_uri] + out[command:]


def worker(argv: list[str], threads: int | None, gpu: str | None = None, place: str = "0/1") -> int:
    """One worker: the harness command line in a fresh process, `threads` torch threads, on a GPU
    machine its own GPU (`gpu`: the one CUDA_VISIBLE_DEVICES shows it), and its place "i/K" among
    the workers (where in a suite it starts: harness/running/workshare.py)."""
    env = os.environ | {"KD_HARNESS_WORKER": place} | ({"OMP_NUM_THREADS": str(threads)} if threads else {}) \
        | ({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})
    return subprocess.run([sys.executable, "-m", "harness", *argv], env=env).returncode


def local_gpus() -> list[str]:
    """The GPUs this machine's workers may take: CUDA_VISIBLE_DEVICES's list where it is set, else
    those nvidia-smi lists (none on a CPU machine). Read without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def gpu_per_worker(workers: int, gpus: list[str]) -> list[str | None]:
    """Worker i takes GPU i (round robin past the last one, said on stderr); None where there are none."""
    if not gpus:
        return [None] * workers
    if workers > len(gpus):
        print(f"harness: warning: {workers} workers on {len(gpus)} GPUs: some GPUs train two runs at once",
              file=sys.stderr)
    return [gpus[i % len(gpus)] for i in range(workers)]


def check(args) -> int:
    """The worker count, after refusing what cannot be submitted."""
    workers = args.workers if args.workers is not None else (2 if args.launcher == "local" else 4)
    if workers < 1:
        raise UserError(f"--workers must be a positive integer, got {workers}")
    if args.launcher == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: no `sbatch` on this machine's PATH; submit from a SLURM login node "
                        "(or use --launcher local)")
    if getattr(args, "final_seeds", 0):
        raise UserError("--final-seeds with --launcher: let the workers finish the study, then run the same "
                        "sweep once more without --launcher with --final-seeds")
    for name in ("gpus_per_task", "cpus_per_task", "array_parallelism", "timeout_min"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "gpus_per_task" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    return workers


def launch(args, argv: list[str], home: Path, tracking_uri: str, workers: int) -> int:
    import submitit

    folder = home / "submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster=args.launcher)
    executor.update_parameters(timeout_min=args.timeout_min, name=f"harness-{args.command}")
    threads, gpus = None, [None] * workers
    if args.launcher == "slurm":
        executor.update_parameters(slurm_partition=args.partition, gpus_per_node=args.gpus_per_task,
                                   cpus_per_task=args.cpus_per_task or 1,
                                   slurm_array_parallelism=args.array_parallelism or workers)
    else:  # K processes on this machine's cores: torch threads split between them
        threads = args.cpus_per_task or max(1, (os.cpu_count() or 1) // workers)
        gpus = gpu_per_worker(workers, local_gpus())
    command = worker_argv(argv, home, tracking_uri)
    try:
        jobs = executor.map_array(worker, [command] * workers, [threads] * workers, gpus,
                                  [f"{i}/{workers}" for i in range(workers)])
    except Exception as e:  # sbatch refused the array, the folder is not writable, ...
        raise UserError(f"--launcher {args.launcher}: could not submit the workers: {e}") from None
    ids = ", ".join(job.job_id for job in jobs)
    print(f"submitted {workers} {args.launcher} workers (jobs {ids}): {shlex.join(['harness', *command])}; "
          f"logs in {folder}", flush=True)
    if args.launcher == "slurm":
        print("follow them with `squeue`; `harness report` reads the store when they are done")
        return 0
    codes = []
    for job in jobs:
        try:
            codes.append(job.result())
        except Exception as e:  # the worker raised: its log holds the traceback
            print(f"worker {job.job_id} failed: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
            codes.append(1)
        output = "\n".join(line for line in (job.stdout() or "").splitlines() if not line.startswith("submitit "))
        if output.strip():
            print(f"--- worker {job.job_id}\n{output.rstrip()}")
    print(f"workers' exit codes: {codes}")
    return max(codes)
