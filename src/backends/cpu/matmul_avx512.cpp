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

// Runs tile(t, y) over tokens [t0, t1) of g in passes of 8, 4, 2 or 1 tokens inside the ActQ's tiles of L
// tokens; tile is a template lambda on the pass size NT.
template <class Tile>
HS_AVX512 inline void run_token_passes(const GemmArgs& g, const Tile& tile) {
  const int64_t L = g.act->L;
  for (int64_t t = g.t0; t < g.t1;) {
    int64_t n = L - t % L;
    if (g.t1 - t < n) n = g.t1 - t;
    float* y = g.y + t * g.ldy;
    if (n >= 8) {
      tile.template operator()<8>(t, y);
      t += 8;
    } else if (n >= 4) {
      tile.template operator()<4>(t, y);
      t += 4;
    } else if (n >= 2) {
      tile.template operator()<2>(t, y);
      t += 2;
    } else {
      tile.template operator()<1>(t, y);
      t += 1;
    }
  }
}

template <int SB, bool kMin>
HS_AVX512 void gemm_run16(const GemmArgs& g) {
  const ActQ& a = *g.act;
  const __mmask16 mask = __mmask16((1u << g.nr_valid) - 1u);
  run_token_passes(g, [&]<int NT>(int64_t t, float* y) HS_AVX512 {
    gemm_tile16<NT, SB, kMin>(g.wpack, g.nsb, a.q(t), a.ds(t), a.off(t), y, g.ldy, mask);
  });
}

// ---------------------------------------------------------------------------------------------------------
// The same microkernel over weights packed ahead of time (layout in matmul_kernels.h): 4-bit values stay
// nibble-packed in memory (one and / shift+and per pair of steps, shared by all tokens) and the scales fp16,
// so streaming a tile costs the GGML bytes; the integer sums and the fp32 updates per token are
// gemm_tile16's, in the same order. Blocks of Q4_0 (288 bytes) and Q8_0 (544) are not 64-byte aligned:
// unaligned loads.

template <int NT, GgmlType kType>
HS_AVX512 void packed_tile16(const uint8_t* __restrict wp, int64_t nsb, const int32_t* __restrict xq,
                             const float* __restrict ds, const int32_t* __restrict off, float* y, int64_t ldy,
                             __mmask16 mask) {
  constexpr int L = kGemmTokensAvx512;
  constexpr bool kQ8 = kType == GgmlType::Q8_0, kMin = kType == GgmlType::Q4_1;
  constexpr int kQBytes = kQ8 ? 512 : 256, kBytes = kQBytes + (kMin ? 64 : 32);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t j = 0; j < nsb; ++j, wp += kBytes, xq += 8 * L, off += L, ds += 2 * L) {
    __m512i ia[NT];
    for (int t = 0; t < NT; ++t) ia[t] = _mm512_set1_epi32(off[t]);
    if constexpr (kQ8) {
      for (int k = 0; k < 8; ++k) {
        const __m512i w = _mm512_loadu_si512(wp + 64 * k);
        for (int t = 0; t < NT; ++t) ia[t] = _mm512_dpbusd_epi32(ia[t], w, _mm512_set1_epi32(xq[k * L + t]));
      }
    } else {
      for (int k = 0; k < 4; ++k) {
        const __m512i v = _mm512_loadu_si512(wp + 64 * k);
        const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        for (int t = 0; t < NT; ++t) ia[t] = _mm512_dpbusd_epi32(ia[t], lo, _mm512_set1_epi32(xq[k * L + t]));
        for (int t = 0; t < NT; ++t)
          ia[t] = _mm512_dpbusd_epi32(ia[t], hi, _mm512_set1_epi32(xq[(k + 4) * L + t]));
      }
    }
    const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + kQBytes)));
    for (int t = 0; t < NT; ++t)
      acc[t] =
          _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[t]), _mm512_mul_ps(dv, _mm512_set1_ps(ds[2 * t])), acc[t]);
    if constexpr (kMin) {
      const __m512 mv =
          _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + kQBytes + 32)));
      for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(mv, _mm512_set1_ps(ds[2 * t + 1]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ldy, mask, acc[t]);
}

