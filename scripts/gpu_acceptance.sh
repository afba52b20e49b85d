#!/usr/bin/env bash
# The GPU acceptance check (issue #27; targets in ../shared/GPU.md), from a source checkout:
#   bash scripts/gpu_acceptance.sh                  on a lent GPU machine: writes results/perf/gpu/
#   bash scripts/gpu_acceptance.sh --device cpu OUT the same check, small, on a CPU (CI runs it)
# The lent machine has torch, timm, pandas, yaml but not pydantic or platformdirs: run
# scripts/gpu_carry.sh here first, and name .whl and .carry in the device tool's `carry`.
set -uo pipefail
cd "$(dirname "$0")/.."
device=cuda; out=results/perf/gpu
if [ "${1:-}" = "--device" ]; then device=$2; out=${3:-$out}; fi
if ! python3 -c "import pydantic, platformdirs" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
data=()
if ls .carry/mnist/*.gz >/dev/null 2>&1; then  # MNIST travels gzipped (11 MB instead of 53)
  mkdir -p /tmp/data/MNIST/raw
  for f in .carry/mnist/*.gz; do gunzip -c "$f" >"/tmp/data/MNIST/raw/$(basename "$f" .gz)"; done
  data=(--data-root /tmp/data)
elif [ -n "${KD_HARNESS_DATA:-}" ] && [ -d "$KD_HARNESS_DATA/MNIST/raw" ]; then
  data=(--data-root "$KD_HARNESS_DATA")
fi
mkdir -p "$out"
sampler=
if [ "$device" = cuda ] && command -v nvidia-smi >/dev/null; then  # utilisation, every 500 ms
  nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw \
    --format=csv -lms 500 >"$out/nvidia_smi.csv" 2>/dev/null &
  sampler=$!
fi
python3 -m harness.performance.acceptance --device "$device" --out "$out" "${data[@]}"
code=$?
if [ -n "$sampler" ]; then
  kill "$sampler" 2>/dev/null
  python3 - "$out/nvidia_smi.csv" <<'PY' >>"$out/ACCEPTANCE.md"
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))[1:]
util = [float(r[1].split()[0]) for r in rows if len(r) > 1 and r[1].strip().split()[0].replace('.', '').isdigit()]
if util:
    print(f"\n## GPU utilisation (nvidia-smi, every 500 ms)\n\nsamples {len(util)}, mean {sum(util)/len(util):.0f}%, "
          f"max {max(util):.0f}%; share of samples at >= 50%: {sum(u >= 50 for u in util)/len(util):.0%}")
PY
fi
exit $code
