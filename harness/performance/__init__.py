"""Speed: `harness bench`, the `harness perf` record, `list --estimate`, and the GPU acceptance check."""
