// Matrix products of a (quantized) weight matrix with exact fp32 activations: the weights are dequantized to
// exactly the values dequantize_row_ref gives, multiplied with the fp32 activations and accumulated in fp32
// (no activation quantization, unlike cpu::matmul's integer path).
//
// Few tokens (decode; fewer than f32act_detail::gemm_min_tokens(), 12 by default): every weight row is
// streamed once per pass of up to 4 tokens (AVX2) or 8 (AVX-512); each 32-block is dequantized in registers
// (Q4_0 / Q4_1 / Q8_0; AVX-512 Q4 through a 16-entry table per block and vpermps) and multiplied (FMA) with
// the tokens' activations; one horizontal sum per row and token at the end. Other types dequantize a row at
// a time (dequantize_row) into scratch. Threads take chunks of rows; the kernels prefetch 2 KB ahead.
// Many tokens (prefill): a thread dequantizes a panel of 16 weight rows laid out [col][16] (one zmm / two ymm
// = 16 rows of a column) and runs a register-tiled 16 rows x NT tokens microkernel (NT = 12 on AVX-512, 6 on
// AVX2; broadcast FMAs, ~90% of the FMA peak) over the activations, which are repacked once per call into
// token tiles laid out [col][NT]. Work items (up to 8 consecutive panels x a token range) are claimed
// dynamically; the packer prefetches the item's next panel.
//
// Accuracy: every output is a sum of cols exact products w*x (fused multiply-adds) in fp32, in a summation
// tree of depth <= cols, so |y - exact| <= gamma(cols) * sum_c |W[r][c] * x[t][c]|, gamma(n) = n u / (1 - n
// u), u = 2^-24 (observed: ~1e-7 to 4e-7 of sum_c |W[r][c] * x[t][c]|).
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/cpu/matmul.h"
#include "backends/ggml_type.h"
#include "util/thread_pool.h"

namespace hs::cpu {

// y[t * ldy + r] = sum_c W[r][c] * x[t * ldx + c]   for t < n_tokens, r < w.rows.
// Same contract as cpu::matmul: any rows, cols a multiple of the type's block size, x [n_tokens][ldx] fp32
// with ldx >= cols, y [n_tokens][ldy] with ldy >= rows (padding neither read nor written), every type
// cpu_supports_type accepts. Runs on every thread of `pool`; one caller at a time per pool; scratch memory is
// kept per thread and reused across calls.
void matmul_f32act(const MatmulWeight& w, const float* x, int64_t n_tokens, int64_t ldx, float* y,
                   int64_t ldy, ThreadPool& pool);

// How many tokens one matmul_f32act call may carry while every token's outputs keep exactly the bits of a
// call with that token alone (the row-streaming kernels pick their accumulator layout by the number of tokens
// in a pass: AVX-512 Q4_0/Q4_1/Q8_0 use the same layout for 1..4 tokens, AVX2 one for 1 token and another for
// 2..4). The batch engine reports it: decode batches up to this size give every sequence its lone-run bits.
int64_t f32act_batch_invariant_tokens();

// ---- internals shared by matmul_f32act.cpp and matmul_f32act_avx512.cpp (and the tests) ----------------
namespace f32act_detail {

constexpr int kPanelRows = 16;           // weight rows per panel (one zmm / two ymm per column)
constexpr int kTileTokensAvx2 = 6;       // 16 x 6 microkernel: 12 ymm accumulators
constexpr int kTileTokensAvx512 = 12;    // 16 x 12 microkernel: 12 zmm accumulators
constexpr int kGemvTokens = 4;           // tokens per pass of the row-streaming kernels (AVX2; any type)
constexpr int kGemvTokensAvx512 = 8;     // the AVX-512 Q4_0 / Q4_1 / Q8_0 ones
constexpr size_t kPrefetchBytes = 2048;  // how far ahead the row-streaming kernels prefetch the weights

// Row-streaming kernel: rows [r0, r1) of w, tokens [0, n_tokens), any n_tokens (passes of up to 4 or 8).
struct GemvArgs {
  GgmlType type = GgmlType::F32;
  const uint8_t* w = nullptr;
  size_t row_bytes = 0;
  int64_t cols = 0;
  int64_t rows = 0;  // of the whole matrix (the kernels prefetch ahead, never past its end)
  int64_t r0 = 0, r1 = 0;
  const float* x = nullptr;
  int64_t ldx = 0, n_tokens = 0;
  float* y = nullptr;
  int64_t ldy = 0;
  float* row_buf = nullptr;  // cols floats of scratch, for the types without an in-register kernel
};
void gemv_avx2(const GemvArgs& g);
void gemv_avx512(const GemvArgs& g);

// Panel of kPanelRows rows starting at row0 (nr of them inside the matrix; the rest become zeros), all cols
// columns: panel[c * 16 + i] = W[row0 + i][c]. Q4_0 / Q4_1 / Q8_0 only (false for other types); the generic
// path in matmul_f32act.cpp handles the others. While packing, the packers prefetch (into L2) the next_bytes
// at `next` (the next panel's rows; nullptr for none), spread over the blocks: a panel's 16 rows are 16
// streams, too many for the hardware prefetcher.
bool pack_panel_avx2(GgmlType type, const uint8_t* row0, size_t row_bytes, int nr, int64_t cols, float* panel,
                     const uint8_t* next, size_t next_bytes);
bool pack_panel_avx512(GgmlType type, const uint8_t* row0, size_t row_bytes, int nr, int64_t cols,
                       float* panel, const uint8_t* next, size_t next_bytes);

// Microkernel driver: one panel against token tiles. xpack holds tiles of NT tokens, tile i at
// xpack + i * cols * NT, laid out [c][NT] (tokens past n_tokens zero). Computes tokens [t0, t1) (t0 a
// multiple of NT), writing y[t * ldy + i] for i < nr (y points at the panel's row 0).
struct GemmArgs {
  const float* panel = nullptr;
  int64_t cols = 0;
  const float* xpack = nullptr;
  int64_t t0 = 0, t1 = 0;
  float* y = nullptr;
  int64_t ldy = 0;
  int nr = 0;
};
void gemm_avx2(const GemmArgs& g);
void gemm_avx512(const GemmArgs& g);

// Calls with at least this many tokens take the panel GEMM, fewer the row-streaming kernels. Returns the
// previous value (for tests and tuning).
int64_t gemm_min_tokens();
int64_t set_gemm_min_tokens(int64_t n);

}  // namespace f32act_detail
}  // namespace hs::cpu
