"""The runs store: every MLflow call (tracking.py) and what a run records about where it ran (provenance.py)."""
