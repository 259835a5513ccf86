// GPU attention benchmark, one layer, batch 1: H=32 query heads, 8 KV heads, head dim 128, bf16, random
// normal inputs (never zeros). Times with CUDA events, median of many repetitions after warm-up; decode loops
// run as CUDA graphs. Prints a table and writes JSON lines (one object per measurement) to --json.
//
//   hipserve_gpu_bench [--json FILE] [--quick] [--decode-only | --no-decode | --attn-only]
//
// Measurements (name, T):
//   dense_prefill_v0        our FlashAttention-2 style causal prefill (the name from when it had variants;
//                           report.py and the earlier results use it)
//   hip_estimate / hip_attention_v{0,3} / hip_prefill   HiP k=512 prefill: mask estimation, sparse attention
//                           (v0 the default: the GQA-shared kernel at b_q 32; v3 the per-head kernel, the
//                           reference it is measured against), both; hip_bq64_* the same with b_q 64, b_sq 4
//                           (the per-head kernel is the default there: v0 only)
//   hip_estimate_v0         the estimation at 128K, quick too (_again: once more last, the spread); then
//                           hip_attention_v{3,0} over its mask at 128K (v3 again last) and hip_prefill
//                           (estimate + default attention) at 128K
//   dense_decode            split-K decode of the last position, per step (graph of 8 steps)
//   hip_decode_cached       HiP decode step over a cached mask
//   hip_decode_refresh      one mask refresh (estimate, n_q = 1), _again once more (run-to-run spread)
//   hip_decode_amortized    graph of 8 steps: 1 refresh + 8 attention steps, per step
// (The variants compared in earlier runs and removed: docs/GPU.md, bench/gpu/results/.)
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backends/cuda/attention_cuda.h"

using namespace hs::cuda;

#define CHECK(expr)                                                                               \
  do {                                                                                            \
    const cudaError_t e_ = (expr);                                                                \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

// Approximately normal bf16 values (sum of 4 hashed uniforms, unit variance) times `scale`.
__global__ void fill_random_bf16(uint16_t* p, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int r = 0; r < 4; ++r) {
      uint32_t x = uint32_t(i) * 0x9E3779B1u ^ uint32_t(i >> 32) * 0x85EBCA77u ^ (seed + r * 0x27D4EB2Fu);
      x ^= x >> 15, x *= 0x2C1B3C6Du, x ^= x >> 12, x *= 0x297A2D39u, x ^= x >> 15;
      s += float(x) * (1.0f / 4294967296.0f) - 0.5f;
    }
    const float v = s * 1.7320508f * scale;  // var of a sum of 4 U(-1/2,1/2) is 1/3
    p[i] = uint16_t(__float_as_uint(v) >> 16);
  }
}

// Keys with attention locality (as real text has, and random keys lack): per (KV head, dim) an AR(1) walk over
// positions, x_p = 0.98 x_{p-1} + 0.2 n, plus 0.3 n of noise per key. One thread per (head, dim) chain.
__global__ void fill_smooth_keys(uint16_t* k, int n_kv_head, int T, int D, uint32_t seed) {
  const int chain = blockIdx.x * blockDim.x + threadIdx.x;
  if (chain >= n_kv_head * D) return;
  const int g = chain / D, d = chain % D;
  uint32_t st = seed ^ (uint32_t(chain) * 0x9E3779B1u);
  auto normal = [&]() {
    float s = 0.f;
    for (int r = 0; r < 4; ++r) {
      st ^= st << 13, st ^= st >> 17, st ^= st << 5;
      s += float(st) * (1.0f / 4294967296.0f) - 0.5f;
    }
    return s * 1.7320508f;
  };
  float x = normal();
  for (int p = 0; p < T; ++p) {
    x = 0.98f * x + 0.2f * normal();
    const float v = x + 0.3f * normal();
    k[(int64_t(g) * T + p) * D + d] = uint16_t(__float_as_uint(v) >> 16);
  }
}

struct Json {
  FILE* f = nullptr;
  void row(const char* name, int T, double ms_med, double ms_min, int reps, double tflops) {
    std::printf("%-26s T=%7d  median %10.4f ms  min %10.4f ms  (%3d reps)%s", name, T, ms_med, ms_min, reps,
                tflops > 0 ? "" : "\n");
    if (tflops > 0) std::printf("  %6.1f TFLOP/s\n", tflops);
    if (f)
      std::fprintf(f, "{\"name\": \"%s\", \"T\": %d, \"ms_median\": %.6f, \"ms_min\": %.6f, \"reps\": %d, \"tflops\": %.2f}\n",
                   name, T, ms_med, ms_min, reps, tflops);
  }
};

