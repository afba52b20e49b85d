"""What a recipe asks of the optimisation: its optimizer and its per-epoch learning-rate schedule."""

from __future__ import annotations

import math

import torch

from harness.spec.schema import RecipeSpec


def build_optimizer(recipe: RecipeSpec, params) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.RMSprop(params, lr=recipe.lr, alpha=recipe.alpha, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay)


def lr_factor(recipe: RecipeSpec, epoch: int) -> float:
    """Multiplier of the base lr during `epoch` (per-epoch schedules)."""
    s = recipe.schedule
    if s.kind == "multistep":
        return s.gamma ** sum(epoch >= round(m * recipe.epochs) for m in s.milestones)
    if s.kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / recipe.epochs))
    return 1.0
