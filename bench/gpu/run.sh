#!/usr/bin/env bash
# One call on the GPU machine: build (for sm_90a, there), run the GPU tests, run our benchmark and torch SDPA on
# the same card, and write $OUT/gpu_bench.json, $OUT/gpu_bench.md and the logs. Run from the repository root:
#   OUT=/tmp/out bench/gpu/run.sh            (OUT defaults to ./out)
# Carried along (git-ignored, prepared on the dev machine): gpu_deps/googletest (GoogleTest sources, used when
# the system has none) and gpu_act/ (real SmolLM2 activations from bench/gpu/dump_activations).
# QUICK=1 runs a shorter benchmark (32K prefill only).
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
ROOT=$(pwd)
BUILD=${BUILD:-build-gpu}
log() { echo "== $*"; }
{
  log "machine"; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  nvcc --version | tail -1; cmake --version | head -1; date -u
} 2>&1 | tee "$OUT/machine.txt"

log "build"
GT=()
[ -d gpu_deps/googletest ] && GT=(-DHS_GTEST_SRC="$ROOT/gpu_deps/googletest")
t0=$(date +%s)
if ! { cmake -S bench/gpu -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release "${GT[@]}" &&
       cmake --build "$BUILD" -j16; } > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s"

log "tests"
HIPSERVE_GPU_ACT="$ROOT/gpu_act" timeout 200 "$BUILD/hipserve_cuda_tests" ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} \
  2>&1 | tee "$OUT/tests.log" | grep -E "^\[  (FAILED|PASSED|  OK|SKIPPED) |rel error|recall|Failure|Expected|Which is|actual|error" | tail -n 150
test_rc=${PIPESTATUS[0]}
echo "tests exit code: $test_rc"

[ "${SKIP_BENCH:-0}" = 1 ] && exit 0
log "benchmark (ours)"
timeout 170 "$BUILD/hipserve_gpu_bench" --json "$OUT/ours.jsonl" ${QUICK:+--quick} 2>&1 | tee "$OUT/bench.log"
log "benchmark: decode GEMVs against the card's read bandwidth"
timeout 120 "$BUILD/hipserve_gemv_bench" --json "$OUT/gemv.jsonl" 2>&1 | tee "$OUT/gemv.log"
log "benchmark (torch SDPA)"
TS="32768 131072 262144"; [ -n "${QUICK:-}" ] && TS=32768
[ "${SKIP_SDPA:-0}" = 1 ] || PYTHONUNBUFFERED=1 timeout 150 python3 bench/gpu/sdpa_bench.py --json "$OUT/sdpa.jsonl" --T $TS 2>&1 | tee "$OUT/sdpa.log"
python3 bench/gpu/report.py --machine "$OUT/machine.txt" --out-json "$OUT/gpu_bench.json" --out-md "$OUT/gpu_bench.md" \
  "$OUT/ours.jsonl" "$OUT/sdpa.jsonl" && cat "$OUT/gpu_bench.md"
exit $test_rc
