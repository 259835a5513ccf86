#include "backends/cpu/quants.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "util/common.h"

namespace hs::cpu {

namespace {

int64_t checked_blocks(GgmlType t, int64_t n, const char* what) {
  HS_CHECK(cpu_supports_type(t), "%s: unsupported tensor type %s", what, ggml_type_name(uint32_t(t)).c_str());
  const int64_t bs = ggml_traits(t).block_size;
  HS_CHECK(n >= 0 && n % bs == 0, "%s: %lld values is not a multiple of the %s block size %lld", what,
           (long long)n, ggml_traits(t).name, (long long)bs);
  return n / bs;
}

// ---------------------------------------------------------------------------------------------------------
// Reference dequantization: one loop per type, written like the formulas in FORMATS.md 4.4.

void ref_q4_0(const BlockQ4_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < 16; ++j) {
      y[j] = float((x[i].qs[j] & 0xF) - 8) * d;
      y[j + 16] = float((x[i].qs[j] >> 4) - 8) * d;
    }
  }
}

void ref_q4_1(const BlockQ4_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_fp32(x[i].d), m = fp16_to_fp32(x[i].m);
    for (int j = 0; j < 16; ++j) {
      y[j] = float(x[i].qs[j] & 0xF) * d + m;
      y[j + 16] = float(x[i].qs[j] >> 4) * d + m;
    }
  }
}

void ref_q8_0(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < kQK; ++j) y[j] = float(x[i].qs[j]) * d;
  }
}

void ref_q4_k(const BlockQ4_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(x[i].d), dmin = fp16_to_fp32(x[i].dmin);
    const uint8_t* q = x[i].qs;
    for (int chunk = 0; chunk < 4; ++chunk, q += 32) {  // 64 values: two sub-blocks of 32
      uint8_t sc, m;
      get_scale_min_k4(2 * chunk, x[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      get_scale_min_k4(2 * chunk + 1, x[i].scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
    }
  }
}

void ref_q5_k(const BlockQ5_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(x[i].d), dmin = fp16_to_fp32(x[i].dmin);
    const uint8_t* q = x[i].qs;
    for (int chunk = 0; chunk < 4; ++chunk, q += 32) {
      uint8_t sc, m;
      get_scale_min_k4(2 * chunk, x[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      get_scale_min_k4(2 * chunk + 1, x[i].scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      const int lo_bit = 2 * chunk, hi_bit = 2 * chunk + 1;
      for (int l = 0; l < 32; ++l) *y++ = d1 * float((q[l] & 0xF) | (((x[i].qh[l] >> lo_bit) & 1) << 4)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * float((q[l] >> 4) | (((x[i].qh[l] >> hi_bit) & 1) << 4)) - m2;
    }
  }
}

void ref_q6_k(const BlockQ6_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    const uint8_t* ql = x[i].ql;
    const uint8_t* qh = x[i].qh;
    const int8_t* sc = x[i].scales;
    for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = int((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
        const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * float(sc[is]) * float(q1);
        y[l + 32] = d * float(sc[is + 2]) * float(q2);
        y[l + 64] = d * float(sc[is + 4]) * float(q3);
        y[l + 96] = d * float(sc[is + 6]) * float(q4);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// AVX2 dequantization (baseline ISA). Same products as the reference; see the note in quants.h.

inline __m256 u8x8_to_ps(__m128i v) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
}
inline __m256 i8x8_to_ps(__m128i v) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}

// 16 bytes of nibbles -> the block's 32 values in order, as 32 u8 (low nibbles first).
inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// Stores the 32 u8 of q as floats: y = q * d + m (the product is exact, so fma == mul then add).
inline void store_u8x32_affine(__m256i q, __m256 d, __m256 m, float* y) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  _mm256_storeu_ps(y + 0, _mm256_fmadd_ps(u8x8_to_ps(lo), d, m));
  _mm256_storeu_ps(y + 8, _mm256_fmadd_ps(u8x8_to_ps(_mm_srli_si128(lo, 8)), d, m));
  _mm256_storeu_ps(y + 16, _mm256_fmadd_ps(u8x8_to_ps(hi), d, m));
  _mm256_storeu_ps(y + 24, _mm256_fmadd_ps(u8x8_to_ps(_mm_srli_si128(hi, 8)), d, m));
}

inline float h2f(uint16_t h) {
  return _cvtsh_ss(h);
}  // exact, like fp16_to_fp32

void fast_f16(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  for (; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

void fast_bf16(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
  }
  for (; i < n; ++i) y[i] = bf16_to_fp32(x[i]);
}

void fast_q4_0(const BlockQ4_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const __m256 d = _mm256_set1_ps(h2f(x[i].d));
    // (q - 8) as int8 in [-8, 7], then int -> float exactly; one rounding in the multiply, as in the
    // reference.
    const __m256i q = _mm256_sub_epi8(unpack_nibbles(x[i].qs), _mm256_set1_epi8(8));
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(y + 0, _mm256_mul_ps(i8x8_to_ps(lo), d));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(lo, 8)), d));
    _mm256_storeu_ps(y + 16, _mm256_mul_ps(i8x8_to_ps(hi), d));
    _mm256_storeu_ps(y + 24, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(hi, 8)), d));
  }
}

