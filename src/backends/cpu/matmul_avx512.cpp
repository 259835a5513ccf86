// AVX-512 (F, BW, VL, VNNI) integer kernels for matmul, chosen at run time (cpu_features.h). Every function
// here carries the target attribute and lives in this file's anonymous namespace, so no AVX-512 code can be
// picked by the linker for a baseline caller. No std templates are instantiated here for the same reason.
// Layouts: matmul_kernels.h.
#include <immintrin.h>

#include "backends/cpu/matmul_kernels.h"
#include "backends/cpu/quants.h"

#define HS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq")))

// gcc 12 warns about the deliberately undefined source operand inside _mm512_cvtepi32_ps.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace hs::cpu::detail {

namespace {

HS_AVX512 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

HS_AVX512 inline int load_i32(const void* p) {
  int v;
  __builtin_memcpy(&v, p, 4);
  return v;
}
HS_AVX512 inline int load_u16(const void* p) {
  uint16_t v;
  __builtin_memcpy(&v, p, 2);
  return v;
}

HS_AVX512 inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm256_and_si256(_mm256_srlv_epi32(b, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
                          _mm256_set1_epi8(0x0F));
}

// ---------------------------------------------------------------------------------------------------------
// GEMM: a packed tile of 16 rows x NT tokens. One zmm lane per row; each 4-column step is one vpdpbusd per
// token with the token's 4 int8 activations broadcast from memory. The integer accumulator starts at the
// sub-block's offset correction (-offset * sum(q_x)), so Q4_0 / Q6_K / Q8_0 need no extra work.

template <int NT, int SB, bool kMin>
HS_AVX512 void gemm_tile16(const uint8_t* __restrict wp, int64_t nsb, const int32_t* __restrict xq,
                           const float* __restrict ds, const int32_t* __restrict off, float* y, int64_t ldy,
                           __mmask16 mask) {
  constexpr int L = kGemmTokensAvx512, kSteps = SB / 4;
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t j = 0; j < nsb; ++j) {
    __m512i ia[NT];
    for (int t = 0; t < NT; ++t) ia[t] = _mm512_set1_epi32(off[t]);
    for (int k = 0; k < kSteps; ++k) {
      const __m512i w = _mm512_load_si512(wp + 64 * k);
      for (int t = 0; t < NT; ++t) ia[t] = _mm512_dpbusd_epi32(ia[t], w, _mm512_set1_epi32(xq[k * L + t]));
    }
    const __m512 dv = _mm512_load_ps(wp + 64 * kSteps);
    for (int t = 0; t < NT; ++t)
      acc[t] =
          _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[t]), _mm512_mul_ps(dv, _mm512_set1_ps(ds[2 * t])), acc[t]);
    if constexpr (kMin) {
      const __m512 mv = _mm512_load_ps(wp + 64 * kSteps + 64);
      for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(mv, _mm512_set1_ps(ds[2 * t + 1]), acc[t]);
    }
    wp += 64 * (kSteps + 1 + (kMin ? 1 : 0));
    xq += kSteps * L;
    off += L;
    if (SB == 32 || (j & 1)) ds += 2 * L;  // one (d, d*sum) pair per 32 columns
  }
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ldy, mask, acc[t]);
}

template <int SB, bool kMin>
HS_AVX512 void gemm_run16(const GemmArgs& g) {
  const ActQ& a = *g.act;
  const __mmask16 mask = __mmask16((1u << g.nr_valid) - 1u);
  for (int64_t t = g.t0; t < g.t1;) {
    int64_t n = a.L - t % a.L;
    if (g.t1 - t < n) n = g.t1 - t;
    float* y = g.y + t * g.ldy;
    if (n >= 8) {
      gemm_tile16<8, SB, kMin>(g.wpack, g.nsb, a.q(t), a.ds(t), a.off(t), y, g.ldy, mask);
      t += 8;
    } else if (n >= 4) {
      gemm_tile16<4, SB, kMin>(g.wpack, g.nsb, a.q(t), a.ds(t), a.off(t), y, g.ldy, mask);
      t += 4;
    } else if (n >= 2) {
      gemm_tile16<2, SB, kMin>(g.wpack, g.nsb, a.q(t), a.ds(t), a.off(t), y, g.ldy, mask);
      t += 2;
    } else {
      gemm_tile16<1, SB, kMin>(g.wpack, g.nsb, a.q(t), a.ds(t), a.off(t), y, g.ldy, mask);
      t += 1;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// GEMV: as the AVX2 version (matmul_avx2.cpp) with vpdpbusd on ymm; the offset correction seeds the
// accumulator.

template <int T, bool kMin>
HS_AVX512 inline void q4_block(const uint8_t* blk, int64_t b, const int8_t* const* xq, const float* const* ds,
                               const int32_t* const* off, __m256* acc, __m128* macc) {
  const __m256i q = unpack_nibbles(blk + (kMin ? 4 : 2));
  const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(kMin ? load_i32(blk) : load_u16(blk)));
  for (int t = 0; t < T; ++t) {
    // Q4_0: -8 * sum(q_x) in one lane (the lanes are summed at the end)
    const __m256i seed = kMin ? _mm256_setzero_si256() : _mm256_zextsi128_si256(_mm_cvtsi32_si128(off[t][b]));
    const __m256i s =
        _mm256_dpbusd_epi32(seed, q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + 32 * b)));
    const __m128 prod =
        _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(ds[t] + 2 * b))));
    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_broadcastss_ps(prod), acc[t]);
    if constexpr (kMin) macc[t] = _mm_add_ps(macc[t], prod);
  }
}

