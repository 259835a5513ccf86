// AVX-512 (F, BW, VL) kernels of matmul_f32act, chosen at run time (cpu_features.h). Every function here
// carries the target attribute and the helpers live in an anonymous namespace, so no AVX-512 code can be
// picked by the linker for a baseline caller; no std templates are instantiated here for the same reason.
// Algorithm and layouts: matmul_f32act.h; exactness of the dequantization: matmul_f32act.cpp.
#include <immintrin.h>

#include <cstring>

#include "backends/cpu/matmul_f32act.h"
#include "backends/cpu/quants.h"

#define HS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// gcc 12 warns about the deliberately undefined source operands inside the AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace hs::cpu::f32act_detail {

namespace {

HS_AVX512 inline float h2f(const uint8_t* p) {
  uint16_t v;
  __builtin_memcpy(&v, p, 2);
  return _cvtsh_ss(v);
}

// Prefetches the bytes kPrefetchBytes past row r's start, up to the matrix end.
HS_AVX512 inline void prefetch_ahead(const GemvArgs& g, int64_t r) {
  const uint8_t* end = g.w + size_t(g.rows) * g.row_bytes;
  const uint8_t* p = g.w + size_t(r) * g.row_bytes + kPrefetchBytes;
  for (size_t o = 0; o < g.row_bytes && p + o < end; o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(p + o), _MM_HINT_T0);
}

// ---------------------------------------------------------------------------------------------------------
// Row streaming: one 32-block -> two zmm of weights (columns 0-15, 16-31).

// Q4_0 / Q4_1 use a 16-entry table per block, table[q] = d * q + m (Q4_1, one FMA) or (q - 8) * d (Q4_0, an
// exact product), exactly the reference's values, and indexed by vpermps, which reads only the low 4 bits of
// each index lane: the zero-extended bytes select the low nibbles, the bytes shifted right by 4 the high
// nibbles.
template <GgmlType kType>
HS_AVX512 inline void dequant_block(const uint8_t* blk, __m512* w) {
  if constexpr (kType == GgmlType::Q8_0) {
    const __m512 d = _mm512_set1_ps(h2f(blk));
    w[0] = _mm512_mul_ps(
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)))),
        d);
    w[1] = _mm512_mul_ps(
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18)))),
        d);
  } else {
    constexpr bool kMin = kType == GgmlType::Q4_1;
    const __m512 d = _mm512_set1_ps(h2f(blk));
    __m512 table;
    if constexpr (kMin) {
      const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
      table = _mm512_fmadd_ps(iota, d, _mm512_set1_ps(h2f(blk + 2)));
    } else {  // (q - 8) * d: an exact product
      const __m512 iota8 = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
      table = _mm512_mul_ps(iota8, d);
    }
    const __m512i v =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (kMin ? 4 : 2))));
    w[0] = _mm512_permutexvar_ps(v, table);
    w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
  }
}

// Up to 8 tokens per pass. With 4 or fewer tokens, two blocks per step, each with its own pair of
// accumulators per token, so there are enough independent FMA chains.
template <int T, GgmlType kType>
HS_AVX512 void gemv_rows_q(const GemvArgs& g, int64_t t0) {
  constexpr size_t kBlockBytes = kType == GgmlType::Q8_0   ? sizeof(BlockQ8_0)
                                 : kType == GgmlType::Q4_1 ? sizeof(BlockQ4_1)
                                                           : sizeof(BlockQ4_0);
  constexpr int U = T <= 4 ? 2 : 1, A = 2 * U;  // blocks per step, accumulators per token
  const int64_t nb = g.cols / 32;
  const float* x[T];
  for (int t = 0; t < T; ++t) x[t] = g.x + (t0 + t) * g.ldx;
  for (int64_t r = g.r0; r < g.r1; ++r) {
    const uint8_t* row = g.w + size_t(r) * g.row_bytes;
    prefetch_ahead(g, r);
    __m512 acc[A * T];
#pragma GCC unroll 32
    for (int i = 0; i < A * T; ++i) acc[i] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + U <= nb; b += U) {
      __m512 w[A];
#pragma GCC unroll 2
      for (int u = 0; u < U; ++u) dequant_block<kType>(row + size_t(b + u) * kBlockBytes, w + 2 * u);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
#pragma GCC unroll 4
        for (int k = 0; k < A; ++k)
          acc[A * t + k] = _mm512_fmadd_ps(w[k], _mm512_loadu_ps(x[t] + 32 * b + 16 * k), acc[A * t + k]);
      }
    }
    if (b < nb) {
      __m512 w[2];
      dequant_block<kType>(row + size_t(b) * kBlockBytes, w);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        acc[A * t] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x[t] + 32 * b), acc[A * t]);
        acc[A * t + 1] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x[t] + 32 * b + 16), acc[A * t + 1]);
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      __m512 s = _mm512_add_ps(acc[A * t], acc[A * t + 1]);
      if constexpr (A == 4) s = _mm512_add_ps(s, _mm512_add_ps(acc[A * t + 2], acc[A * t + 3]));
      g.y[(t0 + t) * g.ldy + r] = _mm512_reduce_add_ps(s);
    }
  }
}

