#include "backends/cpu/quants.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backends/cpu/quants_testutil.h"
#include "util/common.h"

namespace hs::cpu {
namespace {

constexpr uint16_t kHalfOne = 0x3C00, kHalfHalf = 0x3800, kHalfMinusOne = 0xBC00, kHalfTwo = 0x4000,
                   kHalfQuarter = 0x3400;

std::vector<float> deq_ref(GgmlType t, const void* src, int64_t n) {
  std::vector<float> y(size_t(n), NAN);
  dequantize_row_ref(t, src, y.data(), n);
  return y;
}

// Inverse of get_scale_min_k4: stores a 6-bit scale and min for sub-block j.
void set_scale_min_k4(int j, uint8_t sc, uint8_t m, uint8_t* q) {
  if (j < 4) {
    q[j] = uint8_t((q[j] & 0xC0) | sc);
    q[j + 4] = uint8_t((q[j + 4] & 0xC0) | m);
  } else {
    q[j + 4] = uint8_t((sc & 0xF) | ((m & 0xF) << 4));
    q[j - 4] = uint8_t((q[j - 4] & 0x3F) | ((sc >> 4) << 6));
    q[j] = uint8_t((q[j] & 0x3F) | ((m >> 4) << 6));
  }
}

TEST(Quants, ScaleMinK4RoundTrip) {
  for (int sc = 0; sc < 64; ++sc)
    for (int m = 0; m < 64; m += 3) {
      uint8_t q[12] = {};
      for (int j = 0; j < 8; ++j) set_scale_min_k4(j, uint8_t((sc + j) & 63), uint8_t((m + 5 * j) & 63), q);
      for (int j = 0; j < 8; ++j) {
        uint8_t s2, m2;
        get_scale_min_k4(j, q, &s2, &m2);
        ASSERT_EQ(s2, (sc + j) & 63);
        ASSERT_EQ(m2, (m + 5 * j) & 63);
      }
    }
}

// ---- hand-computed reference cases -----------------------------------------------------------------------

TEST(Quants, RefQ4_1HandCase) {
  BlockQ4_1 b;
  b.d = kHalfHalf;      // 0.5
  b.m = kHalfMinusOne;  // -1
  for (int j = 0; j < 16; ++j) b.qs[j] = uint8_t(j | ((15 - j) << 4));
  const auto y = deq_ref(GgmlType::Q4_1, &b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 0.5f * j - 1.0f) << j;
    EXPECT_EQ(y[j + 16], 0.5f * (15 - j) - 1.0f) << j;
  }
  EXPECT_EQ(y[0], -1.0f);
  EXPECT_EQ(y[15], 6.5f);
  EXPECT_EQ(y[16], 6.5f);
}

TEST(Quants, RefQ4_0HandCase) {
  BlockQ4_0 b;
  b.d = kHalfTwo;
  for (int j = 0; j < 16; ++j) b.qs[j] = uint8_t(j | ((15 - j) << 4));
  const auto y = deq_ref(GgmlType::Q4_0, &b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 2.0f * (j - 8)) << j;
    EXPECT_EQ(y[j + 16], 2.0f * (7 - j)) << j;
  }
}

TEST(Quants, RefQ8_0HandCase) {
  BlockQ8_0 b;
  b.d = kHalfQuarter;
  for (int j = 0; j < 32; ++j) b.qs[j] = int8_t(8 * j - 128);
  const auto y = deq_ref(GgmlType::Q8_0, &b, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], 2.0f * j - 32.0f) << j;
}

TEST(Quants, RefQ4_KHandCase) {
  // d = 1, dmin = 0.5, sub-block s has scale s + 1 and min 2 s + 1 (min 15 for s = 7: uses the high bits).
  BlockQ4_K b = {};
  b.d = kHalfOne;
  b.dmin = kHalfHalf;
  for (int s = 0; s < 8; ++s)
    set_scale_min_k4(s, uint8_t(s + 1 + (s == 7 ? 40 : 0)), uint8_t(2 * s + 1), b.scales);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) b.qs[32 * c + l] = uint8_t((l % 16) | ((15 - l % 16) << 4));
  const auto y = deq_ref(GgmlType::Q4_K, &b, 256);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      const int s0 = 2 * c, s1 = 2 * c + 1;
      const float sc1 = float(s1 + 1 + (s1 == 7 ? 40 : 0));
      EXPECT_EQ(y[64 * c + l], float(s0 + 1) * (l % 16) - 0.5f * (2 * s0 + 1)) << c << " " << l;
      EXPECT_EQ(y[64 * c + 32 + l], sc1 * (15 - l % 16) - 0.5f * (2 * s1 + 1)) << c << " " << l;
    }
}

