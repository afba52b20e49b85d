"""Methods: one Distiller per file, named and configured in benchmarks.yaml.

`build_objective` turns a method id ('kd', 'kd+nst_poly') into one Objective: the student's
cross-entropy plus every part's loss terms. The engine knows no method by name.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from harness.errors import UserError
from harness.spec import MethodSpec, Spec, method_parts
from methods.base import Distiller, Probe


def method_class(name: str, method: MethodSpec) -> type[Distiller]:
    module_name, _, class_name = method.class_.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"methods.{name}.class: cannot import {method.class_!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, Distiller)):
        raise UserError(f"methods.{name}.class: {method.class_!r} is not a Distiller")
    return cls


def resolve_params(spec: Spec, name: str, overrides: dict | None = None):
    """The method's validated hyperparameters: yaml defaults, then overrides."""
    method = spec.methods[name]
    values = {key: d.value for key, d in method.defaults.items()} | (overrides or {})
    try:
        return method_class(name, method).Params.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "?"
        raise UserError(f"method {name}, hyperparameter {key}: {first['msg']}") from None


def validate_defaults(spec: Spec) -> None:
    for name in spec.methods:
        resolve_params(spec, name)


class Objective(nn.Module):
    """CE on the student's logits plus the loss terms of each Distiller."""

    def __init__(self, distillers: dict[str, Distiller]):
        super().__init__()
        self.parts = nn.ModuleDict(distillers)
        self.teacher_features = frozenset().union(*(d.teacher_features for d in distillers.values()))
        self.student_features = frozenset({"logits"}).union(*(d.student_features for d in distillers.values()))

    @property
    def needs_teacher(self) -> bool:
        return bool(self.teacher_features)

    def forward(self, student: dict, teacher: dict | None, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = {"ce": F.cross_entropy(student["logits"], targets)}
        for name, part in self.parts.items():
            for term, value in part(student, teacher, targets).items():
                if term in losses:
                    raise RuntimeError(f"method {name} returns loss term {term!r}, already given by another part")
                losses[term] = value
        return losses

    def extra_parameters(self) -> int:
        return sum(d.extra_parameters() for d in self.parts.values())


def build_objective(spec: Spec, method_id: str, overrides: dict[str, dict], probe: Probe) -> Objective:
    parts = method_parts(method_id)
    unknown = set(overrides) - set(parts)
    if unknown:
        raise UserError(f"--set names method {sorted(unknown)[0]!r}, which is not part of {method_id!r}")
    distillers = {}
    for name in parts:
        params = resolve_params(spec, name, overrides.get(name))
        distillers[name] = method_class(name, spec.methods[name])(params, probe)
    return Objective(distillers)
