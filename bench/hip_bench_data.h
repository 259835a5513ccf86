// Shared by hip_bench and hip_decode_cold_bench: SmolLM2-135M attention shapes, and keys that follow a smooth
// random walk over positions (attention locality) with Gaussian values, in the cache layout
// [kv head][position][head_dim] fp16.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "ops/attention.h"
#include "util/common.h"

namespace hs::bench {

constexpr int32_t kHeads = 9, kKvHeads = 3, kHeadDim = 64;

// Resizes k and v to n_kv positions and fills them, drawing from rng through N (both continue their state).
inline void fill_walk_kv(std::mt19937& rng, std::normal_distribution<float>& N, int32_t n_kv,
                         std::vector<uint16_t>& k, std::vector<uint16_t>& v) {
  k.resize(size_t(n_kv) * kKvHeads * kHeadDim);
  v.resize(k.size());
  for (int32_t g = 0; g < kKvHeads; ++g) {
    std::vector<float> walk(kHeadDim, 0.0f);
    for (int32_t pos = 0; pos < n_kv; ++pos)
      for (int32_t d = 0; d < kHeadDim; ++d) {
        walk[d] = 0.97f * walk[d] + 0.25f * N(rng);
        const size_t at = (size_t(g) * n_kv + pos) * kHeadDim + d;
        k[at] = fp32_to_fp16(walk[d] + 0.1f * N(rng));
        v[at] = fp32_to_fp16(N(rng));
      }
  }
}

// The last n_q queries of a sequence of n_kv positions over a contiguous cache of exactly n_kv positions.
inline AttentionParams bench_params(const float* q, const uint16_t* k, const uint16_t* v, float* out, int32_t n_kv,
                                    int32_t n_q) {
  AttentionParams p;
  p.q = q, p.q_stride = kHeads * kHeadDim;
  p.k = k, p.v = v, p.kv_head_stride = int64_t(n_kv) * kHeadDim, p.kv_pos_stride = kHeadDim;
  p.out = out, p.out_stride = kHeads * kHeadDim;
  p.n_q = n_q, p.n_kv = n_kv, p.q_pos0 = n_kv - n_q;
  p.n_head = kHeads, p.n_kv_head = kKvHeads, p.head_dim = kHeadDim;
  p.scale = 1.0f / std::sqrt(float(kHeadDim));
  return p;
}

}  // namespace hs::bench