void fast_q4_1(const BlockQ4_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK)
    store_u8x32_affine(unpack_nibbles(x[i].qs), _mm256_set1_ps(h2f(x[i].d)), _mm256_set1_ps(h2f(x[i].m)), y);
}

void fast_q8_0(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const __m256 d = _mm256_set1_ps(h2f(x[i].d));
    for (int j = 0; j < kQK; j += 8) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x[i].qs + j));
      _mm256_storeu_ps(y + j, _mm256_mul_ps(i8x8_to_ps(q), d));
    }
  }
}

// Q4_K and Q5_K: y = d1 * q - m1 per sub-block of 32 (d1 * q exact, so fmsub == the reference).
inline void store_u8x32_scaled_minus(__m256i q, float d1, float m1, float* y) {
  const __m256 d = _mm256_set1_ps(d1), m = _mm256_set1_ps(-m1);
  store_u8x32_affine(q, d, m, y);  // d1 * q + (-m1) == d1 * q - m1, bit for bit
}

void fast_q4_k(const BlockQ4_K* x, float* y, int64_t nb) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
    for (int chunk = 0; chunk < 4; ++chunk, y += 64) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs + 32 * chunk));
      uint8_t sc, m;
      get_scale_min_k4(2 * chunk, x[i].scales, &sc, &m);
      store_u8x32_scaled_minus(_mm256_and_si256(q, mask), d * sc, dmin * m, y);
      get_scale_min_k4(2 * chunk + 1, x[i].scales, &sc, &m);
      store_u8x32_scaled_minus(_mm256_and_si256(_mm256_srli_epi16(q, 4), mask), d * sc, dmin * m, y + 32);
    }
  }
}

void fast_q5_k(const BlockQ5_K* x, float* y, int64_t nb) {
  const __m256i mask = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qh));
    for (int chunk = 0; chunk < 4; ++chunk, y += 64) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs + 32 * chunk));
      // Bit b of every qh byte, moved to bit 4: ((qh >> b) & 1) << 4 (16-bit shifts; the mask drops spill).
      const __m128i sh_lo = _mm_cvtsi32_si128(2 * chunk), sh_hi = _mm_cvtsi32_si128(2 * chunk + 1);
      const __m256i hb_lo = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, sh_lo), one), 4);
      const __m256i hb_hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, sh_hi), one), 4);
      uint8_t sc, m;
      get_scale_min_k4(2 * chunk, x[i].scales, &sc, &m);
      store_u8x32_scaled_minus(_mm256_or_si256(_mm256_and_si256(q, mask), hb_lo), d * sc, dmin * m, y);
      get_scale_min_k4(2 * chunk + 1, x[i].scales, &sc, &m);
      store_u8x32_scaled_minus(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), mask), hb_hi),
                               d * sc, dmin * m, y + 32);
    }
  }
}

// 32 signed values (q6 - 32) -> floats scaled by two sub-block scales (first 16, next 16).
inline void store_i8x32_two_scales(__m256i q, float s0, float s1, float* y) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  const __m256 a = _mm256_set1_ps(s0), b = _mm256_set1_ps(s1);
  _mm256_storeu_ps(y + 0, _mm256_mul_ps(i8x8_to_ps(lo), a));
  _mm256_storeu_ps(y + 8, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(lo, 8)), a));
  _mm256_storeu_ps(y + 16, _mm256_mul_ps(i8x8_to_ps(hi), b));
  _mm256_storeu_ps(y + 24, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(hi, 8)), b));
}

