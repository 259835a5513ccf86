// AVX2 integer kernels for matmul (the baseline ISA). Layouts: matmul_kernels.h.
#include <immintrin.h>

#include <algorithm>

#include "backends/cpu/matmul_kernels.h"
#include "backends/cpu/quants.h"

namespace hs::cpu::detail {

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int load_i32(const void* p) {
  int v;
  __builtin_memcpy(&v, p, 4);
  return v;
}
inline int load_u16(const void* p) {
  uint16_t v;
  __builtin_memcpy(&v, p, 2);
  return v;
}

// 16 bytes of packed nibbles -> 32 u8 in value order (low nibbles, then high nibbles).
inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm256_and_si256(_mm256_srlv_epi32(b, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
                          _mm256_set1_epi8(0x0F));
}

// sum of u8 x s8 over 32 bytes, as 8 int32 partial sums (lane i: bytes 4i..4i+3). Adjacent pairs stay
// below 2 * 128 * 127 < 32768 (|q| <= 127 activations; u8 <= 63, or |w| <= 128 via abs/sign for Q8_0), so
// maddubs never saturates.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// ---------------------------------------------------------------------------------------------------------
// GEMM: a packed tile of 8 rows x NT tokens. One ymm lane per row; each 4-column step is one maddubs per
// token (u8 weights x the token's 4 int8 activations broadcast). Results of kI16 steps are summed in int16
// (bounded by IntScheme::i16_steps), then widened with madd and converted to fp32 once per sub-block.

template <int NT, int SB, bool kMin, int kI16, bool kSigned>
void gemm_tile8(const uint8_t* __restrict wp, int64_t nsb, const int32_t* __restrict xq,
                const float* __restrict ds, const int32_t* __restrict off, float* y, int64_t ldy, int nr) {
  constexpr int L = kGemmTokensAvx2, kSteps = SB / 4;
  static_assert(kSteps % kI16 == 0);
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t j = 0; j < nsb; ++j) {
    __m256i ia[NT];
    for (int t = 0; t < NT; ++t) ia[t] = _mm256_set1_epi32(off[t]);
    for (int g = 0; g < kSteps; g += kI16) {
      __m256i s16[NT];
      for (int kk = 0; kk < kI16; ++kk) {
        const int k = g + kk;
        const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(wp + 32 * k));
        __m256i wa = w;
        if constexpr (kSigned) wa = _mm256_abs_epi8(w);
        for (int t = 0; t < NT; ++t) {
          const __m256i x = _mm256_set1_epi32(xq[k * L + t]);
          __m256i p;
          if constexpr (kSigned) {
            p = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(x, w));
          } else {
            p = _mm256_maddubs_epi16(w, x);
          }
          s16[t] = kk == 0 ? p : _mm256_add_epi16(s16[t], p);
        }
      }
      for (int t = 0; t < NT; ++t) ia[t] = _mm256_add_epi32(ia[t], _mm256_madd_epi16(s16[t], ones16));
    }
    const __m256 dv = _mm256_load_ps(reinterpret_cast<const float*>(wp + 32 * kSteps));
    for (int t = 0; t < NT; ++t)
      acc[t] =
          _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[t]), _mm256_mul_ps(dv, _mm256_set1_ps(ds[2 * t])), acc[t]);
    if constexpr (kMin) {
      const __m256 mv = _mm256_load_ps(reinterpret_cast<const float*>(wp + 32 * kSteps + 32));
      for (int t = 0; t < NT; ++t) acc[t] = _mm256_fmadd_ps(mv, _mm256_set1_ps(ds[2 * t + 1]), acc[t]);
    }
    wp += 32 * (kSteps + 1 + (kMin ? 1 : 0));
    xq += kSteps * L;
    off += L;
    if (SB == 32 || (j & 1)) ds += 2 * L;  // one (d, d*sum) pair per 32 columns
  }
  if (nr == 8) {
    for (int t = 0; t < NT; ++t) _mm256_storeu_ps(y + t * ldy, acc[t]);
  } else {
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int t = 0; t < NT; ++t) _mm256_maskstore_ps(y + t * ldy, mask, acc[t]);
  }
}

