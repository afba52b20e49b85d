"""`harness new-method NAME [--dir D]`: a method as a package of its own (docs/first-method.md).

It writes D/kd-NAME/: pyproject.toml with the `kd_harness.methods` entry point (so that `pip install`
is enough for `harness list` to show the method), the package kd_NAME with the Distiller and its
overlay (the block under `methods:` with sourced defaults), the method's card with the required
headings, and a golden test of the loss against a naive computation. The example loss is the guide's:
1 - cos(student logits, teacher logits), weighted. Nothing of the harness is changed.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from harness.errors import UserError

DISTILLER = '''"""$name, a kd-harness method (the scaffold's example loss): 1 - cos(student logits, teacher logits),
averaged over the batch."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.base import Distiller, Params, Probe


class ${cls}Params(Params):
    weight: Annotated[float, Field(ge=0, description="weight of the $name term")]


class $cls(Distiller):
    Params = ${cls}Params
    teacher_features = frozenset({"logits"})
    student_features = frozenset({"logits"})
    loss_terms = frozenset({"$name"})

    def __init__(self, params: ${cls}Params, probe: Probe):
        super().__init__(params, probe)

    def forward(self, student: dict, teacher: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        similarity = F.cosine_similarity(student["logits"], teacher["logits"].detach(), dim=1)
        return {"$name": self.params.weight * (1 - similarity).mean()}
'''

OVERLAY = '''# $name, added to kd-harness's spec: by the entry point in pyproject.toml once installed, or by
# `harness --spec-extra THIS_FILE ...` (then kd_$name must be importable: PYTHONPATH=the folder of pyproject.toml).
methods:
  $name:
    class: kd_$name.distiller.$cls
    paper: "a worked example (docs/first-method.md): replace with the paper and the code it follows"
    defaults:
      weight: {value: 1.0, source: "chosen for the example: the term is at most 2"}
    search_space:
      weight: "float:0.1:10:log"
'''

INIT = '''"""$name for kd-harness. Light on purpose: kd-harness reads OVERLAY (the entry point) at every start."""

from pathlib import Path

OVERLAY = Path(__file__).with_name("overlay.yaml")
'''

PYPROJECT = '''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "$project"
version = "0.1.0"
description = "$name: a knowledge-distillation method for kd-harness"
requires-python = ">=3.11"
dependencies = ["kd-harness"]

[project.entry-points."kd_harness.methods"]
$name = "kd_$name:OVERLAY"

[tool.setuptools]
packages = ["kd_$name"]

[tool.setuptools.package-data]
kd_$name = ["overlay.yaml"]
'''

CARD = '''# $name: cosine KD (the scaffold's example)

The paper and the code it follows.

## Formula as implemented
term = weight * mean over the batch of (1 - cos(z_s, z_t)), z_s and z_t the student's and teacher's logits
(`kd_$name/distiller.py`).

## Conventions
Which features, shapes, precision, extra parameters: the logits of both networks; no parameters of its own.

## Defaults
| name | value | source |
| --- | --- | --- |
| weight | 1.0 | chosen for the example: the term is at most 2 |

## Departures from the paper (complete list)
None, or each one.

## Tests
`tests/test_$name.py`: the term against explicit loops over the batch and the classes.
'''

TEST = '''"""The golden test: the loss of $name against a naive computation (explicit loops) on small tensors."""

import math

import torch

from kd_$name.distiller import $cls, ${cls}Params
from methods.base import Probe


def naive(student: list, teacher: list, weight: float) -> float:
    total = 0.0
    for s, t in zip(student, teacher):
        dot = sum(a * b for a, b in zip(s, t))
        total += 1 - dot / (math.sqrt(sum(a * a for a in s)) * math.sqrt(sum(b * b for b in t)))
    return weight * total / len(student)


def test_the_loss_matches_a_naive_computation():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)
    method = $cls(${cls}Params(weight=0.5), Probe(teacher={}, student={}, hint=0, batch_size=4))
    loss = method({"logits": student}, {"logits": teacher}, torch.zeros(4, dtype=torch.long))["$name"]
    assert abs(loss.item() - naive(student.tolist(), teacher.tolist(), 0.5)) < 1e-12
'''


def files(name: str) -> dict[str, str]:
    """Path (under the project folder) -> content, for method NAME."""
    values = {"name": name, "cls": "".join(part.capitalize() for part in name.split("_")),
              "project": f"kd-{name.replace('_', '-')}"}
    layout = {"pyproject.toml": PYPROJECT, f"kd_{name}/__init__.py": INIT, f"kd_{name}/distiller.py": DISTILLER,
              f"kd_{name}/overlay.yaml": OVERLAY, f"docs/{name}.md": CARD, f"tests/test_{name}.py": TEST}
    return {path: Template(text).substitute(values) for path, text in layout.items()}


def command_new_method(args, spec) -> int:
    name = args.name
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise UserError(f"method name {name!r}: lowercase letters, digits and '_', starting with a letter "
                        "(it names a Python package too)")
    if name in spec.methods:
        raise UserError(f"method {name!r} exists already ({spec.origin('methods', name) or 'built in'}); "
                        "choose another name")
    project = Path(args.dir) / f"kd-{name.replace('_', '-')}"
    if project.exists():
        raise UserError(f"{project} exists already: nothing written")
    for path, text in files(name).items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(text)
    print(f"wrote {project}: pyproject.toml (entry point kd_harness.methods), kd_{name}/ (the Distiller, its overlay), "
          f"docs/{name}.md (its card), tests/test_{name}.py (the golden test)\n"
          f"next: pip install -e {project}  (or PYTHONPATH={project} harness --spec-extra "
          f"{project}/kd_{name}/overlay.yaml ...), then harness list --method {name}")
    return 0


def add_parser(sub, parents: list) -> None:
    p = sub.add_parser("new-method", parents=parents, help="write a package skeleton for a new method (outside the harness)",
                       description="A folder kd-NAME with pyproject.toml (the kd_harness.methods entry point), the "
                       "Distiller, its overlay with sourced defaults, its card and a golden test (docs/first-method.md).")
    p.add_argument("name", metavar="NAME", help="the method's name in cell ids")
    p.add_argument("--dir", default=".", help="where the folder kd-NAME goes (default: here)")