void fast_q6_k(const BlockQ6_K* x, float* y, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(x[i].d);
    for (int half = 0; half < 2; ++half, y += 128) {
      const uint8_t* ql = x[i].ql + 64 * half;
      const int8_t* sc = x[i].scales + 8 * half;
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qh + 32 * half));
      const __m256i q1 =
          _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
      const __m256i q2 = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4));
      const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4));
      const __m256i q4 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4));
      // d * sc * q: d * sc is exact (11 x 8 bits) and so is its product with q (6 more bits).
      store_i8x32_two_scales(_mm256_sub_epi8(q1, off), d * float(sc[0]), d * float(sc[1]), y);
      store_i8x32_two_scales(_mm256_sub_epi8(q2, off), d * float(sc[2]), d * float(sc[3]), y + 32);
      store_i8x32_two_scales(_mm256_sub_epi8(q3, off), d * float(sc[4]), d * float(sc[5]), y + 64);
      store_i8x32_two_scales(_mm256_sub_epi8(q4, off), d * float(sc[6]), d * float(sc[7]), y + 96);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Quantizers (round to nearest; the same rules as llama.cpp's quantize_row_*_ref).

void quant_q4_0(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f, max = 0.0f;  // max: the value of largest magnitude, with its sign
    for (int j = 0; j < kQK; ++j)
      if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), max = x[j];
    const float d = max / -8.0f;  // so that max maps to q = 0 (value -8 d) and the range is [-8, 7]
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < 16; ++j) {
      const int q0 = std::min(15, int(x[j] * id + 8.5f));
      const int q1 = std::min(15, int(x[j + 16] * id + 8.5f));
      y[i].qs[j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

void quant_q4_1(const float* x, BlockQ4_1* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float lo = x[0], hi = x[0];
    for (int j = 1; j < kQK; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
    const float d = (hi - lo) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    y[i].m = fp32_to_fp16(lo);
    for (int j = 0; j < 16; ++j) {
      const int q0 = std::min(15, int((x[j] - lo) * id + 0.5f));
      const int q1 = std::min(15, int((x[j + 16] - lo) * id + 0.5f));
      y[i].qs[j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

void quant_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < kQK; ++j) y[i].qs[j] = int8_t(std::lround(x[j] * id));
  }
}

}  // namespace

bool cpu_supports_type(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q8_0:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

void dequantize_row_ref(GgmlType t, const void* src, float* dst, int64_t n) {
  const int64_t nb = checked_blocks(t, n, "dequantize_row_ref");
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, size_t(n) * sizeof(float));
      break;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(static_cast<const uint16_t*>(src)[i]);
      break;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(static_cast<const uint16_t*>(src)[i]);
      break;
    case GgmlType::Q4_0:
      ref_q4_0(static_cast<const BlockQ4_0*>(src), dst, nb);
      break;
    case GgmlType::Q4_1:
      ref_q4_1(static_cast<const BlockQ4_1*>(src), dst, nb);
      break;
    case GgmlType::Q8_0:
      ref_q8_0(static_cast<const BlockQ8_0*>(src), dst, nb);
      break;
    case GgmlType::Q4_K:
      ref_q4_k(static_cast<const BlockQ4_K*>(src), dst, nb);
      break;
    case GgmlType::Q5_K:
      ref_q5_k(static_cast<const BlockQ5_K*>(src), dst, nb);
      break;
    case GgmlType::Q6_K:
      ref_q6_k(static_cast<const BlockQ6_K*>(src), dst, nb);
      break;
    default:
      break;  // rejected by checked_blocks
  }
}

void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) {
  const int64_t nb = checked_blocks(t, n, "dequantize_row");
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, size_t(n) * sizeof(float));
      break;
    case GgmlType::F16:
      fast_f16(static_cast<const uint16_t*>(src), dst, n);
      break;
    case GgmlType::BF16:
      fast_bf16(static_cast<const uint16_t*>(src), dst, n);
      break;
    case GgmlType::Q4_0:
      fast_q4_0(static_cast<const BlockQ4_0*>(src), dst, nb);
      break;
    case GgmlType::Q4_1:
      fast_q4_1(static_cast<const BlockQ4_1*>(src), dst, nb);
      break;
    case GgmlType::Q8_0:
      fast_q8_0(static_cast<const BlockQ8_0*>(src), dst, nb);
      break;
    case GgmlType::Q4_K:
      fast_q4_k(static_cast<const BlockQ4_K*>(src), dst, nb);
      break;
    case GgmlType::Q5_K:
      fast_q5_k(static_cast<const BlockQ5_K*>(src), dst, nb);
      break;
    case GgmlType::Q6_K:
      fast_q6_k(static_cast<const BlockQ6_K*>(src), dst, nb);
      break;
    default:
      break;
  }
}

void quantize_row(GgmlType t, const float* src, void* dst, int64_t n) {
  const int64_t nb = checked_blocks(t, n, "quantize_row");
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, size_t(n) * sizeof(float));
      break;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = fp32_to_fp16(src[i]);
      break;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = fp32_to_bf16(src[i]);
      break;
    case GgmlType::Q4_0:
      quant_q4_0(src, static_cast<BlockQ4_0*>(dst), nb);
      break;
    case GgmlType::Q4_1:
      quant_q4_1(src, static_cast<BlockQ4_1*>(dst), nb);
      break;
    case GgmlType::Q8_0:
      quant_q8_0(src, static_cast<BlockQ8_0*>(dst), nb);
      break;
    default:
      fail(strfmt("quantize_row: no quantizer for %s", ggml_traits(t).name));
  }
}

}  // namespace hs::cpu