template <GgmlType kType>
HS_AVX512 void packed_run16(const GemmArgs& g) {
  const ActQ& a = *g.act;
  const __mmask16 mask = __mmask16((1u << g.nr_valid) - 1u);
  run_token_passes(g, [&]<int NT>(int64_t t, float* y) HS_AVX512 {
    packed_tile16<NT, kType>(g.wpack, g.nsb, a.q(t), a.ds(t), a.off(t), y, g.ldy, mask);
  });
}

// ---------------------------------------------------------------------------------------------------------
// GEMV: as the AVX2 version (matmul_avx2.cpp) with vpdpbusd; the offset correction seeds the accumulator.

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

// Two consecutive blocks per zmm (the streaming loop's main step); the single-block ymm versions above handle
// an odd last block. Scales: [d0, m0 or 0, d1, m1 or 0] (fp16 -> fp32) times the activation's
// [dx0, sx0, dx1, sx1] gives both blocks' d * dx (lanes 0 and 2, spread over the two 256-bit halves by one
// vpermps) and, for Q4_1, m * dx * sum(q_x) (lanes 1 and 3, summed at the end of the row).

HS_AVX512 inline __m512 spread_pair_scales(__m128 prod) {
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2),
                               _mm512_castps128_ps512(prod));
}

template <int T, bool kMin>
HS_AVX512 inline void q4_pair(const uint8_t* blk, int64_t b, const int8_t* const* xq, const float* const* ds,
                              const int32_t* const* off, __m512* acc, __m128* macc) {
  constexpr int kBytes = kMin ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0), kQs = kMin ? 4 : 2;
  const uint8_t* blk1 = blk + kBytes;
  // [qs0, qs0, qs1, qs1] -> low nibbles of each in the first copy, high nibbles in the second
  __m512i q = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kQs)));
  q = _mm512_mask_broadcast_i32x4(q, 0xFF00, _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk1 + kQs)));
  q = _mm512_and_si512(
      _mm512_srlv_epi32(q, _mm512_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4, 0, 0, 0, 0, 4, 4, 4, 4)),
      _mm512_set1_epi8(0x0F));
  const uint64_t h = kMin ? uint64_t(uint32_t(load_i32(blk))) | uint64_t(uint32_t(load_i32(blk1))) << 32
                          : uint64_t(load_u16(blk)) | uint64_t(load_u16(blk1)) << 32;
  const __m128 dm = _mm_cvtph_ps(_mm_cvtsi64_si128(int64_t(h)));
  for (int t = 0; t < T; ++t) {
    __m512i seed = _mm512_setzero_si512();
    if constexpr (!kMin)  // -8 * sum(q_x) of each block, in one lane of its half
      seed = _mm512_inserti32x4(_mm512_zextsi128_si512(_mm_cvtsi32_si128(off[t][b])),
                                _mm_cvtsi32_si128(off[t][b + 1]), 2);
    const __m512i s = _mm512_dpbusd_epi32(seed, q, _mm512_loadu_si512(xq[t] + 32 * b));
    const __m128 prod = _mm_mul_ps(dm, _mm_loadu_ps(ds[t] + 2 * b));
    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), spread_pair_scales(prod), acc[t]);
    if constexpr (kMin) macc[t] = _mm_add_ps(macc[t], prod);
  }
}