template <class Fn>
std::pair<double, double> time_ms(Fn fn, int warmup, int reps, cudaStream_t s) {
  for (int i = 0; i < warmup; ++i) fn();
  CHECK(cudaStreamSynchronize(s));
  std::vector<double> t;
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < reps; ++i) {
    CHECK(cudaEventRecord(a, s));
    fn();
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t[0]};
}

struct Problem {
  int H = 32, Hkv = 8, D = 128, T = 0;
  uint16_t *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr;
  explicit Problem(int T_) : T(T_) {
    const int64_t nq = int64_t(T) * H * D, nkv = int64_t(T) * Hkv * D;
    CHECK(cudaMalloc(&q, nq * 2));
    CHECK(cudaMalloc(&out, nq * 2));
    CHECK(cudaMalloc(&k, nkv * 2));
    CHECK(cudaMalloc(&v, nkv * 2));
    fill_random_bf16<<<1024, 256>>>(q, nq, 1u + T, 1.5f);
    fill_random_bf16<<<1024, 256>>>(k, nkv, 2u + T, 1.0f);
    fill_random_bf16<<<1024, 256>>>(v, nkv, 3u + T, 1.0f);
    CHECK(cudaGetLastError());
    CHECK(cudaMemset(out, 0xFF, nq * 2));
    CHECK(cudaDeviceSynchronize());
  }
  ~Problem() {
    cudaFree(q);
    cudaFree(k);
    cudaFree(v);
    cudaFree(out);
  }
  // Prefill of all T rows, or the decode row at position T - 1 (q row 0 used as the query).
  AttnParams params(bool decode) const {
    AttnParams p;
    p.q = q, p.k = k, p.v = v, p.out = out;
    p.q_stride = p.out_stride = int64_t(H) * D;
    p.kv_head_stride = int64_t(T) * D;
    p.kv_pos_stride = D;
    p.n_q = decode ? 1 : T;
    p.n_kv = T;
    p.q_pos0 = decode ? T - 1 : 0;
    p.n_head = H, p.n_kv_head = Hkv, p.head_dim = D;
    p.scale = 1.0f / std::sqrt(float(D));
    return p;
  }
};

// Device storage of HiP masks for n_head heads x n_qblocks query blocks (K_b blocks each), freed with it.
struct MaskBuffers {
  HipMaskDev dev;
  MaskBuffers(int n_head, int n_qblocks, int Kb) {
    CHECK(cudaMalloc(&dev.blocks, int64_t(n_head) * n_qblocks * Kb * 4));
    CHECK(cudaMalloc(&dev.counts, int64_t(n_head) * n_qblocks * 4));
    dev.n_qblocks = n_qblocks;
    dev.kb_stride = Kb;
  }
  MaskBuffers(const MaskBuffers&) = delete;
  ~MaskBuffers() {
    cudaFree(dev.blocks);
    cudaFree(dev.counts);
  }
};

double causal_flops(int T, int H, int D) { return 4.0 * 0.5 * double(T) * double(T) * H * D; }