template <GgmlType kType>
HS_AVX512 void gemv_q(const GemvArgs& g) {
  for (int64_t t = 0; t < g.n_tokens;) {
    const int64_t left = g.n_tokens - t;
    const int n = left < kGemvTokensAvx512 ? int(left) : kGemvTokensAvx512;
    switch (n) {
      case 8:
        gemv_rows_q<8, kType>(g, t);
        break;
      case 7:
        gemv_rows_q<7, kType>(g, t);
        break;
      case 6:
        gemv_rows_q<6, kType>(g, t);
        break;
      case 5:
        gemv_rows_q<5, kType>(g, t);
        break;
      case 4:
        gemv_rows_q<4, kType>(g, t);
        break;
      case 3:
        gemv_rows_q<3, kType>(g, t);
        break;
      case 2:
        gemv_rows_q<2, kType>(g, t);
        break;
      default:
        gemv_rows_q<1, kType>(g, t);
        break;
    }
    t += n;
  }
}

// Dot products of one fp32 row with T tokens (masked tail).
template <int T>
HS_AVX512 void dot_row(const float* w, const float* const* x, int64_t K, float* out) {
  __m512 acc[T][2];
  for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= K; c += 32) {
    const __m512 w0 = _mm512_loadu_ps(w + c), w1 = _mm512_loadu_ps(w + c + 16);
    for (int t = 0; t < T; ++t) {
      acc[t][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x[t] + c), acc[t][0]);
      acc[t][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x[t] + c + 16), acc[t][1]);
    }
  }
  for (; c < K; c += 16) {
    const __mmask16 m = K - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - c)) - 1u);
    const __m512 w0 = _mm512_maskz_loadu_ps(m, w + c);
    for (int t = 0; t < T; ++t)
      acc[t][0] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m, x[t] + c), acc[t][0]);
  }
  for (int t = 0; t < T; ++t) out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
}

HS_AVX512 void gemv_generic(const GemvArgs& g) {
  for (int64_t r = g.r0; r < g.r1; ++r) {
    const uint8_t* src = g.w + size_t(r) * g.row_bytes;
    const float* wr = reinterpret_cast<const float*>(src);
    if (g.type != GgmlType::F32) {
      dequantize_row(g.type, src, g.row_buf, g.cols);
      wr = g.row_buf;
    }
    for (int64_t t = 0; t < g.n_tokens;) {
      const float* x[kGemvTokens];
      float out[kGemvTokens];
      const int64_t left = g.n_tokens - t;
      const int n = left < kGemvTokens ? int(left) : kGemvTokens;
      for (int i = 0; i < n; ++i) x[i] = g.x + (t + i) * g.ldx;
      if (n == 4) {
        dot_row<4>(wr, x, g.cols, out);
      } else if (n == 3) {
        dot_row<3>(wr, x, g.cols, out);
      } else if (n == 2) {
        dot_row<2>(wr, x, g.cols, out);
      } else {
        dot_row<1>(wr, x, g.cols, out);
      }
      for (int i = 0; i < n; ++i) g.y[(t + i) * g.ldy + r] = out[i];
      t += n;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Microkernel: 16 rows (one zmm) x NT tokens, one column per step, the token's activation broadcast from the
// packed tile by the FMA itself.

// Fewer than 8 tokens give too few independent FMA chains to hide the FMA latency: those tiles split the
// columns into U interleaved sets of accumulators, added at the end.
template <int NT>
HS_AVX512 void gemm_tile(const float* __restrict panel, int64_t K, const float* __restrict xp, float* y,
                         int64_t ldy, __mmask16 mask) {
  constexpr int S = kTileTokensAvx512, U = NT >= 8 ? 1 : NT >= 4 ? 2 : 4;
  __m512 acc[U * NT];
#pragma GCC unroll 48
  for (int i = 0; i < U * NT; ++i) acc[i] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + U <= K; c += U) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const __m512 w = _mm512_load_ps(panel + 16 * (c + u));
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t)
        acc[u * NT + t] = _mm512_fmadd_ps(w, _mm512_set1_ps(xp[S * (c + u) + t]), acc[u * NT + t]);
    }
  }
  for (; c < K; ++c) {
    const __m512 w = _mm512_load_ps(panel + 16 * c);
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(w, _mm512_set1_ps(xp[S * c + t]), acc[t]);
  }
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) {
    __m512 s = acc[t];
#pragma GCC unroll 4
    for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[u * NT + t]);
    _mm512_mask_storeu_ps(y + t * ldy, mask, s);
  }
}

}  // namespace

