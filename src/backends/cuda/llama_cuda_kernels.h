// Host entry points to the small kernels of llama_cuda.cu, launched exactly as the model launches them, for
// the per-kernel tests against the CPU ops (llama_cuda_kernels_test.cpp). Each copies its inputs to the
// device, runs the kernel once and copies the result back (bf16 outputs widened to fp32); not for speed.
// bf16 values travel as uint16_t bit patterns (util/common.h: fp32_to_bf16 / bf16_to_fp32).
#pragma once

#include <cstdint>
#include <vector>

#include "ops/rope.h"

namespace hs::cuda::kernel_test {

// x[r][e] = table[tokens[r]][e] (bf16 table [n_vocab][E]).
std::vector<float> embed(const std::vector<int32_t>& tokens, const std::vector<uint16_t>& table, int E);

// bf16(x[r] / sqrt(mean(x[r]^2) + eps) * w), rows of E; `threads` per row's CTA (256 in prefill, 1024 for a
// decode row).
std::vector<float> rmsnorm(const std::vector<float>& x, int rows, int E, const std::vector<float>& w, float eps,
                           int threads = 256);

// RoPE of q and k (after adding `bias` when non-empty) and the K/V cache write, for rows at positions
// pos0 + r. qkv [rows][QD + 2 KVD]. Outputs: q [rows][QD], k and v [n_head_kv][n_ctx][head_dim] (positions
// outside [pos0, pos0 + rows) stay 0).
struct RopeOut {
  std::vector<float> q, k, v;
};
// ctas_per_row: CTAs sharing a row's columns (8 for a decode row).
RopeOut rope_store(const std::vector<float>& qkv, const std::vector<float>& bias, int rows, int n_head,
                   int n_head_kv, int head_dim, const RopeParams& rope, int pos0, int n_ctx, int ctas_per_row = 1);

// act[r][f] = bf16(silu(gu[r][f]) * gu[r][FF + f]).
std::vector<float> swiglu(const std::vector<float>& gu, int rows, int FF);

// The sampled token: argmax (lowest index on ties) when temperature <= 0, else Gumbel-max with `seed`.
int32_t sample(const std::vector<float>& logits, float temperature, uint64_t seed);

// y[r] = (accumulate ? y0[r] : 0) + sum_c W[r][c] x[c] through the decode GEMV kernel (cols % 8 == 0).
std::vector<float> gemv(const std::vector<uint16_t>& w, int rows, int cols, const std::vector<uint16_t>& x,
                        const std::vector<float>& y0, bool accumulate);

}  // namespace hs::cuda::kernel_test
