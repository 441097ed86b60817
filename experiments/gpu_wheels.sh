#!/usr/bin/env bash
# Downloads the wheels the GPU check needs on a machine with JAX (CUDA), torch and Triton
# but no network (experiments/gpu_check.py's docstring). Run from anywhere, with network:
#
#   bash experiments/gpu_wheels.sh        # -> .gpu_wheels/ at the repo root (git-ignored)
#
# Then carry ".gpu_wheels" to the GPU machine; experiments/gpu_check.sh installs from it.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-python -m pip}"
DEST=.gpu_wheels
mkdir -p "$DEST"
# Pure Python: fla's kernels (fla-core; flash-linear-attention = its layers and models, which
# need transformers: downloaded as asked, not installed), einops, ml-collections, and this
# project's deps that a bare JAX + torch machine may lack (flax's import needs msgpack,
# PyYAML and rich; orbax-checkpoint and tensorstore are not needed: gpu_check imports no
# checkpointing, given a library whose `import sleep_consolidation` does not import Orbax).
$PIP download --no-deps -d "$DEST" \
  flash-linear-attention fla-core einops ml-collections \
  "flax>=0.12,<0.13" "optax>=0.2.6,<0.3" "absl-py>=2.1,<3" chex \
  treescope etils rich pygments markdown-it-py mdurl typing_extensions
# Binary: one wheel per CPython the GPU machine might run.
for py in 3.10 3.11 3.12 3.13; do
  $PIP download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version "$py" -d "$DEST" msgpack PyYAML
done
du -sh "$DEST"
ls -l "$DEST"
