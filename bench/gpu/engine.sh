#!/usr/bin/env bash
# One call on the GPU machine for the whole engine on CUDA: build (bench/gpu/engine/CMakeLists.txt, sm_90a),
# run the CUDA tests (the model against the CPU oracle on a reduced real SmolLM2, the attention kernels), then
# end-to-end benchmarks with `hipserve bench --device cuda`: the reduced SmolLM2, and random Llama-3.1-8B
# weights (prefill, and decode at depth up to 128K, HiP against dense). Writes logs and JSON under $OUT.
# Carried (git-ignored, made on the dev machine):
#   gpu-data/smollm2-4l.gguf   hipserve shrink -m models/SmolLM2-135M-Instruct.Q4_1.gguf -o ... --layers 4
#   gpu_deps/engine/           nlohmann headers, pcre2.h, libpcre2-8.a (from the Debian packages)
#   gpu_deps/googletest/       GoogleTest sources
#   gpu_act/                   real activations for the attention tests (bench/gpu/dump_activations)
# E2E=quick|full (default full), TESTS=0 skips the tests, E2E_PF=0 the cuDNN prefill A/B, ONLY_PF=1 stops after it,
# AB_VARS="VAR ..." adds an on/off A/B of each environment switch on 8B decode (HiP, depth 0 and 128K).
# With gpu_deps/engine/include/httplib.h (prepare_carry.sh)
# the real `serve` is built and checked on the GPU: greedy completions against `hipserve run`, a load test.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
ROOT=$(pwd)
BUILD=${BUILD:-build-engine-gpu}
log() { echo "== $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/engine_machine.txt"
log "build"
t0=$(date +%s)
if ! { cmake -S bench/gpu/engine -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release &&
       cmake --build "$BUILD" -j16 --target hipserve hipserve_cuda_tests; } > "$OUT/engine_build.log" 2>&1; then
  grep -E "error" "$OUT/engine_build.log" | head -30; tail -20 "$OUT/engine_build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s"
export HIPSERVE_MODEL="$ROOT/gpu-data/smollm2-4l.gguf" HIPSERVE_GPU_ACT="$ROOT/gpu_act"
rc=0
if [ "${TESTS:-1}" = 1 ]; then
  log "tests"
  timeout 240 "$BUILD/hipserve_cuda_tests" ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} 2>&1 | tee "$OUT/engine_tests.log" |
    grep -E "^\[  (FAILED|PASSED|  OK|SKIPPED) |step|worst|Failure|Expected|Which is|actual|error" | tail -n 120
  rc=${PIPESTATUS[0]}
  echo "tests exit code: $rc"
fi
HS="$BUILD/hipserve"
# A/B of a switch: 8B decode (HiP) at depth 0 and 128K, with the environment variable unset, then set to 1.
ab_decode() {  # title, variable, label
  log "decode: $1 (HiP, depth 0 and 128K)"
  for v in 0 1; do
    echo "[$3=$v] $(env $([ $v = 1 ] && echo "$2=1") timeout 200 "$HS" bench --random-weights llama3.1-8b -p 0 -n 32 \
      -d 0,131072 -r 3 2>&1 | grep -E 'tg32' | awk -F'|' '{print $7 $8}' | tr '\n' ' ')"
  done
}
# A/B of cuDNN's fused attention for dense prefill (8B; HIPSERVE_CUDNN=1 turns it on): --no-warmup first
# (includes building cuDNN's plans), then with the warm-up (plans cached). E2E_PF=0 skips it.
ab_prefill() {
  log "prefill: cuDNN dense attention on / off (8B, ${E2E_PF_P:-32768,131072})"
  echo "dense prefill attention: $(HIPSERVE_CUDNN=1 "$HS" bench --random-weights llama3.1-8b -p 512 -n 0 -r 1 2>&1 | grep -o 'dense prefill attention: .*')"
  for attn in dense hip; do
    for v in 1 0; do
      for w in --no-warmup ""; do
        echo "[$attn cudnn=$v ${w:-warm}] $(env $([ $v = 1 ] && echo HIPSERVE_CUDNN=1) timeout 240 "$HS" bench --random-weights llama3.1-8b \
          --attn $attn -p ${E2E_PF_P:-32768,131072} -n 0 -r 1 $w 2>&1 | grep -E '\| *pp' | awk -F'|' '{print $6 $7}' | tr '\n' ' ')"
      done
    done
  done
}
[ "${E2E_PF:-1}" = 1 ] && ab_prefill 2>&1 | tee "$OUT/prefill_cudnn.txt"
[ "${ONLY_PF:-0}" = 1 ] && exit $rc
log "greedy generation, GPU vs CPU (reduced SmolLM2; the CPU with exact fp32 activations, the oracle)"
oracle() { [ "$1" = cpu ] && echo "--matmul f32"; }
for d in cuda cpu; do
  timeout 60 "$HS" run --device $d $(oracle $d) -p "The capital of France is" -n 24 --temp 0 -c 512 2>"$OUT/run_$d.err" > "$OUT/run_$d.txt"
  echo "[$d] $(tr '\n' ' ' < "$OUT/run_$d.txt")"; grep -E "eval time" "$OUT/run_$d.err"
done
if [ -f gpu-data/text.txt ]; then
  log "eval and chat through the Sequence interface, GPU vs CPU (reduced SmolLM2)"
  for d in cuda cpu; do
    echo "[$d] $(timeout 120 "$HS" eval ppl -f gpu-data/text.txt -c 1024 --chunks 4 --device $d $(oracle $d) 2>/dev/null | head -1)"
    timeout 120 "$HS" eval passkey -c 1024 --depths 0.5 --trials 2 --device $d $(oracle $d) 2>/dev/null | tail -3
    printf 'Name a color.\n/exit\n' | timeout 60 "$HS" chat --device $d $(oracle $d) -n 12 --temp 0 -c 512 2>/dev/null | tr '\n' ' '; echo
  done
