"""kd-harness: a reproducibility benchmark harness for knowledge distillation.

From Python: `from harness import run_cell, results` (see harness.api); both load lazily, so
that `import harness` stays cheap for the command line.
"""

__version__ = "0.1.0"

API = ("run_cell", "results", "UserError")


def __getattr__(name: str):
    if name in API:
        from harness import api

        return getattr(api, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