template <int SB, bool kMin, int kI16, bool kSigned>
void gemm_run8(const GemmArgs& g) {
  const ActQ& a = *g.act;
  for (int64_t t = g.t0; t < g.t1;) {
    const int64_t n = std::min<int64_t>(a.L - t % a.L, g.t1 - t);
    float* y = g.y + t * g.ldy;
    if (n >= 4) {
      gemm_tile8<4, SB, kMin, kI16, kSigned>(g.wpack, g.nsb, a.q(t), a.ds(t), a.off(t), y, g.ldy, g.nr_valid);
      t += 4;
    } else if (n >= 2) {
      gemm_tile8<2, SB, kMin, kI16, kSigned>(g.wpack, g.nsb, a.q(t), a.ds(t), a.off(t), y, g.ldy, g.nr_valid);
      t += 2;
    } else {
      gemm_tile8<1, SB, kMin, kI16, kSigned>(g.wpack, g.nsb, a.q(t), a.ds(t), a.off(t), y, g.ldy, g.nr_valid);
      t += 1;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// GEMV: one weight row at a time against T tokens, straight from the GGML blocks. Two accumulators per
// token (even / odd blocks) keep the fma chain from limiting the streaming rate.

template <int T, bool kMin>
inline void q4_block(const uint8_t* blk, int64_t b, const int8_t* const* xq, const float* const* ds,
                     const int32_t* const* off, __m256* acc, __m128* macc) {
  const __m256i q = unpack_nibbles(blk + (kMin ? 4 : 2));
  // [d, m, 0, 0] (Q4_1) or [d, 0, 0, 0] (Q4_0)
  const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(kMin ? load_i32(blk) : load_u16(blk)));
  for (int t = 0; t < T; ++t) {
    __m256i s = dot_u8s8(q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + 32 * b)));
    // -8 * sum(q_x), added to one lane (the lanes are summed at the end)
    if constexpr (!kMin) s = _mm256_add_epi32(s, _mm256_zextsi128_si256(_mm_cvtsi32_si128(off[t][b])));
    // [d * dx, m * dx * sum(q_x)]
    const __m128 prod =
        _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(ds[t] + 2 * b))));
    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_broadcastss_ps(prod), acc[t]);
    if constexpr (kMin) macc[t] = _mm_add_ps(macc[t], prod);
  }
}

template <int T>
inline void q8_block(const uint8_t* blk, int64_t b, const int8_t* const* xq, const float* const* ds,
                     __m256* acc) {
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
  const __m256i wa = _mm256_abs_epi8(w);
  const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128(load_u16(blk)));
  for (int t = 0; t < T; ++t) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + 32 * b));
    const __m256i s = dot_u8s8(wa, _mm256_sign_epi8(x, w));
    const __m128 prod = _mm_mul_ss(d, _mm_load_ss(ds[t] + 2 * b));
    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_broadcastss_ps(prod), acc[t]);
  }
}

template <int T, GgmlType kType>
void gemv_rows(const GemvArgs& g, int64_t t0) {
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
      if constexpr (kMin) v += _mm_cvtss_f32(_mm_movehdup_ps(macc[t]));  // lane 1: sum of m * dx * sum(q_x)
      g.y[(t0 + t) * g.ldy + r] = v;
    }
  }
}

// K-quants, one super-block (256 columns = 8 activation blocks) at a time. Q4_K / Q5_K: sub-block s of 32
// values is d * sc_s * u - dmin * m_s (u = 4 or 5 bits), so per activation block b the row gets
// d * sc_s * dx_b * sum(u q_x) - dmin * m_s * dx_b * sum(q_x). Q6_K: 16-value sub-blocks d * sc * (u - 32);
// the dot of a 32-block yields lanes 0-3 for the first 16 values and 4-7 for the next, each seeded with its
// -32 * sum(q_x) and scaled by its own d * sc * dx.

