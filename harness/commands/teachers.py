"""`harness teacher DATASET/MODEL`: train and cache a teacher, or, with `--import FILE`, take a
published one as the cached teacher of its cells, so that students distil from the very network a
paper used. Nothing is downloaded.

FILE is a RepDistiller or mdistiller checkpoint ({'model': state_dict}, or {'net': ...}), a
torchvision or timm state dict, or a safetensors file (ours). Its keys are mapped to our modules
(each model module's `checkpoint_filter_fn`); its sha256 is checked against the published files of
benchmarks.yaml (`models.NAME.published`) where one is known; its top-1 on the test split is
measured and compared with the stated one. The weights are then written where the Runner looks for
the teacher of this dataset, model, recipe and seed (`Runner.teacher_identity`), and an MLflow
teacher run with the same key is recorded FINISHED, tagged `imported`, with the file's source and
checksum: `harness run` then reuses the teacher instead of training one.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from harness.errors import UserError
from harness.models import build_model, load_weights
from harness.running.plan import flatten
from harness.running.process import exclusive
from harness.spec.cells import require_known
from harness.spec.options import from_flags
from harness.spec.schema import PublishedWeights
from harness.tracking.ledger import sha256_of
from harness.training.evaluation import evaluate

WRAPPERS = ("model", "net", "state_dict")  # the keys checkpoints keep their state dict under


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors by name in a checkpoint or safetensors file (loaded without running its code)."""
    if not path.is_file():
        raise UserError(f"--import {path}: no such file")
    try:
        content = load_file(str(path)) if path.suffix == ".safetensors" else \
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"--import {path}: cannot be read as a PyTorch or safetensors file without running "
                        f"code ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for key in WRAPPERS:
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
            break
    if not isinstance(content, dict) or not content or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise UserError(f"--import {path}: holds no state dict (tensors by name, or under one of {', '.join(WRAPPERS)})")
    return {key.removeprefix("module."): value for key, value in content.items()}  # DataParallel's prefix


def published_entry(entries: list[PublishedWeights], path: Path, digest: str, where: str) -> PublishedWeights | None:
    """The published file this is: by checksum, else by name (whose known checksum must then match)."""
    for entry in entries:
        if entry.sha256 and digest.startswith(entry.sha256):
            return entry
    for entry in entries:
        if entry.file == path.name:
            if entry.sha256:
                raise UserError(f"--import {path}: its sha256 {digest[:16]}... is not that of the published "
                                f"{entry.file} ({entry.sha256}..., {where}): another or a damaged file")
            return entry
    return None


def import_teacher(runner, dataset: str, model_name: str, path: Path, opts, accept_accuracy: bool = False) -> dict:
    """Check, evaluate and record FILE as the teacher (dataset, model, opts' recipe and teacher seed); a file
    whose measured top-1 strays past its published entry's tolerance is refused unless `accept_accuracy`."""
    if runner.context.enabled:
        raise UserError("harness teacher --import runs in one process, not under torchrun")
    identity = runner.teacher_identity(dataset, model_name, opts)
    if identity.path.exists() and not opts.force:
        raise UserError(f"a teacher is already cached at {identity.path}; --force replaces it with the imported file")
    label = f"--import {path} as {identity.dataset}/{model_name}"
    state = read_state_dict(path)
    digest = sha256_of(path)
    where = f"benchmarks.yaml models.{model_name}.published.{identity.dataset}"
    entry = published_entry(runner.spec.models[model_name].published.get(identity.dataset, []), path, digest, where)
    net = build_model(runner.spec.models[model_name], runner.spec.datasets[identity.dataset])
    load_weights(net, state, label)
    net = net.to(identity.device).eval()
    data = runner.data(identity.dataset, opts)
    top1, top5 = evaluate(net, data.batches(identity.device, ("test",)), "test", identity.recipe.eval_batch_size,
                          identity.opts.amp)
    check = reference_check(entry, top1)
    if check.startswith("off") and not accept_accuracy:
        raise UserError(f"{label}: refused, {check} ({entry.source}); check the file, the model and the data, "
                        "or pass --accept-accuracy to cache it anyway (recorded on its teacher run)")
    with exclusive(runner.home / "runs" / identity.key / "lock") as held:
        if not held:
            raise UserError(f"another process is training or importing this teacher ({identity.key})")
        if identity.path.exists() and not opts.force:  # cached while this file was being evaluated
            raise UserError(f"a teacher is already cached at {identity.path}; --force replaces it")
        run_id = record(runner, identity, net, data, path, digest, entry, check, {"test_top1_last": top1,
                                                                                  "test_top5_last": top5},
                        accepted=check.startswith("off"))
    stale = len(runner.tracker.students_of(identity.key)) if opts.force else 0
    return {"path": identity.path, "run_id": run_id, "sha256": digest, "top1": top1, "entry": entry, "check": check,
            "stale_students": stale}


