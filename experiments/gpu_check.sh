#!/usr/bin/env bash
# The GPU check in one go on a machine without network access (what it measures:
# experiments/gpu_check.py).
#
#   bash experiments/gpu_check.sh [OUT_DIR] [extra gpu_check flags]   # default benchmarks/gpu
#
# Installs, offline, only the packages that do not import yet, from the wheels in
# .gpu_wheels/ (made by experiments/gpu_wheels.sh and carried along), into a private
# --target directory on PYTHONPATH (nothing else on the machine changes); then runs
# experiments.gpu_check under `timeout` (GPU_CHECK_TIMEOUT, default 560 s; the check itself
# starts no new part after --budget_s=480 s and rewrites its report after each part).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/gpu}"
shift || true
PY="${PYTHON:-python}"
WHEELS="${GPU_WHEELS:-.gpu_wheels}"
SITE="${GPU_SITE:-/tmp/sleep_consolidation_site}"
mkdir -p "$OUT" "$SITE"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # leave room for torch (the fla part)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}:$SITE"

missing=()
need() {  # need MODULE PACKAGE: queue PACKAGE if MODULE does not import
  "$PY" -c "import $1" >/dev/null 2>&1 || missing+=("$2")
}
need absl absl-py
need msgpack msgpack
need yaml PyYAML
need rich rich
need pygments pygments
need markdown_it markdown-it-py
need mdurl mdurl
need typing_extensions typing_extensions
need treescope treescope
need etils etils
need chex chex
need flax flax
need optax optax
need ml_collections ml-collections
need einops einops
# fla's kernels only where torch and Triton are there (they are not carried).
if "$PY" -c "import torch, triton" >/dev/null 2>&1; then
  need fla.ops.gated_delta_rule fla-core
fi
if ((${#missing[@]})); then
  echo "gpu_check.sh: installing from $WHEELS: ${missing[*]}"
  if [ -d "$WHEELS" ]; then
    "$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps --target "$SITE" \
      "${missing[@]}" || echo "gpu_check.sh: some installs failed (see above); going on"
  else
    echo "gpu_check.sh: no $WHEELS directory (run experiments/gpu_wheels.sh and carry it)"
  fi
fi
"$PY" - <<'PYEOF'
import jax
print("JAX", jax.__version__, "backend", jax.default_backend(), "devices", jax.devices())
PYEOF
timeout "${GPU_CHECK_TIMEOUT:-560}" "$PY" -m experiments.gpu_check --out="$OUT" "$@"
rc=$?
echo "gpu_check.sh: exit $rc; report in $OUT/gpu_check.md and $OUT/gpu_check.json"
exit $rc
