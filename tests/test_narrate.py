"""Saying what is happening (issue #32 item 11): lines per phase and epoch where no progress bar
shows, and a warning when the machine is already loaded beyond its cores."""

import os

from harness.cli import main
from harness.running import narrate


def test_a_run_without_a_terminal_says_each_training_and_epoch(home, capsys):
    assert main(["run", "--cell", "digits/resnet20-resnet8/kd", "--smoke"]) == 0
    err = capsys.readouterr().err.splitlines()  # captured: not a terminal
    assert "training teacher digits/resnet20 seed 0: 1 epoch" in err
    assert "training kd · digits/resnet20-resnet8 · seed 0: 1 epoch" in err
    epochs = [line for line in err if ": epoch 1/1 (main), val top-1 " in line]
    assert len(epochs) == 2 and epochs[1].startswith("kd · digits/resnet20-resnet8 · seed 0")
    assert main(["run", "--cell", "digits/resnet20-resnet8/kd", "--smoke", "--no-progress", "--force"]) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("training ")]


def test_phases_are_named_when_a_method_has_more_than_one():
    assert narrate.start_line("fitnet · x", [("hints", 5), ("main", 15)]) == \
        "training fitnet · x: 20 epochs (hints 5, main 15)"
    assert narrate.epoch_line("fitnet · x", "hints", 2, 20, {"test/top1": 11.0, "epoch_seconds": 0.5}) == \
        "fitnet · x: epoch 3/20 (hints), test top-1 11.00%, 0.5 s"


def test_a_loaded_machine_is_warned_about_once(monkeypatch, capsys):
    monkeypatch.delenv("KD_HARNESS_QUIET_LOAD")  # the suite's default (tests/conftest.py)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.4, 3.0, 2.0))
    assert narrate.load_warning().startswith("harness: warning: the machine's 1-minute load is 3.4 on 2 cores")
    monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 3.0, 2.0))
    assert narrate.load_warning() is None
    monkeypatch.setattr(os, "getloadavg", lambda: (3.4, 3.0, 2.0))
    monkeypatch.setattr(narrate, "WARNED", [])
    narrate.warn_if_loaded()
    narrate.warn_if_loaded()
    assert capsys.readouterr().err.count("harness: warning: the machine's 1-minute load") == 1