def reference_check(entry: PublishedWeights | None, top1: float) -> str:
    """'ok', 'none' (no stated accuracy) or 'off: ...' when the measured top-1 strays past the tolerance."""
    if entry is None:
        return "none"
    off = top1 - entry.top1
    if abs(off) <= entry.tolerance:
        return "ok"
    return f"off: {top1:.2f}% measured, {entry.top1:.2f}% stated ({off:+.2f} points, tolerance {entry.tolerance:g})"


def record(runner, identity, net, data, path: Path, digest: str, entry, check: str, metrics: dict,
           accepted: bool) -> str:
    """The weights where the Runner looks for this teacher, and its FINISHED MLflow run (tagged imported;
    `accepted`: an accuracy outside the tolerance that --accept-accuracy let through)."""
    tracker = runner.tracker
    source = entry.source if entry is not None else "not a published file of benchmarks.yaml"
    tags = {"role": "teacher", "dataset": identity.dataset, "teacher": identity.config["model"],
            "model": identity.config["model"], "seed": identity.config["seed"], "smoke": identity.config["smoke"],
            "run_key": identity.key, "imported": "true", "import_file": str(path.resolve()), "import_source": source,
            "sha256": digest, "reference_check": check, "teacher_file": str(identity.path)} \
        | ({"accepted_accuracy": "true"} if accepted else {})
    run_id = tracker.create(f"teacher {identity.dataset}/{identity.config['model']} seed {identity.config['seed']} "
                            "(imported)", tags)
    tracker.log_params(run_id, flatten(identity.config) | data.params()
                       | {"import.file": path.name, "import.sha256": digest,
                          "import.stated_top1": entry.top1 if entry is not None else ""})
    tracker.log_dict(run_id, identity.config, "config.json")
    tracker.log_metrics(run_id, metrics, step=0)
    identity.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = identity.path.with_name(f".{identity.path.name}.tmp")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp),
              metadata={"run_id": run_id, "config": json.dumps(identity.config, default=str),
                        "imported_from": str(path.resolve()), "sha256": digest})
    tmp.replace(identity.path)
    tracker.log_model(run_id, net, data.probe_images(2).to(identity.device))
    tracker.finish(run_id, "FINISHED")
    return run_id


def command_teacher(args, spec, runner) -> int:
    dataset, sep, model = args.target.partition("/")
    if not sep or not dataset or not model or "/" in model:
        raise UserError(f"teacher {args.target!r} is malformed: expected DATASET/MODEL, e.g. mnist/hinton1200")
    require_known(dataset, spec.datasets, "dataset")
    if args.suite is not None:
        require_known(args.suite, spec.suites, "suite")
    for name, value in (("--epochs", args.epochs), ("--teacher-epochs", args.teacher_epochs)):
        if value is not None and value <= 0:
            raise UserError(f"{name} must be a positive integer, got {value}")
    if args.seed < 0:
        raise UserError("seeds must be non-negative integers")
    opts = replace(from_flags(args, suite=args.suite), teacher_seed=args.seed,
                   teacher_epochs=args.epochs or args.teacher_epochs)
    if args.import_file:
        return command_import(args, runner, dataset, model, opts)
    from harness.running.workshare import until_free

    until_free(runner.teacher, dataset, model, opts)
    print(f"teacher {dataset}/{model} seed {args.seed}: {runner.teacher_identity(dataset, model, opts).path}")
    return 0


def command_import(args, runner, dataset: str, model: str, opts) -> int:
    """`harness teacher DATASET/MODEL --import FILE`: one line on stdout; a flagged accuracy also on stderr."""
    if opts.teacher_epochs is not None:
        raise UserError("--import takes a trained file: --epochs and --teacher-epochs do not apply")
    out = import_teacher(runner, dataset, model, Path(args.import_file), opts, args.accept_accuracy)
    stated = f", stated {out['entry'].top1:.2f}%" if out["entry"] is not None else ", no stated accuracy in benchmarks.yaml"
    print(f"teacher {dataset}/{model} seed {opts.teacher_seed}: imported {args.import_file} (sha256 {out['sha256'][:16]}...), "
          f"test top-1 {out['top1']:.2f}%{stated}; cached at {out['path']}; MLflow run {out['run_id']}")
    if out["stale_students"]:
        print(f"harness: warning: {out['stale_students']} finished student runs distilled from the teacher this "
              "replaced; they keep their results (`harness run --force` trains them again)", file=sys.stderr)
    if out["check"].startswith("off"):
        print(f"harness: warning: imported teacher {dataset}/{model} is {out['check']} ({out['entry'].source}): "
              "cached under --accept-accuracy (tagged accepted_accuracy on its teacher run)", file=sys.stderr)
    return 0
