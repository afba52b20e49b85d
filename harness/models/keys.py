"""Renaming a foreign checkpoint's keys to our module names (each model module's
`checkpoint_filter_fn`, timm's convention for loading weights saved by another implementation)."""

from __future__ import annotations

import re


def rename_keys(state_dict: dict, rules: list[tuple[str, str]]) -> dict:
    """Each key through every (regex pattern, replacement) of `rules`, in order."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out
