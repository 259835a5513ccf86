#!/usr/bin/env bash
# Nsight Compute looks at single launches of the HiP kernels (GPU machine, Firecracker runtime: ncu reads the
# counters there; --clock-control none leaves the clocks alone). Writes $OUT/ncu_*.txt.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
BUILD=${BUILD:-build-gpu}
cmake -S bench/gpu -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHS_GTEST_SRC="$(pwd)/gpu_deps/googletest" > "$OUT/build.log" 2>&1 &&
  cmake --build "$BUILD" -j16 --target hipserve_gpu_bench >> "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
SECTIONS="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats --section SourceCounters"
prof() {  # name, kernel regex, launches to skip, benchmark arguments
  timeout 150 ncu --clock-control none -k "regex:$2" --launch-skip "$3" --launch-count 1 $SECTIONS \
    "$BUILD/hipserve_gpu_bench" $4 > "$OUT/ncu_$1.txt" 2>&1
  grep -E "Duration|Memory Throughput|DRAM Throughput|L2 Cache Throughput|Compute \(SM\)|Achieved Occupancy|Theoretical Occupancy|Stall|Warp Cycles Per Issued|Issue Slots Busy|Registers Per|Block Limit|L1/TEX Hit|L2 Hit" "$OUT/ncu_$1.txt" | head -40
}
# The first launch of each kernel: --quick starts with the 32K prefill (b_q 32: the default attention, then the
# per-head kernel); --decode-only starts with a decode refresh, then the cached decode steps.
echo "== estimate (prefill, 32K)"; prof est_prefill hip_estimate 0 --quick
echo "== sparse attention, GQA-shared kernel: the default (prefill, 32K)"; prof attn_prefill_gqa hip_gqa_prefill_kernel 0 --quick
echo "== sparse attention, per-head kernel (prefill, 32K)"; prof attn_prefill hip_prefill_kernel 0 --quick
echo "== estimate (decode refresh, 128K)"; prof est_decode hip_estimate 0 --decode-only
echo "== hip decode step (128K)"; prof decode hip_decode_kernel 0 --decode-only
