"""The committed results are what the committed run ledgers render (docs/ledger.md): each
results/<suite>/report.md (and a suite's own CLAIMS.md) and results/CLAIMS.md, re-rendered here from
results/*/runs.jsonl with no store, must equal the committed files but for the command line they
print (scripts/render_results.sh renders them all)."""

import re
from pathlib import Path

import pytest

from harness.cli import main

RESULTS = Path(__file__).resolve().parent.parent / "results"
LEDGERS = sorted(RESULTS.glob("*/runs.jsonl"))
COMMAND = re.compile(r"`harness [^`]*`")  # the command a file was rendered by: its paths differ here


def same_but_commands(text: str) -> str:
    return COMMAND.sub("`harness ...`", text)


@pytest.fixture
def no_store(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_HARNESS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_every_results_folder_with_runs_of_this_harness_has_a_ledger():
    assert LEDGERS, "no committed run ledger under results/"


@pytest.mark.parametrize("ledger", LEDGERS, ids=lambda p: p.parent.name)
def test_committed_report_is_what_its_ledger_renders(ledger, no_store):
    suite = ledger.parent.name
    out = no_store / suite
    assert main(["report", "--from", str(ledger), "--suite", suite, "--out", f"{out}/"]) == 0
    for name in ("report.md", "runs.md"):
        assert same_but_commands((out / name).read_text()) == same_but_commands((ledger.parent / name).read_text()), \
            f"results/{suite}/{name} is not what {ledger.name} renders: bash scripts/render_results.sh"
    if (ledger.parent / "CLAIMS.md").exists():
        assert main(["audit", "--from", str(ledger), "--suite", suite, "--out", str(out / "CLAIMS.md")]) == 0
        assert same_but_commands((out / "CLAIMS.md").read_text()) == \
            same_but_commands((ledger.parent / "CLAIMS.md").read_text())
    assert not (no_store / "home" / "mlflow.db").exists()


def test_committed_claims_are_what_the_ledgers_render(no_store):
    out = no_store / "CLAIMS.md"
    assert main(["audit", "--from", *map(str, LEDGERS), "--out", str(out)]) == 0
    assert same_but_commands(out.read_text()) == same_but_commands((RESULTS / "CLAIMS.md").read_text()), \
        "results/CLAIMS.md is not what results/*/runs.jsonl render: bash scripts/render_results.sh"


DKD_SETTLE = ["dkd_mnist_settle", "dkd_mnist_settle_beta2", "dkd_mnist_settle_lr001"]


def test_committed_dkd_settle_audit_is_what_its_ledger_renders(no_store):
    ledger = RESULTS / "baselines2019_control" / "runs.jsonl"
    out = no_store / "DKD-SETTLE.md"
    assert main(["audit", "--from", str(ledger), "--suite", *DKD_SETTLE, "--out", str(out)]) == 0
    assert same_but_commands(out.read_text()) == same_but_commands((ledger.parent / "DKD-SETTLE.md").read_text())