template <int T>
HS_AVX512 inline void q8_pair(const uint8_t* blk, int64_t b, const int8_t* const* xq, const float* const* ds,
                              __m512* acc) {
  const uint8_t* blk1 = blk + sizeof(BlockQ8_0);
  const __m512i w = _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk1 + 2)), 1);
  // w * x = |w| * (x negated where w < 0); |w| <= 128 fits u8
  const __m512i wa = _mm512_abs_epi8(w);
  const __mmask64 neg = _mm512_movepi8_mask(w);
  const __m128 d =
      _mm_cvtph_ps(_mm_cvtsi64_si128(int64_t(uint64_t(load_u16(blk)) | uint64_t(load_u16(blk1)) << 32)));
  for (int t = 0; t < T; ++t) {
    const __m512i x = _mm512_loadu_si512(xq[t] + 32 * b);
    const __m512i xs = _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x);
    const __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wa, xs);
    const __m128 prod = _mm_mul_ps(d, _mm_loadu_ps(ds[t] + 2 * b));
    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), spread_pair_scales(prod), acc[t]);
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
    __m512 acc0[T], acc1[T];  // two accumulators so consecutive pairs do not wait on one fma chain
    __m256 tail[T];
    __m128 macc[T];
    for (int t = 0; t < T; ++t) {
      acc0[t] = acc1[t] = _mm512_setzero_ps();
      tail[t] = _mm256_setzero_ps();
      macc[t] = _mm_setzero_ps();
    }
    int64_t b = 0;
    for (; b + 4 <= g.nb; b += 4) {
      if constexpr (kQ8) {
        q8_pair<T>(row + b * kBlockBytes, b, xq, ds, acc0);
        q8_pair<T>(row + (b + 2) * kBlockBytes, b + 2, xq, ds, acc1);
      } else {
        q4_pair<T, kMin>(row + b * kBlockBytes, b, xq, ds, off, acc0, macc);
        q4_pair<T, kMin>(row + (b + 2) * kBlockBytes, b + 2, xq, ds, off, acc1, macc);
      }
    }
    if (b + 2 <= g.nb) {
      if constexpr (kQ8) {
        q8_pair<T>(row + b * kBlockBytes, b, xq, ds, acc0);
      } else {
        q4_pair<T, kMin>(row + b * kBlockBytes, b, xq, ds, off, acc0, macc);
      }
      b += 2;
    }
    if (b < g.nb) {
      if constexpr (kQ8) {
        q8_block<T>(row + b * kBlockBytes, b, xq, ds, tail);
      } else {
        q4_block<T, kMin>(row + b * kBlockBytes, b, xq, ds, off, tail, macc);
      }
    }
    for (int t = 0; t < T; ++t) {
      const __m512 s = _mm512_add_ps(acc0[t], acc1[t]);
      float v = hsum(_mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1))) + hsum(tail[t]);
      if constexpr (kMin) {  // lanes 1 and 3: the m * dx * sum(q_x) terms
        const __m128 m = _mm_add_ps(macc[t], _mm_movehl_ps(macc[t], macc[t]));
        v += _mm_cvtss_f32(_mm_movehdup_ps(m));
      }
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

// ---------------------------------------------------------------------------------------------------------
// Repacking 16 rows of Q4_0 / Q4_1 / Q8_0 per 32-column block: four rows' 16-byte halves go into one zmm
// (a 128-bit lane per row), vpermd turns that into lane k = step k of the four rows, and a 4x4 transpose of
// 128-bit lanes across the four row groups gives the 64-byte step vectors [row 0..15] x 4 bytes.

// 16 bytes at p, p + stride, p + 2 stride, p + 3 stride -> lane k = bytes 4k..4k+3 of each of the 4 rows.
HS_AVX512 inline __m512i quad_steps(const uint8_t* p, size_t stride) {
  __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + stride)), 1);
  v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * stride)), 2);
  v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 3 * stride)), 3);
  return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), v);
}

