#!/usr/bin/env bash
# Rewrites harness/compat_seed.json: `harness list`'s answers for every built-in cell, computed afresh,
# which a fresh runs home starts from (a cold list in about a second instead of a dozen). Run it after
# changing benchmarks.yaml, a model, the probe or a method; tests/test_compat.py fails while it is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
KD_HARNESS_SPEC= KD_HARNESS_SPEC_EXTRA= python -c \
  'from harness.running.compat import write_seed; from harness.spec.spec import load_spec; write_seed(load_spec(None))'
git diff --stat -- harness/compat_seed.json
