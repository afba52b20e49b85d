"""The plain student: cross-entropy only (added by the Objective), no teacher."""

from methods.base import Distiller


class Baseline(Distiller):
    def forward(self, student, teacher, targets):
        return {}