// g[q] lane k = step k of rows 4q..4q+3; stores step k of all 16 rows at out + 64 k (k = 0..3).
HS_AVX512 inline void store_transposed(const __m512i* g, uint8_t* out) {
  const __m512i t0 = _mm512_shuffle_i64x2(g[0], g[1], 0x44), t1 = _mm512_shuffle_i64x2(g[0], g[1], 0xEE);
  const __m512i t2 = _mm512_shuffle_i64x2(g[2], g[3], 0x44), t3 = _mm512_shuffle_i64x2(g[2], g[3], 0xEE);
  _mm512_store_si512(out + 0, _mm512_shuffle_i64x2(t0, t2, 0x88));
  _mm512_store_si512(out + 64, _mm512_shuffle_i64x2(t0, t2, 0xDD));
  _mm512_store_si512(out + 128, _mm512_shuffle_i64x2(t1, t3, 0x88));
  _mm512_store_si512(out + 192, _mm512_shuffle_i64x2(t1, t3, 0xDD));
}

// fp16 at byte offset `at` of block j of each of the 16 rows -> 16 floats.
HS_AVX512 inline __m512 gather_halves(const uint8_t* blk0, __m512i row_offsets, int at) {
  const __m512i g = _mm512_i32gather_epi32(row_offsets, blk0 + at, 1);
  return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
}

}  // namespace

HS_AVX512 bool pack_tile_avx512(GgmlType type, const IntScheme& s, const uint8_t* row0, size_t row_bytes,
                                int64_t nsb, uint8_t* out) {
  constexpr int NR = kGemmRowsAvx512;
  if (s.sb != 32 || (type != GgmlType::Q4_0 && type != GgmlType::Q4_1 && type != GgmlType::Q8_0))
    return false;
  if (row_bytes * NR > size_t(1) << 30) return false;  // gather offsets are int32
  const bool q8 = type == GgmlType::Q8_0;
  const size_t bb = q8 ? sizeof(BlockQ8_0) : type == GgmlType::Q4_1 ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0);
  const int qs_at = type == GgmlType::Q4_1 ? 4 : 2;
  const size_t sub_bytes = packed_subblock_bytes(s, NR);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i flip = _mm512_set1_epi8(s.offset == 128 ? char(0x80) : 0);
  const __m512i row_offsets =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(int(row_bytes)));
  for (int64_t j = 0; j < nsb; ++j, out += sub_bytes) {
    const uint8_t* blk0 = row0 + size_t(j) * bb;
    __m512i lo[4], hi[4];
    for (int q = 0; q < 4; ++q) {
      const uint8_t* p = blk0 + size_t(4 * q) * row_bytes + qs_at;
      if (q8) {  // steps 0..3 from bytes 0..15, steps 4..7 from bytes 16..31
        lo[q] = _mm512_xor_si512(quad_steps(p, row_bytes), flip);
        hi[q] = _mm512_xor_si512(quad_steps(p + 16, row_bytes), flip);
      } else {  // steps 0..3 are the low nibbles, 4..7 the high nibbles
        const __m512i v = quad_steps(p, row_bytes);
        lo[q] = _mm512_and_si512(v, m4);
        hi[q] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
      }
    }
    store_transposed(lo, out);
    store_transposed(hi, out + 256);
    float* dv = reinterpret_cast<float*>(out + 64 * 8);
    _mm512_store_ps(dv, gather_halves(blk0, row_offsets, 0));
    if (s.has_min) _mm512_store_ps(dv + NR, gather_halves(blk0, row_offsets, 2));
  }
  return true;
}

HS_AVX512 void gemm_int_avx512(const IntScheme& s, const GemmArgs& g) {
  if (s.sb == 16) {
    gemm_run16<16, false>(g);  // Q6_K
  } else if (s.has_min) {
    gemm_run16<32, true>(g);  // Q4_1, Q4_K, Q5_K
  } else {
    gemm_run16<32, false>(g);  // Q4_0, Q8_0 (u8 = q + 128)
  }
}

HS_AVX512 void gemm_packed_avx512(GgmlType type, const GemmArgs& g) {
  switch (type) {
    case GgmlType::Q4_0:
      packed_run16<GgmlType::Q4_0>(g);
      break;
    case GgmlType::Q4_1:
      packed_run16<GgmlType::Q4_1>(g);
      break;
    default:
      packed_run16<GgmlType::Q8_0>(g);
      break;
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