fi
if "$HS" serve --help 2>/dev/null | grep -q -- "--device cuda"; then  # the real server (not the stub)
  log "serve on the GPU (reduced SmolLM2): greedy completions, 4 at once, against hipserve run"
  want=$(timeout 60 "$HS" run --device cuda -p "The capital of France is" -n 16 --temp 0 --ignore-eos -c 1024 2>/dev/null)
  "$HS" serve --device cuda --port 0 -np 4 -c 1024 > "$OUT/serve_cuda.log" 2>&1 &
  spid=$!
  timeout 180 python3 - "$OUT/serve_cuda.log" "$want" <<'PY'
import http.client, json, re, sys, threading, time
log, want = sys.argv[1], sys.argv[2]
port = None
for _ in range(600):
    m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(log).read())
    if m:
        port = int(m.group(1)); break
    time.sleep(0.1)
if port is None:
    sys.exit("serve did not print its port within 60 s; log:\n" + open(log).read()[-2000:])
def call(method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request(method, path, json.dumps(body) if body else None, {"Content-Type": "application/json"})
    r = c.getresponse(); return r.status, r.read().decode()
for _ in range(600):
    if call("GET", "/health")[0] == 200: break
    time.sleep(0.1)
req = {"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0, "ignore_eos": True}
out = [None] * 4
def one(i): out[i] = call("POST", "/v1/completions", req)
ts = [threading.Thread(target=one, args=(i,)) for i in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
texts = ["The capital of France is" + json.loads(b)["choices"][0]["text"] if s == 200 else "HTTP %d %s" % (s, b) for s, b in out]
print("run :", repr(want)); print("serve:", repr(texts[0]))
print("4 concurrent greedy requests equal hipserve run:", all(t == want for t in texts))
print("bad request:", call("POST", "/v1/completions", {"prompt": "x", "max_tokens": 10**9})[0])
m = call("GET", "/metrics")[1]
print("\n".join(l for l in m.splitlines() if l.startswith("hipserve_") and ("kv" in l or "running" in l or "bit_exact" in l)))
PY
  kill -TERM $spid; wait $spid; echo "serve exit code: $?"; grep -E "ready on|error" "$OUT/serve_cuda.log" | head -5
  log "serve load test, 1 vs 4 streams (reduced SmolLM2), GPU then CPU"
  for d in cuda cpu; do
    echo "[$d]"; timeout 200 python3 tools/load_test.py --hipserve "$HS" --server-args "-np 4 -c 1024 --device $d" --sweep 1,4 \
      --requests 16 --max-tokens 64 --json "$OUT/serve_load_$d.json" 2>&1 | tail -14
  done
fi
log "bench: reduced SmolLM2 on the GPU"
timeout 120 "$HS" bench -p 512,4096 -n 128 -r 3 2>&1 | tail -8
if [ "${E2E:-full}" = full ]; then
  log "bench: random llama3.1-8b, HiP vs dense"
  for attn in hip dense; do
    timeout 300 "$HS" bench --random-weights llama3.1-8b --attn $attn -p ${E2E_P:-8192,32768} -n ${E2E_N:-32} -d ${E2E_D:-0,32768,131072} -r ${E2E_R:-2} --json \
      > "$OUT/e2e_8b_$attn.json" 2> "$OUT/e2e_8b_$attn.err"
    echo "[$attn] rc=$?"; tail -3 "$OUT/e2e_8b_$attn.err"
    python3 - "$OUT/e2e_8b_$attn.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    extra = ""
    if r.get("n_gen"):
        p = r.get("profile_ms_per_token", {})
        extra = " | %.0f%% of bound %.1f | gemm %.3f attn %.3f mask %.3f other %.3f ms/tok" % (
            100 * r["fraction_of_bound"], r["weight_read_bound_ts"], p.get("gemm", 0), p.get("attention", 0),
            p.get("hip_mask", 0), p.get("other", 0))
    print("%-14s %10.2f ± %6.2f t/s%s" % (r["test"], r["avg_ts"], r["stddev_ts"], extra))
PY
  done
  log "decode GEMVs: ours vs cuBLAS (HiP, depth 0)"
  for v in 0 1; do
    if [ $v = 1 ]; then export HIPSERVE_CUDA_NO_GEMV=1; fi
    echo "[no_gemv=$v] $(timeout 120 "$HS" bench --random-weights llama3.1-8b -p 0 -n 32 -r 3 2>&1 | grep -E 'tg32|of that bound')"
  done
  unset HIPSERVE_CUDA_NO_GEMV
  ab_decode "programmatic dependent launch on / off" HIPSERVE_CUDA_NO_PDL no_pdl
  ab_decode "one-row RMSNorm / RoPE on 1024 threads / 8 CTAs vs one 256-thread CTA" HIPSERVE_CUDA_NARROW_SMALL narrow_small
fi
for ab in ${AB_VARS:-}; do ab_decode "$ab" "$ab" "$ab"; done
if [ -n "${GEMV_SHAPES:-}" ]; then
  log "decode GEMV shapes (rows per warp, loads per lane per step), HiP, depth 0"
  for sh in $GEMV_SHAPES; do
    echo "[gemv $sh] $(HIPSERVE_CUDA_GEMV=$sh timeout 120 "$HS" bench --random-weights llama3.1-8b -p 0 -n 64 -r 3 2>&1 | grep -E 'tg64' | awk -F'|' '{print $7 $8}')"
  done
fi
exit $rc
