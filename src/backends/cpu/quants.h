// Tensor types on the CPU: the GGML block layouts, dequantization (a scalar reference and a fast SIMD
// version with bit-identical results) and round-to-nearest quantizers.
//
// Layouts are byte-compatible with llama.cpp's ggml-common.h; /work/shared/docs/FORMATS.md 4.4 gives the
// structs and the reference formulas. fp16 fields are stored raw (IEEE half bits).
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/ggml_type.h"

namespace hs::cpu {

constexpr int kQK = 32;    // values per block of Q4_0 / Q4_1 / Q8_0
constexpr int kQKK = 256;  // values per K-quant super-block

struct BlockQ4_0 {
  uint16_t d;      // scale (fp16)
  uint8_t qs[16];  // value j: low nibble of qs[j] (j < 16), high nibble of qs[j - 16]; y = d * (q - 8)
};
struct BlockQ4_1 {
  uint16_t d, m;   // scale and offset (fp16); y = d * q + m
  uint8_t qs[16];  // nibbles as in Q4_0
};
struct BlockQ8_0 {
  uint16_t d;  // scale (fp16); y = d * q
  int8_t qs[32];
};
struct BlockQ4_K {
  uint16_t d, dmin;    // super-block scales (fp16)
  uint8_t scales[12];  // 8 sub-blocks x (6-bit scale, 6-bit min), see get_scale_min_k4
  uint8_t qs[128];     // per 64 values: 32 bytes, low nibbles = first 32 values, high nibbles = next 32
};
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];  // 5th bit: for the j-th 64-value chunk, bit 2j of qh[l] (low half), 2j+1 (high half)
  uint8_t qs[128];
};
struct BlockQ6_K {
  uint8_t ql[128];    // low 4 bits
  uint8_t qh[64];     // high 2 bits
  int8_t scales[16];  // one per 16 values
  uint16_t d;
};
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);

// 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block (llama.cpp's get_scale_min_k4).
inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// True for the types dequantize_row / matmul handle: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K.
bool cpu_supports_type(GgmlType t);

// Plain scalar transcription of the reference formulas (the oracle for tests). n values, a multiple of the
// type's block size; src holds n / block_size blocks.
void dequantize_row_ref(GgmlType t, const void* src, float* dst, int64_t n);

// SIMD version; bit-identical to dequantize_row_ref. (Every quantized value is d * q with both factors
// exactly representable and a product of at most 24 significant bits, so it is exact in fp32 and the one
// rounding is the final add of the offset: fused or not, the result is the same.) For F16 inputs that are
// signaling NaNs the payload may be quieted; every other input matches bit for bit.
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);

// Round-to-nearest quantizers, llama.cpp-compatible layouts and rounding rules: F32, F16, BF16, Q4_0,
// Q4_1, Q8_0 (K-quants are not implemented and throw hs::Error).
void quantize_row(GgmlType t, const float* src, void* dst, int64_t n);

}  // namespace hs::cpu
