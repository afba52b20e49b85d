"""Writing a method (issue #32 item 15): the guide's worked example works as printed, reading an
undeclared feature and a misspelt hyperparameter are named, the guide lists every feature name."""

import re
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from harness.cli import main
from harness.errors import UserError
from harness.spec.schema import MethodSpec
from harness.spec.spec import DEFAULT_SPEC, load_spec
from methods import Objective, validate_defaults
from methods.base import FEATURE_NAMES, Distiller, Params, Probe

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "first-method.md"
PROBE = Probe(teacher={}, student={}, hint=0, batch_size=4)


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S)


def test_the_guides_worked_example_trains_a_step(monkeypatch):
    module = types.ModuleType("cosine_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # pydantic resolves annotations through it
    exec(compile(blocks("python")[0], "cosine.py", "exec"), module.__dict__)
    spec = MethodSpec.model_validate(yaml.safe_load(blocks("yaml")[0])["methods"]["cosine"])
    params = module.Cosine.Params.model_validate({k: d.value for k, d in spec.defaults.items()})
    objective = Objective({"cosine": module.Cosine(params, PROBE)})
    logits = torch.randn(4, 10, requires_grad=True)
    losses = objective({"logits": logits}, [{"logits": torch.randn(4, 10)}], torch.tensor([0, 1, 2, 3]))
    assert set(losses) == {"ce", "cosine"} and 0 <= losses["cosine"].item() <= 2
    sum(losses.values()).backward()
    assert logits.grad is not None


def test_the_guide_names_every_feature_and_the_cards_required_headings():
    text = GUIDE.read_text()
    assert all(f"`{name}`" in text for name in FEATURE_NAMES)
    assert "## Formula as implemented" in text and "## Departures from the paper" in text


class ReadsUndeclared(Distiller):
    Params = Params
    loss_terms = frozenset({"x"})

    def forward(self, student, teacher, targets):
        return {"x": student["pre_logits"].sum()}


def test_reading_an_undeclared_feature_is_named():
    objective = Objective({"bad": ReadsUndeclared(Params(), PROBE)})
    with pytest.raises(UserError, match="student feature 'pre_logits', which no part declares: add it to the "
                                        "Distiller's student_features"):
        objective({"logits": torch.randn(2, 3)}, None, torch.tensor([0, 1]))


def test_a_misspelt_default_names_the_typo(tmp_path, home, capsys):
    text = DEFAULT_SPEC.read_text().replace('      gamma: {value: 1.0, source: "LPL §V-A: gamma = 1"}',
                                            '      gama: {value: 1.0, source: "LPL §V-A: gamma = 1"}')
    path = tmp_path / "benchmarks.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=r"method lpl has no hyperparameter 'gama' \(did you mean 'gamma'\?\), "
                                        r"given in benchmarks.yaml methods.lpl.defaults"):
        validate_defaults(load_spec(path))
    assert main(["--spec", str(path), "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'gama'" in err
