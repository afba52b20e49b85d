"""The report: a store with known runs gives known numbers; every format; the HTML in a real
browser; `harness ui` serving the runs over MLflow's REST API; runs of uncommitted code marked."""

import json
import math
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.results import audit as aud
from harness.results import audit_render
from harness.results import render
from harness.results import report as rep
from harness.results.plots import plots
from harness.spec.spec import DEFAULT_SPEC, load_spec
from harness.tracking.provenance import _git_state

A, B, C = "digits/resnet20-resnet8/baseline", "digits/resnet20-resnet8/kd", "digits/resnet20-resnet8/at"
KNOWN = {A: [90.0, 91.0, 92.0], B: [93.0, 95.0, 94.0]}  # C has no runs


@pytest.fixture
def store(home, tmp_path):
    """A store with 2 methods x 3 seeds of known results, and a suite of 3 cells over it."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment = client.create_experiment("kd-harness")
    for cell, values in KNOWN.items():
        for seed, value in enumerate(values):
            run = client.create_run(experiment, tags={"role": "student", "cell": cell, "seed": str(seed),
                                                      "smoke": "False"})
            params = {"recipe_name": "digits", "recipe.epochs": "3", "env.device_name": "test-cpu",
                      "env.git_commit": "abcdef0123456789", "env.device": "cpu", "env.torch": "2.14.1"}
            summary = {"test_top1_last": value, "test_top5_last": 100.0, "test_top1_best_val": value - 1,
                       "wall_seconds": 10.0,
                       "test_top5_best_val": 99.0, "mean_epoch_seconds": 2.0 + seed, "peak_memory_mb": 500,
                       "extra_parameters": 0, "student_parameters": 1234}
            history = [Metric("test/top1", value - 10 + 5 * e, 0, e) for e in range(3)]
            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()],
                             metrics=[Metric(k, v, 0, 3) for k, v in summary.items()] + history,
                             tags=[RunTag("mlflow.runName", cell)])
            client.set_terminated(run.info.run_id, "FINISHED")
    # a smoke run and a failed run that the report must ignore
    for status, smoke in (("FINISHED", "True"), ("FAILED", "False")):
        run = client.create_run(experiment, tags={"role": "student", "cell": A, "seed": "9", "smoke": smoke})
        client.log_metric(run.info.run_id, "test_top1_last", 0.0)
        client.set_terminated(run.info.run_id, status)
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["suites"]["known"] = {"title": "Known", "source": "Test Table", "cells": [A, B, C], "references": [
        {"cell": A, "value": 91.0, "metric": "top1", "source": "Test Table, baseline"},
        {"cell": B, "value": 1.0, "metric": "top1_error", "source": "Test Table, KD"},  # 99.0: outside 94 ± 2
        {"cell": C, "value": 80.0, "metric": "top1", "source": "Test Table, AT"}]}
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(raw))
    return uri, path


def test_flag_needs_more_than_the_suite_tolerance(store):
    """A paper number 5 points (5 std) off is flagged at the default tolerance, not at a tolerance of 6:
    a tiny std of ours alone must not flag every paper row."""
    uri, spec_path = store
    raw = yaml.safe_load(spec_path.read_text())
    raw["suites"]["known"]["tolerance"] = 6.0
    spec_path.write_text(yaml.safe_dump(raw))
    result = rep.build(load_spec(spec_path), uri, "known", None, "last")
    d = result.detail.set_index("cell")
    assert not bool(d.loc[B, "top1_flag"]) and d.loc[B, "top1_z"] == pytest.approx(-5.0)
    assert result.table.loc["kd", "digits"] == "94.00 ± 1.00 (3) [paper 99.00, Δ -5.00]"
    assert "max(2·std, 6 points)" in result.caption


def test_known_store_gives_known_table(store):
    uri, spec_path = store
    result = rep.build(load_spec(spec_path), uri, "known", None, "last")
    d = result.detail.set_index("cell")
    assert list(d["n"]) == [3, 3, 0]
    assert d.loc[A, "top1_mean"] == pytest.approx(91.0) and d.loc[A, "top1_std"] == pytest.approx(1.0)
    assert d.loc[B, "top1_mean"] == pytest.approx(94.0) and d.loc[B, "top1_std"] == pytest.approx(1.0)
    assert d.loc[B, "top1_paper"] == pytest.approx(99.0)  # converted from 1.0% error
    assert d.loc[B, "top1_delta"] == pytest.approx(-5.0) and bool(d.loc[B, "top1_flag"])
    assert d.loc[A, "top1_delta"] == pytest.approx(0.0) and not bool(d.loc[A, "top1_flag"])
    assert d.loc[A, "sec_per_epoch"] == pytest.approx(3.0)  # median of 2, 3, 4
    table = result.table
    assert table.loc["baseline", "digits"] == "91.00 ± 1.00 (3) [paper 91.00, Δ +0.00]"
    assert table.loc["kd", "digits"] == "94.00 ± 1.00 (3) [paper 99.00, Δ -5.00]*"
    assert table.loc["at", "digits"] == "missing [paper 80.00]"  # missing, never zero
    assert d.loc[B, "top1_z"] == pytest.approx(-5.0) and math.isnan(d.loc[C, "top1_z"])
    best = rep.build(load_spec(spec_path), uri, "known", None, "best-val").detail.set_index("cell")
    assert best.loc[A, "top1_mean"] == pytest.approx(90.0)
    assert "best validation" in rep.build(load_spec(spec_path), uri, "known", None, "best-val").caption
    assert len(result.curves[A].columns) == 3 and list(result.curves[A].index) == [0, 1, 2]


def test_every_format_and_the_output_directory(store, tmp_path, capsys):
    uri, spec_path = store
    out = tmp_path / "out"
    assert main(["--spec", str(spec_path), "report", "--suite", "known", "--out", f"{out}/"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["accuracy.png", "cost.png", "curves.png", "report.csv", "report.html", "report.md",
                     "report.tex", "runs.md"]
    provenance = (out / "runs.md").read_text()
    assert provenance.count("| digits/resnet20-resnet8/") == 6 and "abcdef0123456789" in provenance
    assert "94.00 ± 1.00 (3)" in (out / "report.md").read_text()
    assert "\\begin{tabular}" in (out / "report.tex").read_text()
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3
    assert "top1_mean" in (out / "report.csv").read_text().splitlines()[0]
    assert main(["--spec", str(spec_path), "report", "--suite", "known", "--format", "csv"]) == 0
    assert "top1_mean" in capsys.readouterr().out


def test_summary_tables_have_one_header_row(store):
    """The methods table's header is one row in HTML and LaTeX: no stray row holding only 'method'."""
    uri, spec_path = store
    result = rep.build(load_spec(spec_path), uri, "known", None, "last")
    page = render.render(result, "html")
    head = page.split("<thead>", 1)[1].split("</thead>", 1)[0]
    assert head.count("<tr") == 1 and "<th>method</th>" in head
    latex = render.render(result, "latex")
    header = latex.split("\\toprule", 1)[1].split("\\midrule", 1)[0].strip().splitlines()
    assert len(header) == 1 and header[0].startswith("method &")


