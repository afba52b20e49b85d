"""Every user error, across the CLI and benchmarks.yaml: exit code 2, one line naming the
problem, no traceback, and no MLflow run left FINISHED."""

import copy

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.spec.spec import DEFAULT_SPEC

RUN = ["run", "--cell", "digits/resnet20-resnet8/kd", "--smoke", "--no-progress"]

CLI_CASES = [
    (["run", "--cell", "digits/resnet20-resnet8"], "malformed"),
    (["run", "--cell", "/resnet20-resnet8/kd"], "malformed"),
    (["run", "--cell", "digitz/resnet20-resnet8/kd"], "unknown dataset"),
    (["run", "--cell", "digits/resnet20-resnet9/kd"], "unknown teacher-student pair"),
    (["run", "--cell", "digits/resnet20-resnet8/kdx"], "unknown method"),
    (["run", "--cell", "digits/resnet20-resnet8/kd+"], "malformed"),
    (["run", "--cell", "digits/resnet20-resnet8/kd+kd"], "names a method twice"),
    (["run", "--cell", "cifar100/hinton1200-hinton800/kd"], "not defined for dataset"),
    (["run", "--cell", "../../etc/passwd"], "malformed"),
    (["run", "--cell", "digits/../kd"], "unknown teacher-student pair"),
    (RUN + ["--set", "tau=hot"], "tau"),
    (RUN + ["--set", "tau=-1"], "tau"),
    (RUN + ["--set", "tau=.inf"], "tau"),
    (RUN + ["--set", "lam=.nan"], "lam"),
    (RUN + ["--set", "gamma=1"], "gamma"),
    (RUN + ["--set", "tau"], "NAME=VALUE"),
    (RUN + ["--set", "=3"], "NAME=VALUE"),
    (RUN + ["--set", "lpl.k=3"], "not part of"),
    (RUN + ["--set", "tau=[1"], "not a valid scalar"),
    (RUN + ["--epochs", "0"], "--epochs"),
    (RUN + ["--epochs", "many"], "invalid int"),
    (RUN + ["--seeds", "0"], "--seeds"),
    (RUN + ["--seed", "-1"], "non-negative"),
    (RUN + ["--seed", "x"], "invalid int"),
    (RUN + ["--teacher-epochs", "-2"], "--teacher-epochs"),
    (RUN + ["--device", "tpu"], "device"),
    (RUN + ["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else RUN + ["--device", "tpu"],
     "device"),
    (RUN + ["--amp", "fp8"], "invalid choice"),
    (["run", "--cell", "digits/resnet20-resnet8/kd", "--suite", "digits"], "not allowed with"),
    (["run", "--suite", "nope"], "unknown suite"),
    (["run"], "required"),
    (["teacher", "digits"], "DATASET/MODEL"),
    (["teacher", "digits/resnet99"], "unknown model"),
    (["teacher", "digitz/resnet20"], "unknown dataset"),
    (["teacher", "digits/resnet20", "--seed", "-4"], "non-negative"),
    (["list", "--suite", "nope"], "unknown suite"),
    (["list", "--dataset", "svhn"], "unknown dataset"),
    (["frobnicate"], "invalid choice"),
    (["run", "--cell", "mnist/hinton1200-hinton800/kd", "--data-root", "/nonexistent/data"], "MNIST"),
    (["--tracking-uri", "http://127.0.0.1:9", *RUN], "not reachable"),
    (["--tracking-uri", "nosuchscheme://x", *RUN], "tracking URI"),
    (["--home", "/proc/kd-harness-home", *RUN], "runs home"),
    (["--spec", "/nonexistent/benchmarks.yaml", "list"], "cannot read"),
    (["bench", "--dataset", "digits", "--pair", "resnet20-resnet8", "--teacher-cache"], "does not take --teacher-cache"),
]


def _yaml_cases():
    """(mutation of the repository's benchmarks.yaml, expected words)."""
    def at(path, value):
        def mutate(raw):
            node = raw
            for key in path[:-1]:
                node = node[key]
            if value is DELETE:
                del node[path[-1]]
            else:
                node[path[-1]] = value
        return mutate

    DELETE = object()
    return [
        (at(["methods", "kd", "defaults", "tau", "value"], "four"), "tau"),
        (at(["methods", "kd", "defaults", "lam", "value"], -2), "lam"),
        (at(["methods", "kd", "defaults", "bogus"], {"value": 1, "source": "x"}), "bogus"),
        (at(["methods", "kd", "class"], "methods.kd.Nope"), "cannot import"),
        (at(["methods", "kd", "class"], "harness.spec.spec.Spec"), "not a Distiller"),
        (at(["recipes", "digits", "lr"], 0), "recipes.digits.lr"),
        (at(["recipes", "digits", "epochs"], 2.5), "recipes.digits.epochs"),
        (at(["recipes", "digits", "batch_size"], "big"), "batch_size"),
        (at(["datasets", "digits", "val_size"], 5000), "val_size"),
        (at(["datasets", "digits", "std"], [0.0]), "std"),
        (at(["datasets", "digits", "source"], "kaggle"), "source"),
        (at(["pairs", "resnet20-resnet8", "stages"], {"teacher": [9], "student": [9]}), "stage taps"),
        (at(["models", "resnet8", "timm"], "no_such_model"), "timm cannot build"),
        (at(["suites", "digits", "cells"], ["digits/resnet20-resnet8"]), "malformed"),
        (at(["pairs"], DELETE), "pairs"),
    ]


@pytest.fixture
def spec_file(tmp_path):
    def write(mutate):
        raw = yaml.safe_load(DEFAULT_SPEC.read_text())
        raw = copy.deepcopy(raw)
        mutate(raw)
        path = tmp_path / "benchmarks.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path
    return write


def _check(home, capsys, argv, expected):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert expected in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    if (home / "mlflow.db").exists():
        client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert not [r for r in client.search_runs(experiments) if r.info.status == "FINISHED"]


def test_there_are_at_least_forty_cases():
    assert len(CLI_CASES) + len(_yaml_cases()) >= 40


@pytest.mark.parametrize("argv, expected", CLI_CASES, ids=[" ".join(a)[:60] for a, _ in CLI_CASES])
def test_cli_user_errors(home, capsys, argv, expected):
    try:
        _check(home, capsys, argv, expected)
    except SystemExit as e:  # argparse's own errors
        assert e.code == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("mutate, expected", _yaml_cases(), ids=[e for _, e in _yaml_cases()])
def test_yaml_user_errors(home, capsys, spec_file, mutate, expected):
    _check(home, capsys, ["--spec", str(spec_file(mutate)), *RUN], expected)


def test_a_teacher_cache_too_large_for_memory_is_refused_before_training(home, capsys, monkeypatch):
    """KR caches every teacher block's output: with 1 MiB free, that cannot fit; one line, exit 2,
    before the teacher trains."""
    monkeypatch.setattr("harness.running.plan.available_memory", lambda device: 2**20)
    _check(home, capsys, ["run", "--cell", "digits/resnet20-resnet8/kr", "--teacher-cache", "--smoke"],
           "--teacher-cache would keep")
    assert not (home / "teachers").exists() or not any((home / "teachers").iterdir())


def test_the_cache_size_counts_the_features_a_method_reads():
    """Golden: KD caches the logits (10 floats per image); FitNet the hint stages of the probe."""
    from harness.running.plan import feature_bytes

    logits = {"logits": torch.zeros(2, 10), "stages": [torch.zeros(2, 16, 8, 8), torch.zeros(2, 32, 4, 4)]}
    assert feature_bytes((logits,), frozenset({"logits"})) == 2 * 10 * 4
    assert feature_bytes((logits,), frozenset({"stages"})) == 2 * (16 * 64 + 32 * 16) * 4
    assert feature_bytes((logits, logits), frozenset({"logits", "stages"})) == 2 * 2 * (10 + 16 * 64 + 32 * 16) * 4
