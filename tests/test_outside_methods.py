"""A method from outside the harness (issue #39): overlays (--spec-extra, $KD_HARNESS_SPEC_EXTRA),
entry points (kd_harness.methods), the outside code's fingerprint in the run key, the scaffold
(`harness new-method`), and --with-method; the acceptance test puts the scaffold's package through
list, run, an edit and the audit with no file of the harness changed."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.commands import new_method
from harness.running import noop
from harness.spec import overlays
from harness.spec.spec import DEFAULT_SPEC, load_spec

REPO = Path(__file__).resolve().parents[1]

COSINE = '''import torch.nn.functional as F
from methods.base import Distiller, Params


class CosParams(Params):
    weight: float


class Cos(Distiller):
    Params = CosParams
    teacher_features = frozenset({"logits"})
    student_features = frozenset({"logits"})
    loss_terms = frozenset({"cos"})

    def forward(self, student, teacher, targets):
        return {"cos": self.params.weight * (1 - F.cosine_similarity(student["logits"], teacher["logits"])).mean()}
'''

METHOD = '''methods:
  {name}:
    class: {cls}
    paper: "a test"
    defaults:
      weight: {{value: 1.0, source: "a test"}}
'''


def overlay(folder: Path, text: str, module: str = "cos_method", name: str = "overlay.yaml") -> Path:
    """An overlay file in `folder`, beside a method module (unique per test: sys.modules keeps modules)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(COSINE)
    (folder / name).write_text(text)
    return folder / name


def listed(capsys, *argv) -> tuple[int, list[str], list[str]]:
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_an_overlay_adds_a_method_whose_cells_list_with_their_origin(tmp_path, home, capsys):
    path = overlay(tmp_path / "mine", METHOD.format(name="cos_a", cls="cos_a_mod.Cos"), module="cos_a_mod")
    code, out, err = listed(capsys, "--spec-extra", str(path), "list", "--dataset", "digits")
    assert code == 0, err
    assert f"digits/resnet20-resnet8/cos_a  # cos_a from {path}" in out
    assert "digits/resnet20-resnet8/kd" in out  # built-in lines as before: no origin
    code, plain, _ = listed(capsys, "list", "--dataset", "digits")
    assert code == 0 and plain == [line for line in out if "cos_a" not in line]


def test_overlays_from_the_environment_stack_and_a_replacement_is_recorded(tmp_path, monkeypatch):
    first = overlay(tmp_path / "a", METHOD.format(name="cos_b", cls="cos_b_mod.Cos"), module="cos_b_mod")
    second = tmp_path / "b" / "kd.yaml"
    second.parent.mkdir()
    second.write_text("replaces: [methods.kd]\nmethods:\n  kd:\n    class: methods.kd.KD\n    paper: mine\n"
                      "    defaults:\n      tau: {value: 2, source: mine}\n      lam: {value: 1, source: mine}\n")
    monkeypatch.setenv("KD_HARNESS_SPEC_EXTRA", os.pathsep.join([str(first), str(second)]))
    spec = load_spec()
    assert spec.origin("methods", "cos_b") == str(first) and spec.origin("methods", "kd") == str(second)
    assert spec.origin("methods", "fitnet") is None
    assert spec.methods["kd"].defaults["tau"].value == 2
    code, recorded = spec.outside(["kd"])
    assert code == {}  # built-in code: the commit covers it
    assert recorded == {"spec_origins": {"methods.kd": str(second)}, "spec_replaced": {"methods.kd": str(second)}}


