// Test helpers shared by quants_test.cpp and matmul_test.cpp: random rows of every supported type.
#pragma once

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backends/cpu/quants.h"
#include "util/common.h"

namespace hs::cpu::testutil {

// An fp16 scale: uniform magnitude in [lo, hi), random sign.
inline uint16_t random_half(std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  const float v = u(rng) * ((rng() & 1) ? -1.0f : 1.0f);
  return fp32_to_fp16(v);
}

// Bytes of a row of n values of type t: random quant bytes with finite fp16 scales of magnitude
// [scale_lo, scale_hi) (F32 / F16 / BF16: random values in +-2).
inline std::vector<uint8_t> random_row(GgmlType t, int64_t n, std::mt19937& rng, float scale_lo = 0.01f,
                                       float scale_hi = 1.0f) {
  size_t bytes = 0;
  HS_CHECK(ggml_row_bytes(t, n, &bytes), "random_row: bad n");
  std::vector<uint8_t> v(bytes);
  for (auto& b : v) b = uint8_t(rng());
  std::uniform_real_distribution<float> val(-2.0f, 2.0f);
  const int64_t nb = n / ggml_traits(t).block_size;
  switch (t) {
    case GgmlType::F32: {
      for (int64_t i = 0; i < n; ++i) {
        const float f = val(rng);
        std::memcpy(v.data() + 4 * i, &f, 4);
      }
      break;
    }
    case GgmlType::F16:
    case GgmlType::BF16: {
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = t == GgmlType::F16 ? fp32_to_fp16(val(rng)) : fp32_to_bf16(val(rng));
        std::memcpy(v.data() + 2 * i, &h, 2);
      }
      break;
    }
    case GgmlType::Q4_0:
    case GgmlType::Q8_0:
      for (int64_t i = 0; i < nb; ++i) {
        const uint16_t d = random_half(rng, scale_lo, scale_hi);
        std::memcpy(v.data() + i * ggml_traits(t).block_bytes, &d, 2);
      }
      break;
    case GgmlType::Q4_1:
      for (int64_t i = 0; i < nb; ++i) {
        const uint16_t dm[2] = {random_half(rng, scale_lo, scale_hi),
                                random_half(rng, scale_lo, 8 * scale_hi)};
        std::memcpy(v.data() + i * sizeof(BlockQ4_1), dm, 4);
      }
      break;
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      for (int64_t i = 0; i < nb; ++i) {  // d, dmin are the first two halves of both layouts
        const uint16_t dm[2] = {random_half(rng, scale_lo, scale_hi), random_half(rng, scale_lo, scale_hi)};
        std::memcpy(v.data() + i * ggml_traits(t).block_bytes, dm, 4);
      }
      break;
    case GgmlType::Q6_K:
      for (int64_t i = 0; i < nb; ++i) {
        const uint16_t d = random_half(rng, scale_lo, scale_hi);
        std::memcpy(v.data() + i * sizeof(BlockQ6_K) + offsetof(BlockQ6_K, d), &d, 2);
      }
      break;
    default:
      fail("random_row: unsupported type");
  }
  return v;
}

inline const std::vector<GgmlType>& all_types() {
  static const std::vector<GgmlType> types = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16,
                                              GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0,
                                              GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};
  return types;
}

}  // namespace hs::cpu::testutil
