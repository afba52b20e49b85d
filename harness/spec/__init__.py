"""What a benchmark declares: benchmarks.yaml validated (spec.py, its sections in schema.py), cell ids (cells.py) and the run options (options.py)."""
