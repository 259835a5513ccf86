// Internal to the CPU matmul: data layouts shared by matmul.cpp (dispatch, activation quantization, weight
// repacking, threading) and the per-ISA kernels in matmul_avx2.cpp / matmul_avx512.cpp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/ggml_type.h"

namespace hs::cpu::detail {

// Quantized activations, tokens grouped in tiles of L (L = 1 for the row-streaming GEMV kernels, 4 for the
// AVX2 and 8 for the AVX-512 GEMM kernels). One tile of a row of K columns:
//   q   at byte 0:       int32 words [K/4][L]: word (s, t) = int8 values of columns 4s..4s+3 of token t,
//                        so a kernel broadcasts one word per 4-column step and token (for L = 1 this is
//                        just the int8 row);
//   ds  at ds_offset:    float [K/32][L][2]: per 32-column block, d = max|x| / 127 and d * sum(q);
//   off at off_offset:   int32 [K/sb][L]: -offset * sum(q) per weight sub-block of sb columns (see
//   IntScheme),
//                        the initial value of the integer accumulator.
// x[c] ~= d * q[c], |x[c] - d * q[c]| <= d / 2.
struct ActQ {
  uint8_t* base = nullptr;
  int64_t tile_bytes = 0;
  int L = 1;
  int64_t K = 0;
  int64_t ds_offset = 0, off_offset = 0;

  uint8_t* tile(int64_t i) const { return base + i * tile_bytes; }
  // Pointers for token t, already offset to its slot inside its tile (strides: L words / 2L floats / L ints).
  const int32_t* q(int64_t t) const { return reinterpret_cast<const int32_t*>(tile(t / L)) + t % L; }
  const float* ds(int64_t t) const {
    return reinterpret_cast<const float*>(tile(t / L) + ds_offset) + 2 * (t % L);
  }
  const int32_t* off(int64_t t) const {
    return reinterpret_cast<const int32_t*>(tile(t / L) + off_offset) + t % L;
  }
};

// How a quantized type maps onto the integer kernels: every sub-block of sb columns of a row is
// W[c] = d * (u[c] - offset) + m with u[c] an unsigned 8-bit integer, d and m fp32 (m = 0 unless has_min).
// All of d * u, offset * d and m are exact in fp32 for the supported types, so the integer path sees exactly
// the weights dequantize_row_ref produces.
struct IntScheme {
  int sb = 32;            // columns per (d, m): 32, or 16 for Q6_K
  bool has_min = false;   // Q4_1, Q4_K, Q5_K
  int offset = 0;         // Q4_0: 8, Q6_K: 32, Q8_0 on AVX-512: 128 (u = q + 128)
  int i16_steps = 8;      // AVX2: 4-column maddubs results summable in int16 (2*umax*127 per step, < 32768)
  bool signed_q = false;  // AVX2 Q8_0: weights kept int8, products via abs/sign
};

// Packed weight tile of NR rows (16 for AVX-512, 8 for AVX2), all K columns. For each sub-block j of sb
// columns: sb/4 steps of NR*4 bytes (step k = columns 4k..4k+3 of rows 0..NR-1, 4 bytes per row), then NR
// fp32 d, then NR fp32 m when has_min. Rows past the matrix end are zero.
inline size_t packed_subblock_bytes(const IntScheme& s, int nr) {
  return size_t(s.sb) * nr + size_t(nr) * 4 * (s.has_min ? 2 : 1);
}

struct GemmArgs {
  const uint8_t* wpack = nullptr;  // packed tile
  int64_t nsb = 0;                 // sub-blocks per row (K / sb)
  const ActQ* act = nullptr;
  int64_t t0 = 0, t1 = 0;  // tokens to compute
  float* y = nullptr;      // output for the tile's row 0, token 0: y[t * ldy + r]
  int64_t ldy = 0;
  int nr_valid = 0;  // rows of the tile inside the matrix
};

// Row-streaming kernel over weight rows [r0, r1) and tokens [0, n_tokens) of an L = 1 ActQ built with the
// type's IntScheme (sb, offset; Q8_0 with offset 0). gemv_int_avx512 handles Q4_0 / Q4_1 / Q8_0 only,
// gemv_int_avx2 every integer type.
struct GemvArgs {
  GgmlType type = GgmlType::Q4_1;
  const uint8_t* w = nullptr;
  size_t row_bytes = 0;
  int64_t r0 = 0, r1 = 0;
  int64_t nb = 0;  // 32-blocks per row
  const ActQ* act = nullptr;
  int64_t n_tokens = 0;
  float* y = nullptr;  // y[t * ldy + r]
  int64_t ldy = 0;
};

// SIMD repacking of a full tile (NR rows, all inside the matrix) of Q4_0 / Q4_1 / Q8_0 rows into the layout
// above; false for other types (the caller then uses the scalar packer in matmul.cpp).
bool pack_tile_avx2(GgmlType type, const IntScheme& s, const uint8_t* row0, size_t row_bytes, int64_t nsb,
                    uint8_t* out);
bool pack_tile_avx512(GgmlType type, const IntScheme& s, const uint8_t* row0, size_t row_bytes, int64_t nsb,
                      uint8_t* out);

// Weights packed once, ahead of time (cpu::pack_weight, matmul.h), for the AVX-512 integer kernels: tiles of
// 16 rows (kGemmRowsAvx512; rows past the matrix end are zero), and in each tile, per 32-column block:
//   Q4_0 / Q4_1: 4 vectors of 64 bytes; byte 4r+i of vector k holds u[r][4k+i] in its low nibble and
//                u[r][16+4k+i] in its high nibble (u = the block's 4-bit values, i.e. steps k and k+4 of
//                the GEMM layout above), then 16 fp16 d, then (Q4_1) 16 fp16 m;
//   Q8_0:        8 vectors of 64 bytes; byte 4r+i of vector k is q[r][4k+i] + 128, then 16 fp16 d.
// 288 / 320 / 544 bytes per block of 16 rows: exactly the GGML blocks' size, so a decode step streams no more
// bytes than from the file's rows. Returns 0 for types without a packed form.
size_t packed16_block_bytes(GgmlType type);
// The register-tiled microkernel over a packed tile (g.wpack = the tile, g.nsb = 32-column blocks), every
// token of [t0, t1) of an L = kGemmTokensAvx512 ActQ built with int_scheme(type, AVX-512). Each token's
// result is computed by the same instructions whatever the number of tokens (and equals gemm_int_avx512 on
// the tile packed per call), so batching never changes a row's bits.
void gemm_packed_avx512(GgmlType type, const GemmArgs& g);

void gemm_int_avx2(const IntScheme& s, const GemmArgs& g);
void gemm_int_avx512(const IntScheme& s, const GemmArgs& g);
void gemv_int_avx2(const GemvArgs& g);
void gemv_int_avx512(const GemvArgs& g);

// Calls with at least this many tokens use the repacked GEMM; fewer stream rows (GEMV) or, for K-quants,
// take the fp32 path. Returns the previous value.
int64_t gemm_min_tokens();
int64_t set_gemm_min_tokens(int64_t n);

constexpr int kGemmRowsAvx2 = 8, kGemmTokensAvx2 = 4;
constexpr int kGemmRowsAvx512 = 16, kGemmTokensAvx512 = 8;

}  // namespace hs::cpu::detail
