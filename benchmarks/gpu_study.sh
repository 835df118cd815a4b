#!/usr/bin/env bash
# The study on a lent GPU, from a compact export, in one device call, without tensorflow-datasets.
#
#   python -m bccd_jax.data export --dataset augmented --data-dir .../dataset2-master --out gpu_data/aug120.npz
#   DATA=gpu_data/aug120.npz bash benchmarks/gpu_study.sh        # on the GPU; outputs under $OUT
#
# Phases, each with its own timeout and log ($OUT/<phase>.log, wall times in $OUT/phases.txt):
#   optimizers        experiments.optimizers, 3 optimizers x OPT_SEEDS (8) seeds x EPOCHS (50), fresh caches:
#                     the wall time issue 6 asks for (goal <= 60 s on one H100)
#   optimizers_again  the same command in a fresh process: what the persistent compile cache saves
#   architecture      base / expanded / expanded_centered / deep, SEEDS (5) seeds x EPOCHS: the study's ~85 %
#   report            experiments.report over the phases' run folders -> $OUT/results
# PHASES selects and orders them (e.g. PHASES="regularization report" for a second call). Checkpoints
# are deleted at the end so the run folders (metrics, configs, figures) fit the way back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/gpu_results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
DATA="${DATA:?set DATA to a compact export file (python -m bccd_jax.data export ...)}"
DATASET="${DATASET:-augmented}"
IMAGE="${IMAGE:-120 160}"
SEEDS="${SEEDS:-5}"
OPT_SEEDS="${OPT_SEEDS:-8}"
EPOCHS="${EPOCHS:-50}"
PHASES="${PHASES:-optimizers optimizers_again architecture report}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the package without installing it
export XLA_PYTHON_CLIENT_PREALLOCATE=false
CACHE_ROOT="${CACHE_ROOT:-${TMPDIR:-/tmp}/bccd_jax_gpu_cache}"  # decoded arrays (~720 MB at 120x160): not under $OUT
rm -rf "$CACHE_ROOT"  # fresh data and compile caches, so the first optimizers phase pays for both
export BCCD_JAX_CACHE="$CACHE_ROOT/data" BCCD_JAX_COMPILE_CACHE="$CACHE_ROOT/jax"
RUNS="$OUT/runs"
COMMON=(--dataset "$DATASET" --data-dir "$DATA" --image-size $IMAGE --out "$RUNS" --no-progress)
{ nvidia-smi -L || true; "$PY" -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())"; } \
  > "$OUT/env.txt" 2>&1

phase() {  # phase NAME TIMEOUT_S CMD...: run, log, record rc and wall time
  local name=$1 limit=$2; shift 2
  local t0=$EPOCHREALTIME
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc wall_s=$(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $t0}") cmd: $*" >> "$OUT/phases.txt"
}

for p in $PHASES; do
  case $p in
    optimizers|optimizers_again)
      phase "$p" 200 "$PY" -m experiments.optimizers "${COMMON[@]}" --seeds "$OPT_SEEDS" --epochs "$EPOCHS" ;;
    architecture)
      phase "$p" 240 "$PY" -m experiments.architecture "${COMMON[@]}" --parts depth --seeds "$SEEDS" --epochs "$EPOCHS" ;;
    regularization)
      phase "$p" 400 "$PY" -m experiments.regularization "${COMMON[@]}" --seeds 3 --epochs "$EPOCHS" ;;
    report)
      # one run folder per experiment: the first optimizers run (the second repeats it for the cache)
      dirs=()
      for exp in optimizers regularization architecture vgg; do
        d=$(ls -d "$RUNS/$exp"/*/ 2>/dev/null | head -n 1)
        [ -n "$d" ] && dirs+=("$d")
      done
      phase report 120 "$PY" -m experiments.report "${dirs[@]}" --out "$OUT/results" ;;
    *) echo "unknown phase $p" >> "$OUT/phases.txt" ;;
  esac
done
find "$RUNS" -type d -name checkpoints -prune -exec rm -rf {} + 2>/dev/null
cat "$OUT/phases.txt"
