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
# issue 40's DKD question, on baselines2019_control's cell: beta 8 as it ran, beta 2, lr 0.01
harness audit --from results/baselines2019_control/runs.jsonl \
  --suite dkd_mnist_settle dkd_mnist_settle_beta2 dkd_mnist_settle_lr001 --out results/baselines2019_control/DKD-SETTLE.md