template <int T>
HS_AVX512 inline void q8_block(const uint8_t* blk, int64_t b, const int8_t* const* xq, const float* const* ds,
                               __m256* acc) {
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
  const __m256i wa = _mm256_abs_epi8(w);
  const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128(load_u16(blk)));
  for (int t = 0; t < T; ++t) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + 32 * b));
    const __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wa, _mm256_sign_epi8(x, w));
    const __m128 prod = _mm_mul_ss(d, _mm_load_ss(ds[t] + 2 * b));
    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_broadcastss_ps(prod), acc[t]);
  }
}

template <int T, GgmlType kType>
HS_AVX512 void gemv_rows(const GemvArgs& g, int64_t t0) {
  constexpr bool kQ8 = kType == GgmlType::Q8_0, kMin = kType == GgmlType::Q4_1;
  constexpr int64_t kBlockBytes = kQ8 ? sizeof(BlockQ8_0) : kMin ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0);
  const ActQ& a = *g.act;
  const int8_t* xq[T];
  const float* ds[T];
  const int32_t* off[T];
  for (int t = 0; t < T; ++t) {
    xq[t] = reinterpret_cast<const int8_t*>(a.q(t0 + t));
    ds[t] = a.ds(t0 + t);
    off[t] = a.off(t0 + t);
  }
  for (int64_t r = g.r0; r < g.r1; ++r) {
    const uint8_t* row = g.w + r * g.row_bytes;
    __m256 acc0[T], acc1[T];
    __m128 macc[T];
    for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps(), macc[t] = _mm_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= g.nb; b += 2) {
      if constexpr (kQ8) {
        q8_block<T>(row + b * kBlockBytes, b, xq, ds, acc0);
        q8_block<T>(row + (b + 1) * kBlockBytes, b + 1, xq, ds, acc1);
      } else {
        q4_block<T, kMin>(row + b * kBlockBytes, b, xq, ds, off, acc0, macc);
        q4_block<T, kMin>(row + (b + 1) * kBlockBytes, b + 1, xq, ds, off, acc1, macc);
      }
    }
    if (b < g.nb) {
      if constexpr (kQ8) {
        q8_block<T>(row + b * kBlockBytes, b, xq, ds, acc0);
      } else {
        q4_block<T, kMin>(row + b * kBlockBytes, b, xq, ds, off, acc0, macc);
      }
    }
    for (int t = 0; t < T; ++t) {
      float v = hsum(_mm256_add_ps(acc0[t], acc1[t]));
      if constexpr (kMin) v += _mm_cvtss_f32(_mm_movehdup_ps(macc[t]));
      g.y[(t0 + t) * g.ldy + r] = v;
    }
  }
}

template <int T>
HS_AVX512 void gemv_tokens(const GemvArgs& g, int64_t t0) {
  switch (g.type) {
    case GgmlType::Q4_0:
      gemv_rows<T, GgmlType::Q4_0>(g, t0);
      break;
    case GgmlType::Q4_1:
      gemv_rows<T, GgmlType::Q4_1>(g, t0);
      break;
    default:
      gemv_rows<T, GgmlType::Q8_0>(g, t0);
      break;
  }
}

}  // namespace

HS_AVX512 void gemm_int_avx512(const IntScheme& s, const GemmArgs& g) {
  if (s.sb == 16) {
    gemm_run16<16, false>(g);  // Q6_K
  } else if (s.has_min) {
    gemm_run16<32, true>(g);  // Q4_1, Q4_K, Q5_K
  } else {
    gemm_run16<32, false>(g);  // Q4_0, Q8_0 (u8 = q + 128)
  }
}

HS_AVX512 void gemv_int_avx512(const GemvArgs& g) {
  for (int64_t t = 0; t < g.n_tokens;) {
    const int64_t n = g.n_tokens - t;
    if (n >= 4) {
      gemv_tokens<4>(g, t);
      t += 4;
    } else if (n == 3) {
      gemv_tokens<3>(g, t);
      t += 3;
    } else if (n == 2) {
      gemv_tokens<2>(g, t);
      t += 2;
    } else {
      gemv_tokens<1>(g, t);
      t += 1;
    }
  }
}

}  // namespace hs::cpu::detail