int main(int argc, char** argv) {
  Json js;
  bool quick = false, decode_only = false, no_decode = false, attn_only = false;
  std::vector<int> prefill_T = {32768, 131072, 262144};
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) js.f = std::fopen(argv[++i], "w");
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    if (!std::strcmp(argv[i], "--decode-only")) decode_only = true;
    if (!std::strcmp(argv[i], "--no-decode")) no_decode = true;
    if (!std::strcmp(argv[i], "--attn-only")) attn_only = true;
  }
  if (quick) prefill_T = {32768};
  std::printf("cuDNN attention: %s\n", cudnn_attention_status().c_str());
  if (decode_only) prefill_T.clear();
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  HipParams hip;  // paper defaults: k 512, b_q 32, b_k 2, b_sq 2, b_sk 1, sink 16, window 256, refresh 8
  const int Kb = hip.k / hip.block_k;

  // --attn-only: HiP prefill attention alone (the default estimator's mask), the per-head kernel (v3) against
  // the default (v0: the GQA-shared kernel), 32K and 128K, interleaved twice (the spread).
  if (attn_only) {
    for (int T : {32768, 131072}) {
      Problem pr(T);
      const AttnParams p = pr.params(false);
      const int nqb = (T + hip.block_q - 1) / hip.block_q;
      const MaskBuffers mbuf(pr.H, nqb, Kb);
      const HipMaskDev& mask = mbuf.dev;
      CHECK(hip_estimate_mask(hip, p, mask, s));
      const int vs[] = {3, 0, 3, 0};
      const int reps = T > 32768 ? 10 : 30;
      for (int i = 0; i < 4; ++i) {
        const auto att = time_ms([&] { CHECK(hip_attention_prefill(hip, p, mask, s, vs[i])); }, 2, reps, s);
        js.row(("hip_attention_v" + std::to_string(vs[i]) + (i >= 2 ? "_again" : "")).c_str(), T, att.first, att.second, reps, 0);
      }
    }
    return 0;
  }

  for (int T : prefill_T) {
    Problem pr(T);
    const AttnParams p = pr.params(false);
    const int big = T >= 131072;
    {
      const int reps = big ? (T > 131072 ? 3 : 5) : 20;
      const auto [med, mn] = time_ms([&] { CHECK(attention_prefill_dense(p, s)); }, 1, reps, s);
      js.row("dense_prefill_v0", T, med, mn, reps, causal_flops(T, pr.H, pr.D) / (med * 1e-3) / 1e12);
    }
    if (cudnn_attention_available()) {  // cuDNN's fused attention; its first call of a shape builds the plan
      const auto t0 = std::chrono::steady_clock::now();
      CHECK(attention_prefill_dense_cudnn(p, s));
      CHECK(cudaStreamSynchronize(s));
      const double build_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::printf("cuDNN plan build + first run at T=%d: %.1f ms\n", T, build_ms);
      const int reps = big ? (T > 131072 ? 3 : 5) : 20;
      const auto [med, mn] = time_ms([&] { CHECK(attention_prefill_dense_cudnn(p, s)); }, 1, reps, s);
      js.row("dense_prefill_cudnn", T, med, mn, reps, causal_flops(T, pr.H, pr.D) / (med * 1e-3) / 1e12);
      // The engine's case: the last chunk of 2048 rows after T - 2048 cached keys (cuDNN: the padded plan
      // with the bottom-right diagonal), ours against cuDNN.
      AttnParams c = p;
      c.n_q = 2048;
      c.q_pos0 = T - 2048;
      const int creps = big ? 10 : 30;
      const auto o = time_ms([&] { CHECK(attention_prefill_dense(c, s)); }, 1, creps, s);
      js.row("dense_chunk2048_last_v0", T, o.first, o.second, creps, 0);
      const auto t1 = std::chrono::steady_clock::now();
      CHECK(attention_prefill_dense_cudnn(c, s));
      CHECK(cudaStreamSynchronize(s));
      std::printf("cuDNN plan build + first run, chunk at T=%d: %.1f ms\n", T,
                  std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count());
      const auto cu = time_ms([&] { CHECK(attention_prefill_dense_cudnn(c, s)); }, 1, creps, s);
      js.row("dense_chunk2048_last_cudnn", T, cu.first, cu.second, creps, 0);
    }
    // HiP with the paper defaults (b_q 32, b_sq 2: 16 sampled rows) and, for comparison, b_q 64 with b_sq 4
    // (also 16 sampled rows; half the query blocks, so about half the estimation work).
    // (b_q 64 with b_sq 2, 32 sampled rows, the official v1.1 default, needs an estimator of more than 16 rows.)
    for (const auto& [bq, sq] : {std::pair{32, 2}, std::pair{64, 4}}) {
      HipParams h = hip;
      h.block_q = bq;
      h.stride_q = sq;
      const std::string pre = bq == 32 ? "hip" : "hip_bq64";
      const int nqb = (T + h.block_q - 1) / h.block_q;
      const MaskBuffers mbuf(pr.H, nqb, Kb);
      const HipMaskDev& mask = mbuf.dev;
      const int reps = big ? 10 : 30;
      const auto est = time_ms([&] { CHECK(hip_estimate_mask(h, p, mask, s)); }, 2, reps, s);
      js.row((pre + "_estimate").c_str(), T, est.first, est.second, reps, 0);
      for (int v : {0, 3}) {  // the default and the per-head kernel (the same kernel at b_q 64)
        if (bq == 64 && v == 3) continue;
        const auto att = time_ms([&] { CHECK(hip_attention_prefill(h, p, mask, s, v)); }, 2, reps, s);
        js.row((pre + "_attention_v" + std::to_string(v)).c_str(), T, att.first, att.second, reps, 0);
      }
      const auto tot = time_ms([&] {
        CHECK(hip_estimate_mask(h, p, mask, s));
        CHECK(hip_attention_prefill(h, p, mask, s));
      }, 2, reps, s);
      js.row((pre + "_prefill").c_str(), T, tot.first, tot.second, reps, 0);
    }
  }

  // The estimation at 128K, the paper defaults, twice (the spread); in the quick run too.
  if (!decode_only) {
    const int T = 131072;
    Problem pr(T);
    const AttnParams p = pr.params(false);
    const int nqb = (T + hip.block_q - 1) / hip.block_q;
    const MaskBuffers mbuf(pr.H, nqb, Kb);
    const HipMaskDev& mask = mbuf.dev;
    auto time_estimate = [&](const char* name) {
      const auto est = time_ms([&] { CHECK(hip_estimate_mask(hip, p, mask, s)); }, 1, 5, s);
      js.row(name, T, est.first, est.second, 5, 0);
    };
    time_estimate("hip_estimate_v0");
    // Attention at 128K over the estimator's mask: the per-head kernel (3) and the default (0), 3 again last.
    const int att_variants[] = {3, 0, 3};
    constexpr int n_att = sizeof(att_variants) / sizeof(att_variants[0]);
    for (int i = 0; i < n_att; ++i) {
      const int v = att_variants[i];
      const auto att = time_ms([&] { CHECK(hip_attention_prefill(hip, p, mask, s, v)); }, 1, 5, s);
      js.row(("hip_attention_v" + std::to_string(v) + (i == n_att - 1 ? "_again" : "")).c_str(), T, att.first, att.second, 5, 0);
    }
    const auto tot = time_ms([&] {
      CHECK(hip_estimate_mask(hip, p, mask, s));
      CHECK(hip_attention_prefill(hip, p, mask, s));
    }, 1, 5, s);
    js.row("hip_prefill", T, tot.first, tot.second, 5, 0);
    time_estimate("hip_estimate_v0_again");
  }

  // HiP at 128K on keys with locality (fill_smooth_keys): how much of the random-key cost is the scattered
  // reads that random scores cause.
  if (!quick && !decode_only) {
    const int T = 131072;
    Problem pr(T);
    fill_smooth_keys<<<(pr.Hkv * pr.D + 127) / 128, 128>>>(pr.k, pr.Hkv, T, pr.D, 77u);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    const AttnParams p = pr.params(false);
    const int nqb = (T + hip.block_q - 1) / hip.block_q;
    const MaskBuffers mbuf(pr.H, nqb, Kb);
    const HipMaskDev& mask = mbuf.dev;
    const auto est = time_ms([&] { CHECK(hip_estimate_mask(hip, p, mask, s)); }, 2, 10, s);
    js.row("hip_smooth_estimate", T, est.first, est.second, 10, 0);
    const auto att = time_ms([&] { CHECK(hip_attention_prefill(hip, p, mask, s)); }, 2, 10, s);
    js.row("hip_smooth_attention_v0", T, att.first, att.second, 10, 0);
  }

  // Decode at 128K.
  if (!no_decode) {
    const int T = 131072;
    Problem pr(T);
    const AttnParams p = pr.params(true);
    float* ws;
    const int64_t ws_n = decode_workspace_floats(pr.H, pr.D, kMaxDecodeSplits);
    CHECK(cudaMalloc(&ws, ws_n * 4));
    CHECK(cudaMemset(ws, 0, ws_n * 4));
    const DecodeWorkspace w{ws, ws_n};
    const MaskBuffers mbuf(pr.H, 1, Kb);
    const HipMaskDev& mask = mbuf.dev;
    CHECK(hip_estimate_mask(hip, p, mask, s));
    CHECK(cudaStreamSynchronize(s));

    auto graph_of = [&](auto body) {
      cudaGraph_t g;
      cudaGraphExec_t ge;
      CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      body();
      CHECK(cudaStreamEndCapture(s, &g));
      CHECK(cudaGraphInstantiate(&ge, g, 0));
      CHECK(cudaGraphDestroy(g));
      return ge;
    };
    const int steps = 8, reps = 200;
    auto per_step = [&](const char* name, cudaGraphExec_t ge, int n_steps) {
      const auto r = time_ms([&] { CHECK(cudaGraphLaunch(ge, s)); }, 10, reps, s);
      js.row(name, T, r.first / n_steps, r.second / n_steps, reps, 0);
      CHECK(cudaGraphExecDestroy(ge));
    };
    per_step("dense_decode", graph_of([&] {
               for (int i = 0; i < steps; ++i) CHECK(attention_decode_dense(p, w, s));
             }), steps);
    per_step("hip_decode_cached", graph_of([&] {
               for (int i = 0; i < steps; ++i) CHECK(hip_attention_decode(hip, p, mask, w, s));
             }), steps);
    per_step("hip_decode_refresh", graph_of([&] { CHECK(hip_estimate_mask(hip, p, mask, s)); }), 1);
    per_step("hip_decode_amortized", graph_of([&] {
               CHECK(hip_estimate_mask(hip, p, mask, s));
               for (int i = 0; i < steps; ++i) CHECK(hip_attention_decode(hip, p, mask, w, s));
             }), steps);
    per_step("hip_decode_refresh_again", graph_of([&] { CHECK(hip_estimate_mask(hip, p, mask, s)); }), 1);
    CHECK(cudaFree(ws));
  }
  if (js.f) std::fclose(js.f);
  CHECK(cudaStreamDestroy(s));
  return 0;
}