TEST(Quants, RefQ5_KHandCase) {
  BlockQ5_K b = {};
  b.d = kHalfHalf;
  b.dmin = kHalfOne;
  for (int s = 0; s < 8; ++s) set_scale_min_k4(s, uint8_t(2 + s), uint8_t(s), b.scales);
  for (int l = 0; l < 32; ++l) b.qh[l] = uint8_t(l * 37 + 11);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) b.qs[32 * c + l] = uint8_t(((l + c) % 16) | ((l % 16) << 4));
  const auto y = deq_ref(GgmlType::Q5_K, &b, 256);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      const int qlo = ((l + c) % 16) + 16 * ((b.qh[l] >> (2 * c)) & 1);
      const int qhi = (l % 16) + 16 * ((b.qh[l] >> (2 * c + 1)) & 1);
      EXPECT_EQ(y[64 * c + l], 0.5f * float(2 + 2 * c) * qlo - float(2 * c)) << c << " " << l;
      EXPECT_EQ(y[64 * c + 32 + l], 0.5f * float(3 + 2 * c) * qhi - float(2 * c + 1)) << c << " " << l;
    }
}

TEST(Quants, RefQ6_KHandCase) {
  // Chosen 6-bit values v[i], packed by the layout in FORMATS.md 4.4, then y[i] = d * sc[i / 16] * (v[i] -
  // 32).
  int v[256];
  for (int i = 0; i < 256; ++i) v[i] = (i * 7 + 3) % 64;
  BlockQ6_K b = {};
  b.d = kHalfHalf;
  for (int is = 0; is < 16; ++is) b.scales[is] = int8_t(is - 8 + (is == 3 ? -100 : 0));
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const int i0 = 128 * h + l, i1 = i0 + 32, i2 = i0 + 64, i3 = i0 + 96;
      b.ql[64 * h + l] = uint8_t((v[i0] & 0xF) | ((v[i2] & 0xF) << 4));
      b.ql[64 * h + l + 32] = uint8_t((v[i1] & 0xF) | ((v[i3] & 0xF) << 4));
      b.qh[32 * h + l] =
          uint8_t((v[i0] >> 4) | ((v[i1] >> 4) << 2) | ((v[i2] >> 4) << 4) | ((v[i3] >> 4) << 6));
    }
  const auto y = deq_ref(GgmlType::Q6_K, &b, 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(y[i], 0.5f * float(b.scales[i / 16]) * float(v[i] - 32)) << i;
}