@pytest.mark.parametrize("argv, expected", [
    (["report", "--suite", "digits"], "no MLflow store"),
    (["report", "--suite", "nope"], "unknown suite"),
    (["report", "--cells", "digits/resnet20-resnet8/kdd"], "unknown method"),
    (["report", "--suite", "digits", "--format", "pdf"], "invalid choice"),
])
def test_report_user_errors(home, capsys, argv, expected):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1


def test_a_suite_without_runs_is_a_user_error(store, capsys):
    uri, spec_path = store
    assert main(["--spec", str(spec_path), "report", "--suite", "nmt_table1"]) == 2
    assert "no finished runs for suite nmt_table1" in capsys.readouterr().err


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not _chromium(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_report_renders_in_headless_chromium(store, tmp_path):
    uri, spec_path = store
    result = rep.build(load_spec(spec_path), uri, "known", None, "last")
    page = tmp_path / "report.html"
    page.write_text(render.render(result, "html", plots(result)))
    shot = tmp_path / "shot.png"
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2000",
                           f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1400, 2000)
    dark = sum(1 for px in image.getdata() if px < 128)
    assert dark > 5000  # text and plot lines, not a blank page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.long
def test_harness_ui_serves_runs_over_the_rest_api(store, home):
    uri, spec_path = store
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "--home", str(home), "ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout.readline().startswith("starting the MLflow UI")  # at once: why it may wait
        assert f"http://127.0.0.1:{port}" in proc.stdout.readline()  # once the server answers
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the MLflow server did not start"
                time.sleep(0.5)
        experiment = json.load(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=kd-harness"))
        body = json.dumps({"experiment_ids": [experiment["experiment"]["experiment_id"]],
                           "filter": f"tags.cell = '{B}' and attributes.status = 'FINISHED'"}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                         headers={"Content-Type": "application/json"})
        runs = json.load(urllib.request.urlopen(request))["runs"]
        values = sorted(m["value"] for r in runs for m in r["data"]["metrics"] if m["key"] == "test_top1_last")
        assert values == [93.0, 94.0, 95.0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_latex_output_compiles_with_pdflatex(store, tmp_path):
    """The LaTeX table goes into a document as it is: a real TeX engine must compile it."""
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (Debian: texlive-latex-base, texlive-latex-recommended)")
    uri, spec_path = store
    body = render.render(rep.build(load_spec(spec_path), uri, "known", None, "last"), "latex")
    assert "±" not in body and "Δ" not in body and r"$\pm$" in body
    (tmp_path / "table.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm,"
                                        "landscape]{geometry}\n\\begin{document}\n\\tiny\n" + body +
                                        "\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "table.pdf").stat().st_size > 0


@pytest.mark.long
@pytest.mark.skipif(not _chromium(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_mlflow_ui_opens_on_the_runs_table_with_readable_names(home, tmp_path):
    """A real run, `harness ui`, and Chromium: the address `harness ui` prints opens the runs table,
    which lists the run by its name (method first)."""
    assert main(["run", "--cell", B, "--smoke", "--no-progress"]) == 0
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kd-harness")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "--home", str(home), "ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs"
        assert proc.stdout.readline().startswith("starting the MLflow UI")
        assert url in proc.stdout.readline()
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the MLflow server did not start"
                time.sleep(0.5)
        flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1600,900", "--virtual-time-budget=30000"]
        dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
        assert "kd · digits/resnet20-resnet8 · seed 0" in dom, dom[-2000:]
        subprocess.run(flags + [f"--screenshot={tmp_path / 'ui.png'}", url], capture_output=True, timeout=180)
        assert (tmp_path / "ui.png").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_runs_of_uncommitted_code_are_marked_in_reports_and_the_audit(store):
    uri, spec_path = store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("kd-harness").experiment_id
    dirty = client.search_runs([experiment], f"tags.cell = '{B}' and tags.seed = '0'")[0].info.run_id
    client.log_param(dirty, "env.git_dirty", "True")
    raw = yaml.safe_load(spec_path.read_text())
    raw["suites"]["known"]["claims"] = [{"better": B, "than": A, "source": "Test Table"}]
    spec_path.write_text(yaml.safe_dump(raw))
    spec = load_spec(spec_path)
    result = rep.build(spec, uri, "known", None, "last")
    assert "Commit(s): abcdef0123, abcdef0123+dirty." in result.caption
    note = "1 of 6 runs ran uncommitted code (commit shown as ID+dirty)"
    assert any(n.startswith(note) for n in result.notes) and note in render.render(result, "md")
    runs_md = render.provenance(result, "harness report --suite known")
    assert "abcdef0123456789+dirty" in runs_md and f"| {dirty} | abcdef0123+dirty |" in runs_md
    assert runs_md.count("| abcdef0123 |") == 5
    audited = aud.audit(spec, uri, ["known"])
    text = audit_render.render_markdown(audited, "Claims audit", audit_render.caption(audited, "last", "harness audit"))
    assert "commit(s) abcdef0123, abcdef0123+dirty;" in text and note in text
    assert f"| {dirty} | abcdef0123+dirty |" in text and text.count("| abcdef0123 |") == 5


def test_a_new_file_in_the_code_makes_the_checkout_dirty(tmp_path):
    """Untracked files count where a run executes them (harness/, methods/, benchmarks.yaml), not
    results or docs, nor ignored files."""
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    for name in ("harness/__init__.py", "methods/__init__.py", "docs/notes.md", ".gitignore"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("__pycache__/\n" if name == ".gitignore" else "")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "code")
    assert _git_state(tmp_path)[1] is False
    for name in ("results/new/report.md", "docs/new.md", "harness/__pycache__/x.pyc"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert _git_state(tmp_path)[1] is False
    (tmp_path / "methods" / "x.py").write_text("class X: ...\n")
    commit, dirty = _git_state(tmp_path)
    assert dirty is True and len(commit) == 40
    (tmp_path / "methods" / "x.py").unlink()
    (tmp_path / "docs" / "notes.md").write_text("changed")  # a tracked file changed: dirty, as before
    assert _git_state(tmp_path)[1] is True