template <int T, GgmlType kType>
void gemv_kquant_rows(const GemvArgs& g, int64_t t0) {
  constexpr bool kQ5 = kType == GgmlType::Q5_K;
  constexpr size_t kBlockBytes = kType == GgmlType::Q6_K ? sizeof(BlockQ6_K)
                                 : kQ5                   ? sizeof(BlockQ5_K)
                                                         : sizeof(BlockQ4_K);
  const ActQ& a = *g.act;
  const int8_t* xq[T];
  const float* ds[T];
  const int32_t* off[T];
  for (int t = 0; t < T; ++t) {
    xq[t] = reinterpret_cast<const int8_t*>(a.q(t0 + t));
    ds[t] = a.ds(t0 + t);
    off[t] = a.off(t0 + t);
  }
  const int64_t n_super = g.nb / 8;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t r = g.r0; r < g.r1; ++r) {
    const uint8_t* row = g.w + r * g.row_bytes;
    __m256 acc[T];
    float msum[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps(), msum[t] = 0.0f;
    for (int64_t i = 0; i < n_super; ++i) {
      const uint8_t* blk = row + size_t(i) * kBlockBytes;
      if constexpr (kType == GgmlType::Q6_K) {
        const BlockQ6_K& b6 = *reinterpret_cast<const BlockQ6_K*>(blk);
        const float d = _cvtsh_ss(b6.d);
        const __m256i m2 = _mm256_set1_epi8(3);
        for (int h = 0; h < 2; ++h) {
          const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b6.ql + 64 * h));
          const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b6.ql + 64 * h + 32));
          const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b6.qh + 32 * h));
          __m256i q[4];
          q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4));
          q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                 _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4));
          q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                 _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4));
          q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                 _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4));
          for (int gq = 0; gq < 4; ++gq) {
            const int64_t b = 8 * i + 4 * h + gq;  // activation block
            const int8_t* sc = b6.scales + 8 * h + 2 * gq;
            const __m256 dsc = _mm256_setr_m128(_mm_set1_ps(d * float(sc[0])), _mm_set1_ps(d * float(sc[1])));
            for (int t = 0; t < T; ++t) {
              __m256i p =
                  dot_u8s8(q[gq], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + 32 * b)));
              p = _mm256_add_epi32(p, _mm256_setr_epi32(off[t][2 * b], 0, 0, 0, off[t][2 * b + 1], 0, 0, 0));
              acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p),
                                       _mm256_mul_ps(dsc, _mm256_set1_ps(ds[t][2 * b])), acc[t]);
            }
          }
        }
      } else {
        const BlockQ4_K& b4 =
            *reinterpret_cast<const BlockQ4_K*>(blk);  // d, dmin, scales: same place in Q5_K
        const float d = _cvtsh_ss(b4.d), dmin = _cvtsh_ss(b4.dmin);
        const uint8_t* qs = kQ5 ? reinterpret_cast<const BlockQ5_K*>(blk)->qs : b4.qs;
        __m256i qh = _mm256_setzero_si256();
        if constexpr (kQ5)
          qh = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(reinterpret_cast<const BlockQ5_K*>(blk)->qh));
        for (int s = 0; s < 8; ++s) {
          const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * (s / 2)));
          __m256i q = _mm256_and_si256(s % 2 ? _mm256_srli_epi16(raw, 4) : raw, m4);
          if constexpr (kQ5) {  // bit s of every qh byte -> bit 4
            const __m256i bit =
                _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(s)), _mm256_set1_epi8(1));
            q = _mm256_or_si256(q, _mm256_slli_epi16(bit, 4));
          }
          uint8_t sc, mn;
          get_scale_min_k4(s, b4.scales, &sc, &mn);
          const float dsc = d * float(sc), dm = dmin * float(mn);
          const int64_t b = 8 * i + s;
          for (int t = 0; t < T; ++t) {
            const __m256i p =
                dot_u8s8(q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + 32 * b)));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dsc * ds[t][2 * b]), acc[t]);
            msum[t] += dm * ds[t][2 * b + 1];
          }
        }
      }
    }
    for (int t = 0; t < T; ++t) g.y[(t0 + t) * g.ldy + r] = hsum(acc[t]) - msum[t];
  }
}

template <int T>
void gemv_tokens(const GemvArgs& g, int64_t t0) {
  switch (g.type) {
    case GgmlType::Q4_0:
      gemv_rows<T, GgmlType::Q4_0>(g, t0);
      break;
    case GgmlType::Q4_1:
      gemv_rows<T, GgmlType::Q4_1>(g, t0);
      break;
    case GgmlType::Q8_0:
      gemv_rows<T, GgmlType::Q8_0>(g, t0);
      break;
    case GgmlType::Q4_K:
      gemv_kquant_rows<T, GgmlType::Q4_K>(g, t0);
      break;
    case GgmlType::Q5_K:
      gemv_kquant_rows<T, GgmlType::Q5_K>(g, t0);
      break;
    default:
      gemv_kquant_rows<T, GgmlType::Q6_K>(g, t0);
      break;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Repacking 8 rows of Q4_0 / Q4_1 / Q8_0 per 32-column block: rows are taken two at a time into a ymm,
// permuted so each 64-bit element holds one 4-column step of both rows, then 4x4-transposed (64-bit
// elements) across the four row pairs into the 8 step vectors [row 0..7] x 4 bytes.

// a, b: 16 bytes (4 steps) of rows 2p and 2p+1 -> q[k] (64-bit element k) = step k of both rows.
inline __m256i pair_steps(const uint8_t* a, const uint8_t* b) {
  const __m256i v =
      _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a))),
                              _mm_loadu_si128(reinterpret_cast<const __m128i*>(b)), 1);
  return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// g[p] holds steps 0..3 of row pair p; stores step k (k = 0..3) of all 8 rows at out + 32 k.