TEST(Quants, RefFloatTypes) {
  const uint16_t h[5] = {0x3C00, 0xC000, 0x3800, 0x0001, 0x7C00};
  const auto y = deq_ref(GgmlType::F16, h, 5);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -2.0f);
  EXPECT_EQ(y[2], 0.5f);
  EXPECT_EQ(y[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(y[4], INFINITY);
  const uint16_t b[2] = {0x3F80, 0xC040};
  const auto yb = deq_ref(GgmlType::BF16, b, 2);
  EXPECT_EQ(yb[0], 1.0f);
  EXPECT_EQ(yb[1], -3.0f);
}

TEST(Quants, RejectsBadInput) {
  float y[64];
  uint8_t src[64] = {};
  EXPECT_THROW(dequantize_row_ref(GgmlType::Q4_1, src, y, 31), Error);
  EXPECT_THROW(dequantize_row(GgmlType::Q5_0, src, y, 32), Error);
  EXPECT_THROW(quantize_row(GgmlType::Q4_K, y, src, 256), Error);
}

// ---- fast vs reference: bit-exact
// ---------------------------------------------------------------------------

void expect_bit_exact(GgmlType t, const std::vector<uint8_t>& src, int64_t n, const char* what) {
  std::vector<float> a(size_t(n) + 1, 1.0f), b(size_t(n) + 1, 2.0f);
  dequantize_row_ref(t, src.data(), a.data(), n);
  dequantize_row(t, src.data(), b.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t ua, ub;
    std::memcpy(&ua, &a[i], 4);
    std::memcpy(&ub, &b[i], 4);
    ASSERT_EQ(ua, ub) << ggml_traits(t).name << " " << what << " value " << i << ": ref " << a[i] << " fast "
                      << b[i];
  }
  EXPECT_EQ(b[size_t(n)], 2.0f) << "wrote past the end";
}

TEST(Quants, FastMatchesRefOnRandomBlocks) {
  std::mt19937 rng(1234);
  struct Range {
    float lo, hi;
  };
  // Normal scales, tiny ones (fp16 subnormals), large ones, and exact zeros.
  const Range ranges[] = {{0.01f, 1.0f}, {1e-7f, 1e-5f}, {100.0f, 1000.0f}, {0.0f, 0.0f}};
  for (GgmlType t : testutil::all_types()) {
    const int64_t bs = ggml_traits(t).block_size;
    for (const Range& r : ranges)
      for (int trial = 0; trial < 20; ++trial) {
        const int64_t n = bs == 1 ? 37 + trial : bs * (1 + trial % 5);
        expect_bit_exact(t, testutil::random_row(t, n, rng, r.lo, r.hi), n, "random");
      }
  }
}

TEST(Quants, FastMatchesRefOnRandomHalfBits) {
  // Every finite or infinite fp16 / bf16 bit pattern class (NaNs excluded: signaling NaNs may be quieted).
  std::mt19937 rng(99);
  for (GgmlType t : {GgmlType::F16, GgmlType::BF16}) {
    const int64_t n = 4099;
    std::vector<uint8_t> src(size_t(n) * 2);
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      do {
        h = uint16_t(rng());
      } while (t == GgmlType::F16 ? ((h & 0x7C00) == 0x7C00 && (h & 0x3FF))
                                  : ((h & 0x7F80) == 0x7F80 && (h & 0x7F)));
      std::memcpy(src.data() + 2 * i, &h, 2);
    }
    expect_bit_exact(t, src, n, "bits");
  }
}

// ---- quantize -> dequantize round trips
// ---------------------------------------------------------------------

std::vector<float> random_values(std::mt19937& rng, int64_t n, float scale) {
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = nd(rng);
  return x;
}

TEST(Quants, RoundTripQ8_0) {
  std::mt19937 rng(7);
  for (float scale : {1e-3f, 1.0f, 300.0f}) {
    const int64_t n = 32 * 64;
    const auto x = random_values(rng, n, scale);
    std::vector<uint8_t> q(size_t(n / 32) * sizeof(BlockQ8_0));
    quantize_row(GgmlType::Q8_0, x.data(), q.data(), n);
    const auto y = deq_ref(GgmlType::Q8_0, q.data(), n);
    for (int64_t b = 0; b < n / 32; ++b) {
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * b + j]));
      // d = amax / 127 rounds to fp16 (relative 2^-11, or absolute 2^-25 below 2^-14 where halves are
      // subnormal) and |q| <= 127; rounding to q costs d / 2.
      const float d = amax / 127.0f, bound = d * (0.5f + 127.0f / 2048.0f) * 1.001f + 127.0f * 0x1p-25f;
      for (int j = 0; j < 32; ++j)
        ASSERT_LE(std::fabs(x[32 * b + j] - y[32 * b + j]), bound) << b << " " << j;
    }
  }
}

TEST(Quants, RoundTripQ4_0) {
  std::mt19937 rng(8);
  for (float scale : {1e-3f, 1.0f, 300.0f}) {
    const int64_t n = 32 * 64;
    const auto x = random_values(rng, n, scale);
    std::vector<uint8_t> q(size_t(n / 32) * sizeof(BlockQ4_0));
    quantize_row(GgmlType::Q4_0, x.data(), q.data(), n);
    const auto y = deq_ref(GgmlType::Q4_0, q.data(), n);
    for (int64_t b = 0; b < n / 32; ++b) {
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * b + j]));
      // |d| = amax / 8; the grid is [-8, 7] |d| oriented so the extreme value is exact, so a value of the
      // opposite sign near -extreme clamps to 7 |d| (error <= |d|); elsewhere error <= |d| / 2. Plus fp16 d.
      const float d = amax / 8.0f, bound = d * (1.0f + 8.0f / 2048.0f) * 1.001f + 8.0f * 0x1p-25f;
      for (int j = 0; j < 32; ++j)
        ASSERT_LE(std::fabs(x[32 * b + j] - y[32 * b + j]), bound) << b << " " << j;
    }
  }
}