HS_AVX512 void gemv_avx512(const GemvArgs& g) {
  switch (g.type) {
    case GgmlType::Q4_0:
      gemv_q<GgmlType::Q4_0>(g);
      break;
    case GgmlType::Q4_1:
      gemv_q<GgmlType::Q4_1>(g);
      break;
    case GgmlType::Q8_0:
      gemv_q<GgmlType::Q8_0>(g);
      break;
    default:
      gemv_generic(g);
      break;
  }
}

// Per 32-block, the 16 rows' 16-byte quant groups are transposed into four "step" vectors (step k: dword lane
// i = bytes 4k..4k+3 of row i): four rows' groups per zmm (a 128-bit lane each), vpermd to lane k = dword k
// of the four rows, then a 4x4 transpose of 128-bit lanes across the four row groups. Each byte then gives
// one column (Q8_0) or two (Q4: low nibble column c, high nibble column c + 16), converted and scaled with
// the 16 rows' (d, m) in one vector. Row-contiguous loads only: gathers are slow once the rows leave L1.
namespace {

HS_AVX512 inline void transpose_steps(const uint8_t* const* rows, size_t at, __m512i* step) {
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m512i g[4];
  for (int q = 0; q < 4; ++q) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[4 * q] + at)));
    v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[4 * q + 1] + at)), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[4 * q + 2] + at)), 2);
    v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[4 * q + 3] + at)), 3);
    g[q] = _mm512_permutexvar_epi32(order, v);
  }
  const __m512i t0 = _mm512_shuffle_i64x2(g[0], g[1], 0x44), t1 = _mm512_shuffle_i64x2(g[0], g[1], 0xEE);
  const __m512i t2 = _mm512_shuffle_i64x2(g[2], g[3], 0x44), t3 = _mm512_shuffle_i64x2(g[2], g[3], 0xEE);
  step[0] = _mm512_shuffle_i64x2(t0, t2, 0x88);
  step[1] = _mm512_shuffle_i64x2(t0, t2, 0xDD);
  step[2] = _mm512_shuffle_i64x2(t1, t3, 0x88);
  step[3] = _mm512_shuffle_i64x2(t1, t3, 0xDD);
}

}  // namespace

