"""The harness in a shell (issue #41): a reader that stops early ends it quietly, and the commands it
prints run as printed when pasted (shell-quoted with shlex.join); the README's set-up makes a virtual
environment before it installs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.results import seeds_plan

REPO = Path(__file__).resolve().parent.parent


def test_list_into_a_closed_pipe_ends_quietly(home):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line, as `| head -0` would be: every write fails
    proc = subprocess.run([sys.executable, "-m", "harness", "list", "--dataset", "digits", "--all"], stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(write)
    assert proc.returncode == 141, proc.stderr  # a shell's figure for a command ended by a closed pipe
    assert proc.stderr == ""


def pasted(command: str, cwd) -> list[str]:
    """The arguments `harness` gets when `command` is pasted into bash (a stand-in that prints them)."""
    out = subprocess.run(["bash", "-c", 'harness() { printf "%s\\n" "$@"; }; ' + command], cwd=cwd,
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_the_audits_header_pastes_as_the_command_that_made_it(home, tmp_path, capsys):
    home.mkdir(parents=True)
    MlflowClient(f"sqlite:///{home / 'mlflow.db'}").create_experiment("kd-harness")  # no runs: sides "not run"
    argv = ["audit", "--claim", "digits/resnet20-resnet8/kd > digits/resnet20-resnet8/baseline", "--select", "last"]
    assert main(argv) == 0
    command = re.search(r"Regenerated from the runs listed below by `([^`]*)`", capsys.readouterr().out).group(1)
    shell = tmp_path / "shell"
    shell.mkdir()
    assert pasted(command, shell) == argv
    assert not any(shell.iterdir()), "the pasted command wrote files (an unquoted `>`)"


def test_a_seeds_plan_line_pastes_as_built(tmp_path):
    runs = seeds_plan.pd.DataFrame({"tags.cell": ["c"], "tags.seed": ["0"], "overrides": ["kd.tau=2.0 epochs=2"],
                                    "diverged": [False], "metrics.mean_epoch_seconds": [1.0],
                                    "params.recipe.epochs": ["2"]})
    line, _ = seeds_plan.command(["--cell", "c"], {"c": 3}, runs)
    command, _, comment = line.partition("   # ")
    assert pasted(command, tmp_path) == ["run", "--cell", "c", "--seeds", "3", "--set", "kd.tau=2.0", "--epochs", "2"]
    assert comment.startswith("2 more run(s)")


def test_the_readme_sets_up_a_virtual_environment_before_installing():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Set up.*?```bash\n(.*?)```", readme, flags=re.S).group(1)
    commands = [line.split("  #")[0].strip() for line in block.splitlines()]
    assert commands[0].startswith("python3.11 -m venv .venv && source .venv/bin/activate")
    # the two commands a user copies, which CI runs as they are written (.ci/run)
    assert commands[1:] == ['pip install -e ".[dev]"', "python -m pytest"]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert all(command in ci for command in commands[1:])