TEST(Quants, RoundTripQ4_1) {
  std::mt19937 rng(9);
  for (float scale : {1e-3f, 1.0f, 300.0f}) {
    const int64_t n = 32 * 64;
    auto x = random_values(rng, n, scale);
    for (int j = 0; j < 32; ++j) x[j] = 0.75f * scale;  // a constant block: d = 0
    std::vector<uint8_t> q(size_t(n / 32) * sizeof(BlockQ4_1));
    quantize_row(GgmlType::Q4_1, x.data(), q.data(), n);
    const auto y = deq_ref(GgmlType::Q4_1, q.data(), n);
    for (int64_t b = 0; b < n / 32; ++b) {
      float lo = x[32 * b], hi = lo;
      for (int j = 0; j < 32; ++j) lo = std::min(lo, x[32 * b + j]), hi = std::max(hi, x[32 * b + j]);
      // Rounding to the grid costs d / 2; fp16 rounding of d (times q <= 15) and of min add 2^-11 relative
      // each (or 2^-25 absolute for subnormal halves).
      const float d = (hi - lo) / 15.0f;
      const float bound =
          (d * (0.5f + 15.0f / 2048.0f) + std::fabs(lo) / 2048.0f) * 1.001f + 16.0f * 0x1p-25f;
      for (int j = 0; j < 32; ++j)
        ASSERT_LE(std::fabs(x[32 * b + j] - y[32 * b + j]), bound) << b << " " << j;
    }
  }
}

TEST(Quants, RoundTripFloatTypes) {
  std::mt19937 rng(10);
  const auto x = random_values(rng, 1000, 10.0f);
  std::vector<uint16_t> h(1000);
  quantize_row(GgmlType::F16, x.data(), h.data(), 1000);
  const auto y16 = deq_ref(GgmlType::F16, h.data(), 1000);
  quantize_row(GgmlType::BF16, x.data(), h.data(), 1000);
  const auto yb = deq_ref(GgmlType::BF16, h.data(), 1000);
  std::vector<float> y32(1000);
  quantize_row(GgmlType::F32, x.data(), y32.data(), 1000);
  for (int i = 0; i < 1000; ++i) {
    EXPECT_LE(std::fabs(x[i] - y16[i]), std::fabs(x[i]) * 0x1p-11f + 0x1p-25f) << i;
    EXPECT_LE(std::fabs(x[i] - yb[i]), std::fabs(x[i]) * 0x1p-8f) << i;
    EXPECT_EQ(x[i], y32[i]);
  }
}

TEST(Quants, QuantizeLayoutsMatchLlamaCppRules) {
  float x[32];
  for (int j = 0; j < 32; ++j) x[j] = float(j - 16);
  BlockQ8_0 q8;
  quantize_row(GgmlType::Q8_0, x, &q8, 32);
  EXPECT_EQ(q8.d, fp32_to_fp16(16.0f / 127.0f));
  EXPECT_EQ(q8.qs[0], -127);
  EXPECT_EQ(q8.qs[16], 0);
  EXPECT_EQ(q8.qs[31], 119);  // round(15 * 127 / 16) = round(119.06)
  BlockQ4_0 q4;
  quantize_row(GgmlType::Q4_0, x, &q4, 32);
  EXPECT_EQ(q4.d, kHalfTwo);  // max-magnitude value -16 -> d = -16 / -8
  const auto y = deq_ref(GgmlType::Q4_0, &q4, 32);
  EXPECT_EQ(y[0], -16.0f);
  EXPECT_EQ(y[16], 0.0f);
  EXPECT_EQ(y[31], 14.0f);  // 15 clamps to q = 15 -> 7 * 2
  BlockQ4_1 q41;
  for (int j = 0; j < 32; ++j) x[j] = float(j);
  quantize_row(GgmlType::Q4_1, x, &q41, 32);
  EXPECT_EQ(q41.m, 0);
  EXPECT_EQ(q41.d, fp32_to_fp16(31.0f / 15.0f));
  EXPECT_EQ(q41.qs[0] & 0xF, 0);
  EXPECT_EQ(q41.qs[15] >> 4, 15);  // value 31
}

}  // namespace
}  // namespace hs::cpu
