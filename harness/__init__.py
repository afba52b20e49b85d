"""kd-harness: a reproducibility benchmark harness for knowledge distillation."""

__version__ = "0.1.0"