inline void store_transposed(const __m256i* g, uint8_t* out) {
  const __m256i a = _mm256_unpacklo_epi64(g[0], g[1]), b = _mm256_unpackhi_epi64(g[0], g[1]);
  const __m256i c = _mm256_unpacklo_epi64(g[2], g[3]), d = _mm256_unpackhi_epi64(g[2], g[3]);
  _mm256_store_si256(reinterpret_cast<__m256i*>(out + 0), _mm256_permute2x128_si256(a, c, 0x20));
  _mm256_store_si256(reinterpret_cast<__m256i*>(out + 32), _mm256_permute2x128_si256(b, d, 0x20));
  _mm256_store_si256(reinterpret_cast<__m256i*>(out + 64), _mm256_permute2x128_si256(a, c, 0x31));
  _mm256_store_si256(reinterpret_cast<__m256i*>(out + 96), _mm256_permute2x128_si256(b, d, 0x31));
}

// fp16 at byte offset `at` of block j of each of the 8 rows -> 8 floats.
inline __m256 gather_halves(const uint8_t* blk0, size_t row_bytes, int at) {
  const __m256i idx =
      _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(int(row_bytes)));
  const __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(blk0 + at), idx, 1);
  // low 16 bits of each dword -> 8 halves
  const __m256i packed =
      _mm256_shuffle_epi8(g, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1,
                                              4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1));
  const __m128i h = _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
  return _mm256_cvtph_ps(h);
}

}  // namespace

bool pack_tile_avx2(GgmlType type, const IntScheme& s, const uint8_t* row0, size_t row_bytes, int64_t nsb,
                    uint8_t* out) {
  constexpr int NR = kGemmRowsAvx2;
  if (s.sb != 32 || (type != GgmlType::Q4_0 && type != GgmlType::Q4_1 && type != GgmlType::Q8_0))
    return false;
  if (row_bytes * NR > size_t(1) << 30) return false;  // gather offsets are int32
  const bool q8 = type == GgmlType::Q8_0;
  const size_t bb = q8 ? sizeof(BlockQ8_0) : type == GgmlType::Q4_1 ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0);
  const int qs_at = type == GgmlType::Q4_1 ? 4 : 2;
  const size_t sub_bytes = packed_subblock_bytes(s, NR);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i flip = _mm256_set1_epi8(s.offset == 128 ? char(0x80) : 0);
  for (int64_t j = 0; j < nsb; ++j, out += sub_bytes) {
    const uint8_t* blk0 = row0 + size_t(j) * bb;
    __m256i lo[4], hi[4];
    for (int p = 0; p < 4; ++p) {
      const uint8_t* a = blk0 + size_t(2 * p) * row_bytes + qs_at;
      const uint8_t* b = a + row_bytes;
      if (q8) {  // steps 0..3 from bytes 0..15, steps 4..7 from bytes 16..31
        lo[p] = _mm256_xor_si256(pair_steps(a, b), flip);
        hi[p] = _mm256_xor_si256(pair_steps(a + 16, b + 16), flip);
      } else {  // steps 0..3 are the low nibbles, 4..7 the high nibbles
        const __m256i v = pair_steps(a, b);
        lo[p] = _mm256_and_si256(v, m4);
        hi[p] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
      }
    }
    store_transposed(lo, out);
    store_transposed(hi, out + 128);
    float* dv = reinterpret_cast<float*>(out + 32 * NR);
    _mm256_store_ps(dv, gather_halves(blk0, row_bytes, 0));
    if (s.has_min) _mm256_store_ps(dv + NR, gather_halves(blk0, row_bytes, 2));
  }
  return true;
}

void gemm_int_avx2(const IntScheme& s, const GemmArgs& g) {
  if (s.sb == 16) {
    gemm_run8<16, false, 2, false>(g);  // Q6_K: u6, two steps per int16 sum
  } else if (s.signed_q) {
    gemm_run8<32, false, 1, true>(g);  // Q8_0
  } else if (!s.has_min) {
    gemm_run8<32, false, 8, false>(g);  // Q4_0
  } else if (s.i16_steps == 8) {
    gemm_run8<32, true, 8, false>(g);  // Q4_1, Q4_K
  } else {
    gemm_run8<32, true, 4, false>(g);  // Q5_K
  }
}

void gemv_int_avx2(const GemvArgs& g) {
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