HS_AVX512 bool pack_panel_avx512(GgmlType type, const uint8_t* row0, size_t row_bytes, int nr, int64_t cols,
                                 float* panel, const uint8_t* next, size_t next_bytes) {
  if (type != GgmlType::Q4_0 && type != GgmlType::Q4_1 && type != GgmlType::Q8_0) return false;
  const bool q8 = type == GgmlType::Q8_0, q4_1 = type == GgmlType::Q4_1;
  const size_t bb = q8 ? sizeof(BlockQ8_0) : q4_1 ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0);
  const size_t qs_at = q4_1 ? 4 : 2;
  // Rows past the matrix read row 0 (valid memory) and get d = m = 0, so their panel columns are zeros.
  const uint8_t* rows[kPanelRows];
  for (int i = 0; i < kPanelRows; ++i) rows[i] = row0 + size_t(i < nr ? i : 0) * row_bytes;
  const __mmask16 valid = __mmask16((1u << nr) - 1u);
  const __m512i lo16 = _mm512_set1_epi32(0xFFFF), m4 = _mm512_set1_epi32(0x0F);
  const int64_t nb = cols / 32;
  for (int64_t j = 0; j < nb; ++j) {
    const size_t off = size_t(j) * bb;
    if (next) {  // this block's share of the next panel's lines
      const size_t a = (next_bytes * size_t(j) / size_t(nb)) & ~size_t(63),
                   e = next_bytes * size_t(j + 1) / size_t(nb);
      for (size_t o = a; o < e; o += 64) _mm_prefetch(reinterpret_cast<const char*>(next + o), _MM_HINT_T1);
    }
    alignas(64) uint32_t dm[kPanelRows];  // (m << 16) | d of each row, fp16
    for (int i = 0; i < kPanelRows; ++i) __builtin_memcpy(&dm[i], rows[i] + off, 4);
    const __m512i gdm = _mm512_maskz_mov_epi32(valid, _mm512_load_si512(dm));
    const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_and_si512(gdm, lo16)));
    float* p = panel + j * 32 * kPanelRows;
    if (q8) {
      __m512i step[8];
      transpose_steps(rows, off + 2, step);
      transpose_steps(rows, off + 18, step + 4);
      for (int s = 0; s < 8; ++s) {  // bytes 4s..4s+3
        const __m512i g = step[s];
        float* q = p + (4 * s) * kPanelRows;
        _mm512_store_ps(
            q + 0 * kPanelRows,
            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(g, 24), 24)), d));
        _mm512_store_ps(
            q + 1 * kPanelRows,
            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(g, 16), 24)), d));
        _mm512_store_ps(q + 2 * kPanelRows,
                        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(g, 8), 24)), d));
        _mm512_store_ps(q + 3 * kPanelRows, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(g, 24)), d));
      }
    } else {
      const __m512 m = q4_1 ? _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(gdm, 16)))
                            : _mm512_mul_ps(d, _mm512_set1_ps(-8.0f));
      __m512i step[4];
      transpose_steps(rows, off + qs_at, step);
      for (int s = 0; s < 4; ++s) {  // bytes 4s..4s+3: columns 4s..4s+3 (low) and 16+4s.. (high)
        const __m512i g = step[s];
        for (int b = 0; b < 4; ++b) {
          const __m512i lo = _mm512_and_si512(_mm512_srli_epi32(g, 8 * b), m4);
          const __m512i hi = _mm512_and_si512(_mm512_srli_epi32(g, 8 * b + 4), m4);
          _mm512_store_ps(p + (4 * s + b) * kPanelRows, _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), d, m));
          _mm512_store_ps(p + (16 + 4 * s + b) * kPanelRows, _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), d, m));
        }
      }
    }
  }
  return true;
}

HS_AVX512 void gemm_avx512(const GemmArgs& g) {
  constexpr int S = kTileTokensAvx512;
  const __mmask16 mask = __mmask16((1u << g.nr) - 1u);
  for (int64_t t = g.t0; t < g.t1; t += S) {
    const float* xp = g.xpack + (t / S) * g.cols * S;
    float* y = g.y + t * g.ldy;
    const int64_t left = g.t1 - t;
    switch (left < S ? int(left) : S) {
      case 12:
        gemm_tile<12>(g.panel, g.cols, xp, y, g.ldy, mask);
        break;
      case 11:
        gemm_tile<11>(g.panel, g.cols, xp, y, g.ldy, mask);
        break;
      case 10:
        gemm_tile<10>(g.panel, g.cols, xp, y, g.ldy, mask);
        break;
      case 9:
        gemm_tile<9>(g.panel, g.cols, xp, y, g.ldy, mask);
        break;
      case 8:
        gemm_tile<8>(g.panel, g.cols, xp, y, g.ldy, mask);
        break;
      case 7:
        gemm_tile<7>(g.panel, g.cols, xp, y, g.ldy, mask);
        break;
      case 6:
        gemm_tile<6>(g.panel, g.cols, xp, y, g.ldy, mask);
        break;
      case 5:
        gemm_tile<5>(g.panel, g.cols, xp, y, g.ldy, mask);
        break;
      case 4:
        gemm_tile<4>(g.panel, g.cols, xp, y, g.ldy, mask);
        break;
      case 3:
        gemm_tile<3>(g.panel, g.cols, xp, y, g.ldy, mask);
        break;
      case 2:
        gemm_tile<2>(g.panel, g.cols, xp, y, g.ldy, mask);
        break;
      default:
        gemm_tile<1>(g.panel, g.cols, xp, y, g.ldy, mask);
        break;
    }
  }
}

}  // namespace hs::cpu::f32act_detail
