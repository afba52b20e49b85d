"""Methods: one Distiller per file, named and configured in benchmarks.yaml.

`build_objective` turns a method id ('kd', 'kd+nst_poly') into one Objective: the student's
cross-entropy plus every part's loss terms. The engine knows no method by name.
"""

from __future__ import annotations

import difflib
import importlib

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from harness.errors import UserError
from harness.spec.cells import method_parts
from harness.spec.schema import MethodSpec
from harness.spec.spec import Spec
from methods.base import FEATURE_NAMES, MAIN_PHASE, Distiller, Probe


def method_class(name: str, method: MethodSpec) -> type[Distiller]:
    module_name, _, class_name = method.class_.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as e:  # the reason: an outside method's own import may fail
        raise UserError(f"methods.{name}.class: cannot import {method.class_!r} ({type(e).__name__}: {e})") from None
    if not (isinstance(cls, type) and issubclass(cls, Distiller)):
        raise UserError(f"methods.{name}.class: {method.class_!r} is not a Distiller")
    return cls


def resolve_params(spec: Spec, name: str, overrides: dict | None = None):
    """The method's validated hyperparameters: yaml defaults, then overrides."""
    method = spec.methods[name]
    values = {key: d.value for key, d in method.defaults.items()} | (overrides or {})
    params = method_class(name, method).Params
    try:
        return params.model_validate(values)
    except ValidationError as e:
        errors = e.errors()  # a misspelt name first: it is also why the right one is missing
        first = next((error for error in errors if error["type"] == "extra_forbidden"), errors[0])
        key = ".".join(str(p) for p in first["loc"]) or "?"
        if first["type"] == "extra_forbidden":
            known = ", ".join(params.model_fields) or "none"
            close = difflib.get_close_matches(key, list(params.model_fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = ("an override (--set, a suite's overrides)" if key in (overrides or {})
                     else f"benchmarks.yaml methods.{name}.defaults")
            raise UserError(f"method {name} has no hyperparameter {key!r}{hint}, given in {where}; "
                            f"its hyperparameters: {known}") from None
        raise UserError(f"method {name}, hyperparameter {key}: {first['msg']}") from None


def pair_mismatch(spec: Spec, method_id: str, pair: str) -> str | None:
    """Why a method cannot run on a pair, as far as the spec tells (`Objective.check_teachers`), or
    None: a multi-teacher pair takes only methods whose teacher-reading parts read every teacher, and
    those methods take only multi-teacher pairs."""
    classes = {name: method_class(name, spec.methods[name]) for name in method_parts(method_id)}
    if not spec.pairs[pair].more_teachers:
        multi = [name for name, cls in classes.items() if cls.multi_teacher]
        return f"{multi[0]} needs a multi-teacher pair" if multi else None
    single = [name for name, cls in classes.items() if cls.teacher_features and not cls.multi_teacher]
    return f"{single[0]} reads one teacher; the pair has several" if single else None


def runs_on_pair(spec: Spec, method_id: str, pair: str) -> bool:
    return pair_mismatch(spec, method_id, pair) is None


def validate_defaults(spec: Spec) -> None:
    for name in spec.methods:
        resolve_params(spec, name)


class Features(dict):
    """One network's features for a step (methods/base.py lists the names); reading one that no
    part declared, and so was never extracted, is named as such instead of a bare KeyError."""

    def __init__(self, features: dict, role: str):
        super().__init__(features)
        self.role = role

    def __missing__(self, key):
        raise UserError(f"a method read the {self.role} feature {key!r}, which no part declares: add it to the "
                        f"Distiller's {self.role}_features (extracted here: {', '.join(sorted(self))}; "
                        f"names: {', '.join(FEATURE_NAMES)}; docs/first-method.md)")


class Objective(nn.Module):
    """CE on the student's logits (weighted as the parts' code weighs it: `Distiller.ce_weight`) plus the
    loss terms of each Distiller; the teacher's mode (`Distiller.teacher_mode`); and the phases: every
    part's pre-phases in order, then MAIN_PHASE."""

    def __init__(self, distillers: dict[str, Distiller]):
        super().__init__()
        seen = {"ce": "the objective"}
        for name, part in distillers.items():
            for term in part.loss_terms:
                if term in seen:
                    raise UserError(f"methods {seen[term]} and {name} both give the loss term {term!r}; "
                                    "drop one of them from the combination")
                seen[term] = name
        self.parts = nn.ModuleDict(distillers)
        self.ce_weight = self._agreed("ce_weight", {name: d.ce_weight() for name, d in distillers.items()}, 1.0)
        self.teacher_mode = self._agreed("teacher_mode", {name: d.teacher_mode() for name, d in distillers.items()},
                                         "eval")
        self.phase_owner = {p.name: part for part in distillers.values() for p in part.pre_phases(1)}
        self.teacher_features = frozenset().union(*(d.teacher_features for d in distillers.values()))
        self.student_features = frozenset({"logits"}).union(*(d.student_features for d in distillers.values()))

    @staticmethod
    def _agreed(what: str, values: dict, default):
        """The one value the parts that set one give (the student's CE and the teacher's forward are
        shared), else `default`."""
        values = {name: value for name, value in values.items() if value is not None}
        if len(set(values.values())) > 1:
            raise UserError(f"the parts of this combination disagree on {what} ("
                            + ", ".join(f"{name}: {value}" for name, value in values.items())
                            + "): set them alike with --set, or run the parts alone")
        return next(iter(values.values()), default)

    @property
    def needs_teacher(self) -> bool:
        return bool(self.teacher_features)

    def phases(self, main_epochs: int) -> list[tuple[str, int]]:
        """[(phase name, epochs)], the pre-phases of every part, then (MAIN_PHASE, main_epochs)."""
        pre = [(p.name, p.epochs) for part in self.parts.values() for p in part.pre_phases(main_epochs)]
        return pre + [(MAIN_PHASE, main_epochs)]

    def phase_lr_scale(self, phase: str, main_epochs: int) -> float:
        """The multiplier of the recipe's base lr in a pre-phase (the main phase follows the recipe)."""
        scales = {p.name: p.lr_scale for part in self.parts.values() for p in part.pre_phases(main_epochs)}
        return scales.get(phase, 1.0)

    def set_epoch(self, epoch: int, main_epochs: int) -> None:
        for part in self.parts.values():
            part.set_epoch(epoch, main_epochs)

    @property
    def reads_indices(self) -> bool:
        """Whether a part reads the batch's positions in the training split (the engine gives them)."""
        return "indices" in self.student_features

    def bind_training_set(self, labels: torch.Tensor) -> None:
        for part in self.parts.values():
            part.bind_training_set(labels)

    def check_teachers(self, count: int) -> None:
        """A multi-teacher pair feeds only parts that read every teacher (or no teacher); a part that
        reads every teacher needs a pair of two or more."""
        single = [name for name, part in self.parts.items() if part.teacher_features and not part.multi_teacher]
        multi = [name for name, part in self.parts.items() if part.multi_teacher]
        if count > 1 and single:
            raise UserError(f"method {single[0]} reads one teacher, and this pair has {count}; "
                            "use a multi-teacher method (e.g. mt) or a single-teacher pair")
        if count < 2 and multi:
            raise UserError(f"method {multi[0]} learns from several teachers, and this pair has {count}; "
                            "use a multi-teacher pair (TEACHERxN-STUDENT)")

    def forward(self, student: dict, teachers: list[dict] | None, targets: torch.Tensor,
                phase: str = MAIN_PHASE) -> dict[str, torch.Tensor]:
        """teachers: one feature dict per teacher (None when no part reads a teacher)."""
        student = Features(student, "student")
        if teachers is not None:
            teachers = [Features(t, "teacher") for t in teachers]
        if phase != MAIN_PHASE:
            owner = self.phase_owner[phase]
            return owner.phase_losses(phase, student, self._for(owner, teachers), targets)
        losses = {"ce": self.ce_weight * F.cross_entropy(student["logits"], targets)}
        for part in self.parts.values():
            losses.update(part(student, self._for(part, teachers), targets))
        return losses

    @staticmethod
    def _for(part: Distiller, teachers: list[dict] | None):
        if teachers is None or part.multi_teacher:
            return teachers
        return teachers[0]

    def extra_parameters(self) -> int:
        return sum(d.extra_parameters() for d in self.parts.values())

    def extra_optimizers(self) -> list:
        return [opt for d in self.parts.values() for opt in d.extra_optimizers()]


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
