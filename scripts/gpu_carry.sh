#!/usr/bin/env bash
# Prepare what scripts/gpu_acceptance.sh needs on the lent GPU machine (Python 3.12, its own torch,
# no registry, no .git): the packages it lacks as wheels in .whl/ (its numpy and scipy serve scikit-learn), MNIST gzipped in
# .carry/mnist/, and the commit the tree is at in COMMIT ("<sha>", "+dirty" for uncommitted changes;
# harness/tracking/provenance.py reads it where .git is absent). All three are git-ignored: name them
# in the device tool's `carry` (the command is in scripts/gpu_acceptance.sh's header).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .carry/mnist
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection "typing-extensions>=4.16" platformdirs \
  tabulate scikit-learn==1.6.1 joblib==1.4.2 threadpoolctl  # the reports' tables; the digits cells of the method matrix
data=${KD_HARNESS_DATA:-../shared/data}
for f in "$data"/MNIST/raw/*-ubyte; do gzip -c "$f" >".carry/mnist/$(basename "$f").gz"; done
echo "$(git rev-parse HEAD)$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo +dirty)" >COMMIT
du -sh .whl .carry COMMIT
