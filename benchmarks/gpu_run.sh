#!/usr/bin/env bash
# The benchmark grid on a lent GPU (e.g. one H100) with synthetic data only (no tensorflow-datasets, no network).
#   bash benchmarks/gpu_run.sh      # results in $OUT (or benchmarks/gpu_results/ when $OUT is unset)
# Needs JAX with CUDA, flax and optax (preinstalled there); torch rows are added when a CUDA torch imports.
# Phases write their own folders and each has a timeout, so a slow or crashing phase loses only itself;
# rows are saved after each measurement. Total wall time stays under ~9 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/gpu_results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the package without installing it
export XLA_PYTHON_CLIENT_PREALLOCATE=false
{ nvidia-smi || true; "$PY" -c "import jax, flax, optax; print(jax.__version__, flax.__version__, jax.devices())"; } \
  > "$OUT/env.txt" 2>&1
FW="jax"
"$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null && FW="jax torch"
B="$PY -m benchmarks.bench --images 9957 --steps 30 --repeats 5 --max-step-seconds 2"

# 1. the core grid: both models, b32/b256, 1 and 8 seeds, the three seed strategies, torch eager, bf16
timeout 240 $B --models base deep --batch-sizes 32 256 --seeds 1 8 --strategies map vmap unroll \
  --frameworks $FW --bf16 --out-dir "$OUT/grid" 2> "$OUT/grid.log"; echo "grid rc=$?" >> "$OUT/grid.log"
# 2. 32 seeds (auto strategy = map on GPU) and scan-vs-loop epochs over the full 9957 images
timeout 150 $B --models base deep --batch-sizes 32 256 --seeds 32 --strategies map --frameworks jax \
  --epochs --epoch-images 9957 --epoch-seeds 1 8 --epoch-models base deep --epoch-strategies map vmap \
  --out-dir "$OUT/seeds32_epochs" 2> "$OUT/seeds32_epochs.log"; echo "rc=$?" >> "$OUT/seeds32_epochs.log"
# 3. persistent compile cache: a small fit twice in fresh processes
timeout 90 $B --only-compile-cache-check --out-dir "$OUT/cache" 2> "$OUT/cache.log"; echo "rc=$?" >> "$OUT/cache.log"
tail -n 4 "$OUT"/*.log
