// Matrix-vector and matrix-matrix products of a (quantized) weight matrix with fp32 activations.
//
// For the integer-friendly types (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) each activation row is quantized once
// per call to int8 blocks of 32 (fp32 scale d = max|x| / 127, plus the block sum), and the products run as
// u8 x s8 integer dot products (AVX2 maddubs / AVX-512 VNNI dpbusd). Decode-sized calls (few tokens) stream
// the weights row by row; prefill-sized calls repack tiles of 16 (AVX-512) or 8 (AVX2) weight rows into an
// interleaved layout and run a register-tiled rows x tokens microkernel. F32, F16 and BF16 use an fp32 FMA
// path (exact inputs, fp32 accumulation). See matmul.cpp for the layouts.
//
// Accuracy: the int8 activation rounding changes each product by at most max|x_block| / 254 per element, so
// |matmul - exact| <= sum over blocks of (max|x_b| / 254) * sum_{c in b} |W[r][c]|, plus fp32 rounding.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/ggml_type.h"
#include "util/thread_pool.h"

namespace hs::cpu {

// A weight matrix: `rows` rows of `cols` values each, row r at (const uint8_t*)data + r * row_bytes.
struct MatmulWeight {
  GgmlType type = GgmlType::F32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;
  // Optional copy of the rows packed ahead of time for this CPU's integer kernels (pack_weight); matmul uses
  // it when it can and otherwise reads `data`. Must hold the same values.
  const void* packed = nullptr;
};

// Fills a MatmulWeight for densely stored rows (row_bytes = ggml_row_bytes(type, cols)).
MatmulWeight make_weight(GgmlType type, const void* data, int64_t rows, int64_t cols);

// y[t * ldy + r] = sum_c W[r][c] * x[t * ldx + c]   for t < n_tokens, r < w.rows.
// x: [n_tokens][ldx] fp32 (ldx >= cols), y: [n_tokens][ldy] fp32 (ldy >= rows). Runs on every thread of
// `pool`. Call from one thread at a time per pool; scratch memory is kept per thread and reused across calls.
void matmul(const MatmulWeight& w, const float* x, int64_t n_tokens, int64_t ldx, float* y, int64_t ldy,
            ThreadPool& pool);

// Bytes of w packed ahead of time for this CPU's integer kernels (AVX-512 VNNI: Q4_0, Q4_1 and Q8_0 in
// tiles of 16 rows, the same size as the GGML rows, rows rounded up to 16), or 0 when the type or the CPU has
// no packed form. Packed weights let decode-sized calls run the register-tiled microkernel instead of
// streaming rows, with no per-call repacking: a batch of n tokens then costs far less than n single tokens,
// and every token's result has the same bits whatever the batch (layout: matmul_kernels.h).
size_t packed_weight_bytes(const MatmulWeight& w);
// Writes that packed copy to `out` (packed_weight_bytes(w) bytes, 64-byte aligned). Set w.packed = out to use
// it.
void pack_weight(const MatmulWeight& w, void* out);

// The same product computed the obvious way: dequantize_row_ref per row, double accumulation, rounded to
// fp32 at the end. Single-threaded; for tests.
void matmul_ref(const MatmulWeight& w, const float* x, int64_t n_tokens, int64_t ldx, float* y, int64_t ldy);

// One row of W dequantized to fp32 (embedding lookup). dst holds w.cols floats.
void get_row(const MatmulWeight& w, int64_t row, float* dst);

}  // namespace hs::cpu
