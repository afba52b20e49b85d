#!/usr/bin/env bash
# Re-render every committed results/<suite>/ report, and results/CLAIMS.md, from the committed run
# ledgers (docs/ledger.md); no MLflow store is read. tests/test_results.py checks that the committed
# files are what this renders.
set -euo pipefail
cd "$(dirname "$0")/.."
ledgers=(results/*/runs.jsonl)
for ledger in "${ledgers[@]}"; do
  suite=$(basename "$(dirname "$ledger")")
  harness report --from "$ledger" --suite "$suite" --out "results/$suite/"
  if [ -f "results/$suite/CLAIMS.md" ]; then  # a suite's own audit beside its report
    harness audit --from "$ledger" --suite "$suite" --out "results/$suite/CLAIMS.md"
  fi
done
harness audit --from "${ledgers[@]}" --out results/CLAIMS.md
