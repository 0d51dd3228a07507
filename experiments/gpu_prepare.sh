#!/usr/bin/env bash
# Prepare, on a machine with network access (the CPU machine), what the GPU machine lacks, in
# the git-ignored folder .gpu/ that the GPU run carries (docs/gpu.md):
#   .gpu/wheels/               pyro-ppl, pyro-api and tomli-w as wheels (pure Python; the GPU
#                              machine has torch, numpy, opt-einsum, tqdm, scikit-learn, matplotlib)
#   .gpu/binarized_mnist.npz   binarized MNIST, copied from $MNIST, ../shared/data/ or shared/data/
# The versions are the ones installed here (the ones the tests ran with), else the newest.
#
#   bash experiments/gpu_prepare.sh            # then run the command in docs/gpu.md, carry = [".gpu"]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
mkdir -p .gpu/wheels
rm -f .gpu/wheels/*.whl  # one version of each: two would stop the install there
specs=()
for name in pyro-ppl pyro-api tomli-w; do
  version=$("$python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  specs+=("$name${version:+==$version}")
done
"$python" -m pip download --quiet --no-deps --only-binary=:all: -d .gpu/wheels "${specs[@]}"
copied=""
for file in "${MNIST:-}" ../shared/data/binarized_mnist.npz shared/data/binarized_mnist.npz; do
  if [ -n "$file" ] && [ -f "$file" ]; then
    cp "$file" .gpu/binarized_mnist.npz
    copied=$file
    break
  fi
done
ls -l .gpu/wheels
if [ -n "$copied" ]; then
  echo "binarized MNIST: copied $copied to .gpu/binarized_mnist.npz"
else
  echo "binarized MNIST: not found (set MNIST=/path/to/binarized_mnist.npz); the check will use random stand-in images" >&2
fi
du -sh .gpu
