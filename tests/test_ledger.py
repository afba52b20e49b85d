"""The run ledger (docs/ledger.md): runs out of a store and into another, reports and the audit from
ledgers, and every bad ledger one line with nothing written."""

import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.tracking import ledger as ledger_format

A, B = "digits/resnet20-resnet8/baseline", "digits/resnet20-resnet8/kd"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with real smoke runs of two digits cells over two seeds, and its ledger."""
    root = tmp_path_factory.mktemp("ledger")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_HARNESS_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for cell in (A, B):
            assert main(["run", "--cell", cell, "--smoke", "--seed", "0", "1", "--no-progress"]) == 0
        assert main(["export", "--cells", A, B, "--out", str(root / "runs.jsonl"), "--with-teachers"]) == 0
    return root, home, root / "runs.jsonl"


def run_in(home: Path, argv: list[str], monkeypatch) -> int:
    monkeypatch.setenv("KD_HARNESS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return main(argv)


def test_export_is_byte_stable_and_import_round_trips(trained, tmp_path, monkeypatch, capsys):
    root, home, ledger = trained
    led = ledger_format.read(ledger)
    assert led.manifest["records"] == {"student": 4, "teacher": 1}
    student = next(r for r in led.records if r["tags"]["role"] == "student")
    assert student["params"]["env.git_commit"] and student["tags"]["run_key"] and student["origin"]["store"]
    assert "test/top1" in student["history"] or "test/top1" in student["metrics"]
    again = tmp_path / "again.jsonl"
    assert run_in(home, ["export", "--cells", A, B, "--out", str(again), "--with-teachers"], monkeypatch) == 0
    assert again.read_bytes() == ledger.read_bytes()  # the same runs, the same bytes

    fresh = tmp_path / "fresh"
    assert run_in(fresh, ["import", str(ledger)], monkeypatch) == 0
    assert "imported 5 runs" in capsys.readouterr().out
    assert run_in(fresh, ["import", str(ledger)], monkeypatch) == 0  # idempotent
    assert "imported 0 runs" in capsys.readouterr().out and (fresh / "teachers").is_dir()
    back = tmp_path / "back.jsonl"
    assert run_in(fresh, ["export", "--cells", A, B, "--out", str(back)], monkeypatch) == 0
    # an imported run exports as the run it was: the same records, byte for byte (the manifest's sha256)
    assert ledger_format.read(back).manifest["sha256"] == led.manifest["sha256"]

    reports = {}
    for name, h, extra in (("store", home, []), ("imported", fresh, []), ("ledger", tmp_path / "none", ["--from", str(ledger)])):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)  # the same relative --out: the printed commands match
        assert run_in(h, ["report", *extra, "--cells", A, B, "--include-smoke", "--out", "report.md"], monkeypatch) == 0
        assert run_in(h, ["audit", *extra, "--claim", "kd > baseline", "--cells", A, B, "--include-smoke",
                          "--out", "audit.md"], monkeypatch) == 0
        reports[name] = Path("report.md").read_text()
        reports[name + "-audit"] = Path("audit.md").read_text().replace(" " + " ".join(extra), "") if extra \
            else Path("audit.md").read_text()
    assert reports["store"] == reports["imported"] == reports["ledger"]
    assert reports["store-audit"] == reports["imported-audit"] == reports["ledger-audit"]
    assert student["run_id"] in reports["ledger"] or "runs.md" not in reports["ledger"]
    assert not (tmp_path / "none" / "mlflow.db").exists()  # --from needs no store


def test_imported_teacher_is_the_one_new_seeds_distil_from(trained, tmp_path, monkeypatch, capsys):
    root, home, ledger = trained
    led = ledger_format.read(ledger)
    (name, digest), = led.manifest["teacher_files"].items()
    fresh = tmp_path / "fresh"
    assert run_in(fresh, ["import", str(ledger)], monkeypatch) == 0
    assert (fresh / "teachers" / name).read_bytes() == (home / "teachers" / name).read_bytes()
    capsys.readouterr()
    assert run_in(fresh, ["run", "--cell", B, "--smoke", "--seed", "2", "--no-progress"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "finished" in out and "training teacher" not in out  # seed 2 distilled from the imported teacher


def rewrite(source: Path, target: Path, change) -> Path:
    led = ledger_format.read(source)
    records = json.loads(json.dumps(led.records))
    change(records)
    ledger_format.write(target, records)
    return target


def test_a_conflicting_record_is_reported_not_merged(trained, tmp_path, monkeypatch, capsys):
    root, home, ledger = trained

    def other_result(records):
        for r in records:
            if r["tags"].get("cell") == B and r["tags"]["seed"] == "0":
                r["metrics"]["test_top1_last"] += 1.0
                r["run_id"] = r["origin"]["run_id"] = "f" * 32  # the same key, run elsewhere
                r["origin"]["store"] = "sqlite:////elsewhere/mlflow.db"

    changed = rewrite(ledger, tmp_path / "changed.jsonl", other_result)
    fresh = tmp_path / "fresh"
    assert run_in(fresh, ["import", str(ledger)], monkeypatch) == 0
    capsys.readouterr()
    assert run_in(fresh, ["import", str(changed)], monkeypatch) == 1
    captured = capsys.readouterr()
    conflict, = [line for line in captured.err.splitlines() if line.startswith("conflict")]
    assert B in conflict and "elsewhere" in conflict and str(home) in conflict  # both origins
    tops = sorted(r["metrics"]["test_top1_last"] for r in ledger_format.read(changed).records
                  if r["tags"].get("cell") == B and r["tags"]["seed"] == "0")
    original = next(r["metrics"]["test_top1_last"] for r in ledger_format.read(ledger).records
                    if r["tags"].get("cell") == B and r["tags"]["seed"] == "0")
    assert f"{original:.2f}" in conflict and f"{tops[0]:.2f}" in conflict
    assert "imported 0 runs" in captured.out
    assert run_in(fresh, ["import", str(changed), "--keep-both"], monkeypatch) == 0
    assert "imported 1 runs" in capsys.readouterr().out


def _newer(source, target):
    lines = source.read_bytes().split(b"\n", 1)
    manifest = json.loads(lines[0]) | {ledger_format.MAGIC: ledger_format.FORMAT + 1}
    target.write_bytes(json.dumps(manifest).encode() + b"\n" + lines[1])


def _tampered(source, target):
    data = bytearray(source.read_bytes())
    at = data.index(b'"test_top1_last":') + len(b'"test_top1_last":')
    data[at] = ord("1") if data[at] != ord("1") else ord("2")
    target.write_bytes(bytes(data))


def _unknown_cell(source, target):
    def rename(records):
        for r in records:
            if r["tags"].get("cell") == B:
                r["tags"]["cell"] = "digits/resnet20-resnet8/nosuchmethod"
    rewrite(source, target, rename)


@pytest.mark.parametrize("make, expected", [
    (_newer, "format 2"),
    (lambda s, t: t.write_bytes(b"\x00garbage\n"), "not a kd-harness ledger"),
    (lambda s, t: t.write_bytes(s.read_bytes()[:-200]), "checksum mismatch"),
    (_tampered, "checksum mismatch"),
    (_unknown_cell, "nosuchmethod"),
    (lambda s, t: None, "cannot read ledger"),
])
def test_bad_ledgers_are_one_line_and_nothing_is_written(trained, tmp_path, monkeypatch, capsys, make, expected):
    root, home, ledger = trained
    bad = tmp_path / "bad.jsonl"
    make(ledger, bad)
    fresh = tmp_path / "fresh"
    assert run_in(fresh, ["import", str(ledger), str(bad)], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert not (fresh / "mlflow.db").exists() and not (fresh / "teachers").exists()
    assert run_in(fresh, ["report", "--from", str(bad), "--cells", A, B], monkeypatch) == 2


def test_a_missing_or_changed_teacher_file_is_refused(trained, tmp_path, monkeypatch, capsys):
    root, home, ledger = trained
    copy = tmp_path / "runs.jsonl"
    shutil.copy(ledger, copy)
    shutil.copytree(ledger.with_name(ledger.name + ".teachers"), tmp_path / "runs.jsonl.teachers")
    teacher = next((tmp_path / "runs.jsonl.teachers").iterdir())
    teacher.write_bytes(teacher.read_bytes()[:-1] + b"\x01")
    assert run_in(tmp_path / "fresh", ["import", str(copy)], monkeypatch) == 2
    assert "does not match its sha256" in capsys.readouterr().err
    teacher.unlink()
    assert run_in(tmp_path / "fresh", ["import", str(copy)], monkeypatch) == 2
    assert "is missing" in capsys.readouterr().err
    assert not (tmp_path / "fresh" / "mlflow.db").exists()


def test_history_keeps_every_step_and_single_points_stay_compact():
    record = {"metrics": {"a": 2.0, "b": 5.0}, "history": {"a": [[0, 1.0], [1, 2.0]]}}
    assert ledger_format.history_of(record, "a") == [(0, 1.0), (1, 2.0)]
    assert ledger_format.history_of(record, "b") == [(0, 5.0)]
    assert ledger_format.history_of(record, "c") == []


def test_a_suite_report_takes_the_configuration_at_its_own_recipe(trained, tmp_path, monkeypatch):
    """Two configurations of a cell, each made for another suite: the suite's report shows the one at
    the suite's recipe, not the newer one at another recipe (baselines2019_control showed the baseline
    of dkd_mnist_settle_lr001, trained at lr 0.01, before this rule)."""
    root, home, ledger = trained

    def two_configurations(records):
        for r in [r for r in records if r["tags"].get("cell") == A]:
            r["tags"]["suite"] = "positive_control"
            other = json.loads(json.dumps(r))
            other["run_id"] = other["origin"]["run_id"] = r["run_id"][::-1]
            other["tags"] |= {"suite": "nmt_table1", "config_key": "f" * 16, "run_key": r["tags"]["run_key"][::-1]}
            other["params"]["recipe_name"] = "mnist_small_lr001"
            other["metrics"]["test_top1_last"] = 11.0
            other["start_time"] += 3600_000
            records.append(other)

    changed = rewrite(ledger, tmp_path / "two.jsonl", two_configurations)
    from harness.results.configurations import load_runs, suite_recipes
    from harness.spec.spec import load_spec
    from harness.tracking.ledger import Ledgers

    spec = load_spec(None)
    runs, notes = load_runs(Ledgers([changed]), [A], include_smoke=True, suite="digits",
                            recipes=suite_recipes(spec, "digits", [A]))
    assert set(runs["params.recipe_name"]) == {"digits"} and 11.0 not in set(runs["metrics.test_top1_last"])
    newest, _ = load_runs(Ledgers([changed]), [A], include_smoke=True, suite="digits")
    assert set(newest["metrics.test_top1_last"]) == {11.0}  # without the rule: the newer configuration