MALFORMED = {
    "a name defined twice": ("methods:\n  kd: {class: methods.kd.KD, paper: x}\n",
                             f"methods.kd is already defined in {DEFAULT_SPEC}; add 'replaces: [methods.kd]'"),
    "not YAML": ("methods: [\n", "not valid YAML at line"),
    "an unknown section": ("method: {}\n", "unknown section 'method'"),
    "a default without source": ("methods:\n  cos_x: {class: cos_x_mod.Cos, paper: x, defaults: {weight: {value: 1}}}\n",
                                 "methods.cos_x.defaults.weight.source: Field required"),
    "a suite of an unknown method": ("suites:\n  s: {title: t, source: s, cells: [digits/resnet20-resnet8/nope]}\n",
                                     "suites.s.cells: unknown method 'nope'"),
    "a class that does not import": ("methods:\n  cos_y: {class: no_such_module.Cos, paper: x}\n",
                                     "methods.cos_y.class: cannot import 'no_such_module.Cos' (ModuleNotFoundError"),
    "a class that is no Distiller": ("methods:\n  cos_z: {class: collections.OrderedDict, paper: x}\n",
                                     "'collections.OrderedDict' is not a Distiller"),
    "a replacement of nothing": ("replaces: [methods.cos_w]\nmethods:\n  cos_w: {class: cos_w_mod.Cos, paper: x}\n",
                                 "replaces methods.cos_w, which must be defined both before and in the overlay"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_overlay_is_one_line_and_exit_2_and_the_built_ins_still_list(case, tmp_path, home, capsys):
    text, expected = MALFORMED[case]
    path = overlay(tmp_path / "bad", text, module=f"cos_{case.split()[-1]}_mod")
    code, out, err = listed(capsys, "--spec-extra", str(path), "list", "--method", "kd", "--dataset", "digits")
    assert code == 2 and out == [] and len(err) == 1, err
    assert err[0].startswith(f"harness: error: {path}: ") and expected in err[0], err[0]
    code, out, _ = listed(capsys, "list", "--method", "kd", "--dataset", "digits")
    assert code == 0 and "digits/resnet20-resnet8/kd" in out


class FakeDistribution:
    name = "kd-broken"


def installed(monkeypatch, value: str) -> None:
    """The package kd-broken installed with one entry point of ours (other groups, e.g. torch's, unchanged)."""
    real = metadata.entry_points

    def entry_points(*args, **kwargs):
        return [entry_point(value)] if kwargs.get("group") == overlays.GROUP else real(*args, **kwargs)

    monkeypatch.setattr(overlays.metadata, "entry_points", entry_points)


def entry_point(value: str) -> metadata.EntryPoint:
    ep = metadata.EntryPoint("broken", value, overlays.GROUP)
    object.__setattr__(ep, "dist", FakeDistribution())  # an installed package's entry point names its distribution
    return ep


BROKEN = {
    "cannot import": ("no_such_package_39:OVERLAY", "cannot import: ModuleNotFoundError"),
    "not an overlay": ("math:pi", "gives a float, not an overlay"),
    "bad overlay": ("ep_bad_overlay:OVERLAY", "methods.ep_bad.defaults.weight.source: Field required"),
    "not a Distiller": ("ep_not_distiller:OVERLAY", "'collections.OrderedDict' is not a Distiller"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_entry_point_is_one_warning_line_and_the_built_ins_work(case, tmp_path, home, capsys, monkeypatch):
    value, reason = BROKEN[case]
    (tmp_path / "ep_bad_overlay.py").write_text(
        "OVERLAY = {'methods': {'ep_bad': {'class': 'x.Y', 'paper': 'x', 'defaults': {'weight': {'value': 1}}}}}\n")
    (tmp_path / "ep_not_distiller.py").write_text(
        "OVERLAY = {'methods': {'ep_od': {'class': 'collections.OrderedDict', 'paper': 'x'}}}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    installed(monkeypatch, value)
    code, out, err = listed(capsys, "list", "--method", "kd", "--dataset", "digits")
    assert code == 0 and "digits/resnet20-resnet8/kd" in out
    assert len(err) == 1 and err[0].startswith("harness: warning: package kd-broken (entry point broken): "), err
    assert reason in err[0] and err[0].endswith("its methods are left out")


def test_an_entry_point_adds_its_methods(tmp_path, home, capsys, monkeypatch):
    overlay(tmp_path, METHOD.format(name="cos_ep", cls="cos_ep_mod.Cos"), module="cos_ep_mod", name="ep.yaml")
    (tmp_path / "cos_ep_entry.py").write_text(f"OVERLAY = {str(tmp_path / 'ep.yaml')!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    installed(monkeypatch, "cos_ep_entry")
    code, out, err = listed(capsys, "list", "--method", "cos_ep", "--dataset", "digits")
    assert code == 0 and not err
    assert "digits/resnet20-resnet8/cos_ep  # cos_ep from package kd-broken (entry point broken)" in out


def test_an_outside_methods_code_names_its_runs_and_the_finished_answer(tmp_path, monkeypatch):
    path = overlay(tmp_path, METHOD.format(name="cos_f", cls="cos_f_mod.Cos"), module="cos_f_mod")
    spec = load_spec(extra=[str(path)])
    code, recorded = spec.outside(["cos_f", "kd"])
    assert set(code) == {"cos_f"} and code["cos_f"]["module"] == "cos_f_mod"
    assert recorded == {"spec_origins": {"methods.cos_f": str(path)}}
    before = noop.fingerprint(spec)
    assert spec.outside(["kd"]) == ({}, {}) and load_spec().outside(list(load_spec().methods)) == ({}, {})
    (tmp_path / "cos_f_mod.py").write_text(COSINE.replace("(1 - F", "(2 - F"))
    assert spec.outside(["cos_f"])[0]["cos_f"]["sha256"] != code["cos_f"]["sha256"]
    assert noop.fingerprint(spec) != before  # no "already finished" from the fast path for edited code


def test_the_guide_shows_the_scaffolds_files():
    """docs/first-method.md walks through what `harness new-method cosine` writes: the same text."""
    guide = (REPO / "docs" / "first-method.md").read_text()
    for path, text in new_method.files("cosine").items():
        if not path.endswith("__init__.py"):
            assert text in guide, f"{path} differs from the guide"


def test_with_method_adds_its_cells_and_claims_against_every_method_of_the_suite(tmp_path, home, capsys):
    from harness.commands.with_method import with_methods

    path = overlay(tmp_path, METHOD.format(name="cos_g", cls="cos_g_mod.Cos"), module="cos_g_mod")
    spec = load_spec(extra=[str(path)])
    suite = with_methods(spec, ["digits"], ["cos_g"], home).suites["digits"]
    digits = spec.suites["digits"]
    assert suite.cells == digits.cells + ["digits/resnet20-resnet8/cos_g"]
    added = suite.claims[len(digits.claims):]
    assert [(c.better, c.than, c.setting) for c in added] == \
        [("cos_g", [cell.split("/")[2] for cell in digits.cells], "digits/resnet20-resnet8")]
    code, out, err = listed(capsys, "--spec-extra", str(path), "run", "--cell", "digits/resnet20-resnet8/kd",
                            "--with-method", "cos_g")
    assert code == 2 and err == ["harness: error: --with-method needs --suite: it puts a method through a suite's pairs"]


def scaffold(tmp_path: Path, name: str) -> Path:
    assert main(["new-method", name, "--dir", str(tmp_path)]) == 0
    return tmp_path / f"kd-{name}"


def cli(env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *argv], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.long
def test_acceptance_a_scaffolded_package_lists_trains_retrains_when_edited_and_is_audited(tmp_path, home):
    """Issue #39's Done-when, with no file of the harness changed: the package is importable
    (PYTHONPATH) and its overlay named by $KD_HARNESS_SPEC_EXTRA."""
    project = scaffold(tmp_path, "mine")
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=project,
                          capture_output=True, text=True, env=os.environ | {"PYTHONPATH": f"{project}{os.pathsep}{REPO}"})
    assert test.returncode == 0, test.stdout[-2000:]  # the scaffold's golden test passes
    env = os.environ | {"PYTHONPATH": f"{project}{os.pathsep}{REPO}", "KD_HARNESS_HOME": str(home),
                        "KD_HARNESS_SPEC_EXTRA": str(project / "kd_mine" / "overlay.yaml")}
    listing = cli(env, "list", "--dataset", "digits", "--method", "mine")
    assert "digits/resnet20-resnet8/mine  # mine from " in listing.stdout, listing.stderr
    cell = ("run", "--cell", "digits/resnet20-resnet8/mine", "--smoke", "--no-progress")
    first = cli(env, *cell)
    assert first.returncode == 0 and ": finished;" in first.stdout, first.stderr[-2000:]
    again = cli(env, *cell)
    assert ": already finished;" in again.stdout, again.stderr[-2000:]
    distiller = project / "kd_mine" / "distiller.py"
    distiller.write_text(distiller.read_text().replace("(1 - similarity).mean()", "(1 - similarity).mean() * 10"))
    edited = cli(env, *cell)
    assert edited.returncode == 0 and ": finished;" in edited.stdout, edited.stderr[-2000:]
    run_id = edited.stdout.split("MLflow run ")[1].split()[0]
    assert run_id != first.stdout.split("MLflow run ")[1].split()[0]
    audit = cli(env, "audit", "--suite", "digits", "--with-method", "mine", "--include-smoke")
    assert audit.returncode == 0, audit.stderr[-2000:]
    methods = [cell.split("/")[2] for cell in load_spec().suites["digits"].cells]
    for other in methods:
        assert f"| mine > {other} (top1) | digits/resnet20-resnet8 | --with-method mine |" in audit.stdout
    from mlflow.tracking import MlflowClient

    params = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(run_id).data.params
    assert params["method_code.mine.module"] == "kd_mine.distiller"
    assert params["method_code.mine.sha256"] == __import__("hashlib").sha256(distiller.read_bytes()).hexdigest()


@pytest.mark.long
def test_acceptance_an_installed_package_lists_through_its_entry_point(tmp_path, home):
    project = scaffold(tmp_path, "installed")
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(project)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = os.environ | {"PYTHONPATH": f"{target}{os.pathsep}{REPO}", "KD_HARNESS_HOME": str(home)}
    env.pop("KD_HARNESS_SPEC_EXTRA", None)
    listing = cli(env, "list", "--dataset", "digits", "--method", "installed")
    assert listing.returncode == 0 and not listing.stderr, listing.stderr
    assert ("digits/resnet20-resnet8/installed  # installed from package kd-installed (entry point installed)"
            in listing.stdout)


def log_runs(uri: str, cell: str, accuracies: list[float], epoch_seconds: float) -> None:
    """Finished student runs of `cell` made for the digits suite, one per seed, as the engine logs them."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name("kd-harness")
    experiment = found.experiment_id if found else client.create_experiment("kd-harness")
    for seed, value in enumerate(accuracies):
        run = client.create_run(experiment, tags={"role": "student", "cell": cell, "seed": str(seed), "smoke": "False",
                                                  "suite": "digits"})
        params = {"recipe_name": "digits", "recipe.epochs": "3", "phases.main": "3", "env.device_name": "test-cpu",
                  "env.git_commit": "abcdef0123456789", "env.device": "cpu", "env.torch": "2.14.1"}
        summary = {"test_top1_last": value, "test_top5_last": 100.0, "test_top1_best_val": value,
                   "test_top5_best_val": 100.0, "mean_epoch_seconds": epoch_seconds, "peak_memory_mb": 100.0,
                   "extra_parameters": 0, "student_parameters": 1}
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()],
                         metrics=[Metric(k, v, 0, 3) for k, v in summary.items()])
        client.set_terminated(run.info.run_id, "FINISHED")


def test_a_card_shows_verdicts_deltas_with_intervals_and_cost_against_kd(tmp_path, home, capsys):
    path = overlay(tmp_path, METHOD.format(name="cos_h", cls="cos_h_mod.Cos"), module="cos_h_mod")
    home.mkdir(parents=True)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    setting = "digits/resnet20-resnet8"
    log_runs(uri, f"{setting}/baseline", [90.0, 90.2, 89.8], 10.0)
    log_runs(uri, f"{setting}/kd", [91.0, 91.2, 90.8], 10.0)
    log_runs(uri, f"{setting}/cos_h", [93.0, 93.2, 92.8], 15.0)
    out = tmp_path / "card"
    assert main(["--spec-extra", str(path), "--tracking-uri", uri, "card", "cos_h", "--out", str(out)]) == 0
    text = (out / "cos_h.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| digits ") and "93.00 ± 0.20 (3)" in line)
    assert "+2.00 [" in row and "+3.00 [" in row and "1.50x" in row  # Δ vs kd, vs the student; 15 s / 10 s
    assert "| cos_h > kd " in text and "| cos_h > baseline " in text and "confirmed" in text
    assert "cos_h > at" not in text  # no runs of at: counted as not run, no row of figures
    page = (out / "cos_h.html").read_text()
    assert "<img alt=" in page and "base64," in page and "<table" in page
    assert (out / "cos_h-cost.png").read_bytes().startswith(b"\x89PNG")
    assert "| digits  | 1       | 1.0 (of 3 methods a pair) | +2.00 " in text  # across pairs
    capsys.readouterr()
    assert main(["--spec-extra", str(path), "--tracking-uri", uri, "report", "--suite", "digits",
                 "--with-method", "cos_h"]) == 0
    assert "cos_h" in capsys.readouterr().out  # its row beside the suite's


def test_across_pairs_the_card_gives_the_mean_rank_and_a_bootstrap_interval_of_the_mean_delta():
    from harness.results.card import across_pairs

    pairs = pd.DataFrame({"suite": ["s"] * 3 + ["t"], "delta_kd": [1.0, 2.0, 3.0, 0.5],
                          "rank": [1.0, 2.0, 1.0, 3.0], "ranked": [4, 4, 4, 5]})
    table = across_pairs(pairs).set_index("suite")
    assert table.loc["s", "mean rank"] == "1.3 (of 4 methods a pair)"
    low, high = (float(x) for x in table.loc["s", "mean Δ vs kd [bootstrap 95%]"].split("[")[1].rstrip("]").split(","))
    assert table.loc["s", "mean Δ vs kd [bootstrap 95%]"].startswith("+2.00 [") and 1.0 <= low < 2.0 < high <= 3.0
    assert table.loc["t", "mean Δ vs kd [bootstrap 95%]"] == "+0.50"  # one pair: no interval
