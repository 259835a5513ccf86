// matmul_f32act: dispatch, threading, activation repacking, the generic (any type) panel builder and the AVX2
// kernels. The AVX-512 kernels live in matmul_f32act_avx512.cpp. Layouts and the algorithm: matmul_f32act.h.
//
// Exactness of the in-register dequantization (the same values as dequantize_row_ref):
//   Q4_1: d * q + m with d * q exact (4 x 11 significant bits), so fma(q, d, m) rounds once, like the ref;
//   Q4_0: (q - 8) * d = fma(q, d, -8 d): -8 d is exact and the exact value is the same, so is its rounding;
//   Q8_0: q * d is exact (8 x 11 bits).
#include "backends/cpu/matmul_f32act.h"
#include "backends/cpu/scratch.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "backends/cpu/cpu_features.h"
#include "backends/cpu/quants.h"
#include "util/common.h"

namespace hs::cpu {

namespace f32act_detail {
namespace {

// Measured with bench/matmul_f32act_bench.cpp (2 threads, SmolLM2 shapes): below ~12 tokens the row-streaming
// kernels win (their dequantization is shared by up to 4 or 8 tokens; a panel costs ~0.1 ns per weight).
std::atomic<int64_t> g_gemm_min_tokens{12};

inline float h2f(uint16_t h) {
  return _cvtsh_ss(h);
}

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Prefetches the bytes kPrefetchBytes past row r's start, up to the matrix end.
inline void prefetch_ahead(const GemvArgs& g, int64_t r) {
  const uint8_t* end = g.w + size_t(g.rows) * g.row_bytes;
  const uint8_t* p = g.w + size_t(r) * g.row_bytes + kPrefetchBytes;
  for (size_t o = 0; o < g.row_bytes && p + o < end; o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(p + o), _MM_HINT_T0);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// ---------------------------------------------------------------------------------------------------------
// AVX2 row streaming. One 32-block -> 4 ymm of weights (columns 0-7, 8-15, 16-23, 24-31).

template <GgmlType kType>
inline void dequant_block_avx2(const uint8_t* blk, __m256* w) {
  if constexpr (kType == GgmlType::Q8_0) {
    const __m256 d = _mm256_set1_ps(h2f(load_u16(blk)));
    for (int k = 0; k < 4; ++k) {
      const __m256i q =
          _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * k)));
      w[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
    }
  } else {
    constexpr bool kMin = kType == GgmlType::Q4_1;
    const float df = h2f(load_u16(blk));
    const __m256 d = _mm256_set1_ps(df);
    const __m256 m = _mm256_set1_ps(kMin ? h2f(load_u16(blk + 2)) : -8.0f * df);
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (kMin ? 4 : 2)));
    const __m256i v0 = _mm256_cvtepu8_epi32(b), v1 = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(b, b));
    const __m256i m4 = _mm256_set1_epi32(0x0F);
    w[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v0, m4)), d, m);
    w[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v1, m4)), d, m);
    w[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4)), d, m);
    w[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4)), d, m);
  }
}

template <int T, GgmlType kType>
void gemv_rows_q_avx2(const GemvArgs& g, int64_t t0) {
  constexpr int A = T == 1 ? 4 : 2;  // accumulators per token (independent FMA chains)
  constexpr size_t kBlockBytes = kType == GgmlType::Q8_0   ? sizeof(BlockQ8_0)
                                 : kType == GgmlType::Q4_1 ? sizeof(BlockQ4_1)
                                                           : sizeof(BlockQ4_0);
  const int64_t nb = g.cols / 32;
  const float* x[T];
  for (int t = 0; t < T; ++t) x[t] = g.x + (t0 + t) * g.ldx;
  for (int64_t r = g.r0; r < g.r1; ++r) {
    const uint8_t* row = g.w + size_t(r) * g.row_bytes;
    prefetch_ahead(g, r);
    __m256 acc[T][A];
    for (int t = 0; t < T; ++t)
      for (int a = 0; a < A; ++a) acc[t][a] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m256 w[4];
      dequant_block_avx2<kType>(row + size_t(b) * kBlockBytes, w);
      for (int t = 0; t < T; ++t)
        for (int k = 0; k < 4; ++k)
          acc[t][k % A] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(x[t] + 32 * b + 8 * k), acc[t][k % A]);
    }
    for (int t = 0; t < T; ++t) {
      __m256 s = acc[t][0];
      for (int a = 1; a < A; ++a) s = _mm256_add_ps(s, acc[t][a]);
      g.y[(t0 + t) * g.ldy + r] = hsum(s);
    }
  }
}

// Dot products of one fp32 row with T tokens.
template <int T>
void dot_row_avx2(const float* w, const float* const* x, int64_t K, float* out) {
  __m256 acc[T][2];
  for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= K; c += 16) {
    const __m256 w0 = _mm256_loadu_ps(w + c), w1 = _mm256_loadu_ps(w + c + 8);
    for (int t = 0; t < T; ++t) {
      acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t] + c), acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[t] + c + 8), acc[t][1]);
    }
  }
  if (c + 8 <= K) {
    const __m256 w0 = _mm256_loadu_ps(w + c);
    for (int t = 0; t < T; ++t) acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t] + c), acc[t][0]);
    c += 8;
  }
  for (int t = 0; t < T; ++t) {
    float s = hsum(_mm256_add_ps(acc[t][0], acc[t][1]));
    for (int64_t k = c; k < K; ++k) s = std::fma(w[k], x[t][k], s);
    out[t] = s;
  }
}

// Any type: each row dequantized once into row_buf (F32 read in place), then all tokens.
void gemv_generic_avx2(const GemvArgs& g) {
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
      const int n = int(std::min<int64_t>(kGemvTokens, g.n_tokens - t));
      for (int i = 0; i < n; ++i) x[i] = g.x + (t + i) * g.ldx;
      switch (n) {
        case 4:
          dot_row_avx2<4>(wr, x, g.cols, out);
          break;
        case 3:
          dot_row_avx2<3>(wr, x, g.cols, out);
          break;
        case 2:
          dot_row_avx2<2>(wr, x, g.cols, out);
          break;
        default:
          dot_row_avx2<1>(wr, x, g.cols, out);
          break;
      }
      for (int i = 0; i < n; ++i) g.y[(t + i) * g.ldy + r] = out[i];
      t += n;
    }
  }
}

template <GgmlType kType>
void gemv_q_avx2(const GemvArgs& g) {
  for (int64_t t = 0; t < g.n_tokens;) {
    switch (std::min<int64_t>(kGemvTokens, g.n_tokens - t)) {
      case 4:
        gemv_rows_q_avx2<4, kType>(g, t);
        t += 4;
        break;
      case 3:
        gemv_rows_q_avx2<3, kType>(g, t);
        t += 3;
        break;
      case 2:
        gemv_rows_q_avx2<2, kType>(g, t);
        t += 2;
        break;
      default:
        gemv_rows_q_avx2<1, kType>(g, t);
        t += 1;
        break;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// AVX2 panel packing (Q4_0 / Q4_1 / Q8_0): per 32-block, gathers of 4 bytes of the 16 rows (two ymm of 8
// rows), one column per byte (Q8_0) or two per byte (low nibble: column j, high nibble: column j + 16).

// Steps of 8 rows: step k (dword lane i = bytes at+4k..at+4k+3 of row i), k = 0..3, from the rows' 16-byte
// groups: rows i and i + 4 share a ymm (one 128-bit lane each), then a 4x4 dword transpose inside the lanes.
inline void transpose_steps8(const uint8_t* const* rows, size_t at, __m256i* step) {
  __m256i v[4], t[4];
  for (int i = 0; i < 4; ++i)
    v[i] = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(rows[i + 4] + at),
                               reinterpret_cast<const __m128i*>(rows[i] + at));
  t[0] = _mm256_unpacklo_epi32(v[0], v[1]);  // r0d0 r1d0 r0d1 r1d1
  t[1] = _mm256_unpackhi_epi32(v[0], v[1]);  // r0d2 r1d2 r0d3 r1d3
  t[2] = _mm256_unpacklo_epi32(v[2], v[3]);
  t[3] = _mm256_unpackhi_epi32(v[2], v[3]);
  step[0] = _mm256_unpacklo_epi64(t[0], t[2]);
  step[1] = _mm256_unpackhi_epi64(t[0], t[2]);
  step[2] = _mm256_unpacklo_epi64(t[1], t[3]);
  step[3] = _mm256_unpackhi_epi64(t[1], t[3]);
}

// 8 fp16 values (the low or high halves of 8 dwords) -> floats.
inline __m256 halves_to_ps(__m256i v) {
  return _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

}  // namespace

// Per 32-block: the rows' quant bytes transposed into step vectors (8 rows each, transpose_steps8); each byte
// gives one column (Q8_0) or two (Q4: low nibble column c, high nibble column c + 16), converted and scaled
// with the 8 rows' (d, m) in one vector. Row-contiguous loads only (gathers are slow once rows leave L1).
bool pack_panel_avx2(GgmlType type, const uint8_t* row0, size_t row_bytes, int nr, int64_t cols, float* panel,
                     const uint8_t* next, size_t next_bytes) {
  if (type != GgmlType::Q4_0 && type != GgmlType::Q4_1 && type != GgmlType::Q8_0) return false;
  const bool q8 = type == GgmlType::Q8_0, q4_1 = type == GgmlType::Q4_1;
  const size_t bb = q8 ? sizeof(BlockQ8_0) : q4_1 ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0);
  const size_t qs_at = q4_1 ? 4 : 2;
  // Rows past the matrix read row 0 (valid memory) and get d = m = 0, so their panel columns are zeros.
  const uint8_t* rows[kPanelRows];
  for (int i = 0; i < kPanelRows; ++i) rows[i] = row0 + size_t(i < nr ? i : 0) * row_bytes;
  const __m256i m4 = _mm256_set1_epi32(0x0F), lo16 = _mm256_set1_epi32(0xFFFF);
  const int64_t nb = cols / 32;
  for (int64_t j = 0; j < nb; ++j) {
    const size_t off = size_t(j) * bb;
    if (next) {  // this block's share of the next panel's lines
      const size_t a = (next_bytes * size_t(j) / size_t(nb)) & ~size_t(63),
                   e = next_bytes * size_t(j + 1) / size_t(nb);
      for (size_t o = a; o < e; o += 64) _mm_prefetch(reinterpret_cast<const char*>(next + o), _MM_HINT_T1);
    }
    alignas(32) uint32_t dm[kPanelRows];  // (m << 16) | d of each row, fp16; 0 past the matrix
    for (int i = 0; i < kPanelRows; ++i) {
      dm[i] = 0;
      if (i < nr) std::memcpy(&dm[i], rows[i] + off, 4);
    }
    float* p = panel + j * 32 * kPanelRows;
    for (int h = 0; h < 2; ++h) {  // rows 8h..8h+7
      const uint8_t* const* r8 = rows + 8 * h;
      const __m256i g = _mm256_load_si256(reinterpret_cast<const __m256i*>(dm + 8 * h));
      const __m256 d = halves_to_ps(_mm256_and_si256(g, lo16));
      if (q8) {
        __m256i step[8];
        transpose_steps8(r8, off + 2, step);
        transpose_steps8(r8, off + 18, step + 4);
        for (int s = 0; s < 8; ++s) {  // bytes 4s..4s+3
          float* q = p + (4 * s) * kPanelRows + 8 * h;
          for (int b = 0; b < 4; ++b) {
            const __m256i v = _mm256_srai_epi32(_mm256_sll_epi32(step[s], _mm_cvtsi32_si128(24 - 8 * b)), 24);
            _mm256_store_ps(q + b * kPanelRows, _mm256_mul_ps(_mm256_cvtepi32_ps(v), d));
          }
        }
      } else {
        const __m256 m =
            q4_1 ? halves_to_ps(_mm256_srli_epi32(g, 16)) : _mm256_mul_ps(d, _mm256_set1_ps(-8.0f));
        __m256i step[4];
        transpose_steps8(r8, off + qs_at, step);
        for (int s = 0; s < 4; ++s) {  // bytes 4s..4s+3: columns 4s..4s+3 (low) and 16+4s.. (high)
          for (int b = 0; b < 4; ++b) {
            const __m256i lo = _mm256_and_si256(_mm256_srli_epi32(step[s], 8 * b), m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi32(step[s], 8 * b + 4), m4);
            _mm256_store_ps(p + (4 * s + b) * kPanelRows + 8 * h,
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), d, m));
            _mm256_store_ps(p + (16 + 4 * s + b) * kPanelRows + 8 * h,
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), d, m));
          }
        }
      }
    }
  }
  return true;
}

namespace {

// ---------------------------------------------------------------------------------------------------------
// AVX2 microkernel: 16 rows (2 ymm) x NT tokens, one column per step.

// Each token has 2 accumulators (rows 0-7, 8-15); fewer than 4 tokens give too few independent FMA chains to
// hide the FMA latency, so those tiles split the columns into U interleaved sets of accumulators.
template <int NT>
void gemm_tile_avx2(const float* __restrict panel, int64_t K, const float* __restrict xp, float* y,
                    int64_t ldy, int nr) {
  constexpr int S = kTileTokensAvx2, U = NT >= 4 ? 1 : NT >= 2 ? 2 : 4;
  __m256 acc[2 * U * NT];  // [u][t][half]
#pragma GCC unroll 16
  for (int i = 0; i < 2 * U * NT; ++i) acc[i] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + U <= K; c += U) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const __m256 w0 = _mm256_load_ps(panel + 16 * (c + u)), w1 = _mm256_load_ps(panel + 16 * (c + u) + 8);
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) {
        const __m256 b = _mm256_broadcast_ss(xp + S * (c + u) + t);
        acc[2 * (u * NT + t)] = _mm256_fmadd_ps(w0, b, acc[2 * (u * NT + t)]);
        acc[2 * (u * NT + t) + 1] = _mm256_fmadd_ps(w1, b, acc[2 * (u * NT + t) + 1]);
      }
    }
  }
  for (; c < K; ++c) {
    const __m256 w0 = _mm256_load_ps(panel + 16 * c), w1 = _mm256_load_ps(panel + 16 * c + 8);
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) {
      const __m256 b = _mm256_broadcast_ss(xp + S * c + t);
      acc[2 * t] = _mm256_fmadd_ps(w0, b, acc[2 * t]);
      acc[2 * t + 1] = _mm256_fmadd_ps(w1, b, acc[2 * t + 1]);
    }
  }
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), idx);
  const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), idx);
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) {
    __m256 s0 = acc[2 * t], s1 = acc[2 * t + 1];
#pragma GCC unroll 4
    for (int u = 1; u < U; ++u) {
      s0 = _mm256_add_ps(s0, acc[2 * (u * NT + t)]);
      s1 = _mm256_add_ps(s1, acc[2 * (u * NT + t) + 1]);
    }
    _mm256_maskstore_ps(y + t * ldy, m0, s0);
    _mm256_maskstore_ps(y + t * ldy + 8, m1, s1);
  }
}

}  // namespace

void gemm_avx2(const GemmArgs& g) {
  constexpr int S = kTileTokensAvx2;
  for (int64_t t = g.t0; t < g.t1; t += S) {
    const float* xp = g.xpack + (t / S) * g.cols * S;
    float* y = g.y + t * g.ldy;
    switch (std::min<int64_t>(S, g.t1 - t)) {
      case 6:
        gemm_tile_avx2<6>(g.panel, g.cols, xp, y, g.ldy, g.nr);
        break;
      case 5:
        gemm_tile_avx2<5>(g.panel, g.cols, xp, y, g.ldy, g.nr);
        break;
      case 4:
        gemm_tile_avx2<4>(g.panel, g.cols, xp, y, g.ldy, g.nr);
        break;
      case 3:
        gemm_tile_avx2<3>(g.panel, g.cols, xp, y, g.ldy, g.nr);
        break;
      case 2:
        gemm_tile_avx2<2>(g.panel, g.cols, xp, y, g.ldy, g.nr);
        break;
      default:
        gemm_tile_avx2<1>(g.panel, g.cols, xp, y, g.ldy, g.nr);
        break;
    }
  }
}

void gemv_avx2(const GemvArgs& g) {
  switch (g.type) {
    case GgmlType::Q4_0:
      gemv_q_avx2<GgmlType::Q4_0>(g);
      break;
    case GgmlType::Q4_1:
      gemv_q_avx2<GgmlType::Q4_1>(g);
      break;
    case GgmlType::Q8_0:
      gemv_q_avx2<GgmlType::Q8_0>(g);
      break;
    default:
      gemv_generic_avx2(g);
      break;
  }
}

}  // namespace f32act_detail

int64_t f32act_batch_invariant_tokens() {
  // AVX-512: passes of <= 4 tokens share U = 2, A = 4 (gemv_rows_q); AVX2: A = 4 for 1 token, 2 for more.
  return simd_path() == SimdPath::kAvx512 ? 4 : 1;
}

namespace f32act_detail {

int64_t gemm_min_tokens() {
  return g_gemm_min_tokens.load(std::memory_order_relaxed);
}
int64_t set_gemm_min_tokens(int64_t n) {
  return g_gemm_min_tokens.exchange(std::max<int64_t>(1, n));
}

}  // namespace f32act_detail

namespace {

using namespace f32act_detail;

// Slot 0: the caller's packed activations (read by every worker); 1: each thread's panel; 2: each thread's
// row-major dequantized rows (generic types).
float* thread_scratch(int slot, size_t floats) {
  static constexpr ScratchSlot kSlots[3] = {kScratchF32Activations, kScratchF32Panel, kScratchF32Rows};
  return static_cast<float*>(thread_scratch_bytes(kSlots[slot], floats * sizeof(float)));
}

// 8x8 transpose of src (row stride ls) into dst (row stride ld).
inline void transpose8(const float* src, int64_t ls, float* dst, int64_t ld) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ls);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  // r[0..3]: columns 0,1,2,3 of rows 0-3 (low lane) and 4-7 of rows 0-3 (high lane); r[4..7]: rows 4-7.
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// Any type: rows dequantized with dequantize_row (bit-identical to the reference) into a row-major buffer,
// then transposed into the panel.
void pack_panel_generic(const MatmulWeight& w, int64_t r0, int nr, float* panel, float* rowbuf) {
  const int64_t K = w.cols;
  const int64_t ls = int64_t(align64(size_t(K) * sizeof(float)) / sizeof(float));
  for (int i = 0; i < kPanelRows; ++i) {
    float* dst = rowbuf + i * ls;
    if (i >= nr) {
      std::memset(dst, 0, size_t(K) * sizeof(float));
    } else {
      dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + size_t(r0 + i) * w.row_bytes, dst, K);
    }
  }
  int64_t c = 0;
  for (; c + 8 <= K; c += 8) {
    transpose8(rowbuf + c, ls, panel + c * kPanelRows, kPanelRows);
    transpose8(rowbuf + 8 * ls + c, ls, panel + c * kPanelRows + 8, kPanelRows);
  }
  for (; c < K; ++c)
    for (int i = 0; i < kPanelRows; ++i) panel[c * kPanelRows + i] = rowbuf[i * ls + c];
}

// Tokens [t0, t1) of x into tiles of S tokens laid out [c][S]; tokens past n_tokens are zero. t0, t1 are
// multiples of S (t1 may pass n_tokens).
void pack_x(const float* x, int64_t ldx, int64_t K, int64_t n_tokens, int S, int64_t t0, int64_t t1,
            float* xpack) {
  for (int64_t tt = t0; tt < t1; tt += S) {
    float* dst = xpack + (tt / S) * K * S;
    for (int t = 0; t < S; ++t) {
      if (tt + t >= n_tokens) {
        for (int64_t c = 0; c < K; ++c) dst[c * S + t] = 0.0f;
        continue;
      }
      const float* src = x + (tt + t) * ldx;
      for (int64_t c = 0; c < K; ++c) dst[c * S + t] = src[c];
    }
  }
}

struct Job {
  const MatmulWeight* w;
  const float* x;
  int64_t n_tokens, ldx;
  float* y;
  int64_t ldy;
  SimdPath path;
  int S = 0;  // tokens per tile
  float* xpack = nullptr;
  int64_t rows_per_item = 0, panels_per_item = 1, token_splits = 1, n_items = 0, n_tiles = 0;
  std::atomic<int64_t> next{0};
};

void run_gemv(Job& job) {
  const MatmulWeight& w = *job.w;
  GemvArgs g;
  g.type = w.type;
  g.w = static_cast<const uint8_t*>(w.data);
  g.row_bytes = w.row_bytes;
  g.cols = w.cols;
  g.rows = w.rows;
  g.x = job.x;
  g.ldx = job.ldx;
  g.n_tokens = job.n_tokens;
  g.y = job.y;
  g.ldy = job.ldy;
  g.row_buf = thread_scratch(2, size_t(w.cols));
  for (int64_t i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.n_items;) {
    g.r0 = i * job.rows_per_item;
    g.r1 = std::min(w.rows, g.r0 + job.rows_per_item);
    if (job.path == SimdPath::kAvx512) {
      gemv_avx512(g);
    } else {
      gemv_avx2(g);
    }
  }
}

// Work item i: panels [c * chunk, (c + 1) * chunk) for c = i / token_splits, tokens of split i %
// token_splits. While a panel is packed, the packer prefetches the item's next panel.
void run_gemm(Job& job) {
  const MatmulWeight& w = *job.w;
  const int64_t K = w.cols;
  const int64_t n_panels = (w.rows + kPanelRows - 1) / kPanelRows;
  float* panel = thread_scratch(1, size_t(K) * kPanelRows);
  float* rowbuf = nullptr;
  int64_t packed = -1;
  for (int64_t i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.n_items;) {
    const int64_t chunk = i / job.token_splits, split = i % job.token_splits;
    const int64_t p0 = chunk * job.panels_per_item, p1 = std::min(n_panels, p0 + job.panels_per_item);
    GemmArgs g;
    g.cols = K;
    g.xpack = job.xpack;
    g.t0 = std::min(job.n_tokens, job.n_tiles * split / job.token_splits * job.S);
    g.t1 = std::min(job.n_tokens, job.n_tiles * (split + 1) / job.token_splits * job.S);
    g.ldy = job.ldy;
    if (g.t0 >= g.t1) continue;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r0 = p * kPanelRows;
      const int nr = int(std::min<int64_t>(kPanelRows, w.rows - r0));
      if (p != packed) {
        const uint8_t* row0 = static_cast<const uint8_t*>(w.data) + size_t(r0) * w.row_bytes;
        const uint8_t* next = p + 1 < p1 ? row0 + kPanelRows * w.row_bytes : nullptr;  // (all 16 rows exist)
        const size_t next_bytes =
            next ? size_t(std::min<int64_t>(kPanelRows, w.rows - r0 - kPanelRows)) * w.row_bytes : 0;
        const bool fast = job.path == SimdPath::kAvx512
                              ? pack_panel_avx512(w.type, row0, w.row_bytes, nr, K, panel, next, next_bytes)
                              : pack_panel_avx2(w.type, row0, w.row_bytes, nr, K, panel, next, next_bytes);
        if (!fast) {
          if (!rowbuf)
            rowbuf = thread_scratch(2, align64(size_t(K) * sizeof(float)) / sizeof(float) * kPanelRows);
          pack_panel_generic(w, r0, nr, panel, rowbuf);
        }
        packed = p;
      }
      g.panel = panel;
      g.y = job.y + r0;
      g.nr = nr;
      if (job.path == SimdPath::kAvx512) {
        gemm_avx512(g);
      } else {
        gemm_avx2(g);
      }
    }
  }
}

void check_args(const MatmulWeight& w, int64_t n_tokens, int64_t ldx, int64_t ldy) {
  HS_CHECK(cpu_supports_type(w.type), "matmul_f32act: unsupported weight type %s",
           ggml_type_name(uint32_t(w.type)).c_str());
  HS_CHECK(w.rows >= 0 && w.cols > 0 && n_tokens >= 0,
           "matmul_f32act: bad shape rows=%lld cols=%lld n_tokens=%lld", (long long)w.rows, (long long)w.cols,
           (long long)n_tokens);
  size_t need = 0;
  HS_CHECK(ggml_row_bytes(w.type, w.cols, &need),
           "matmul_f32act: %lld columns is not a multiple of the %s block size", (long long)w.cols,
           ggml_traits(w.type).name);
  HS_CHECK(w.row_bytes >= need, "matmul_f32act: row_bytes %zu < %zu needed for %lld %s values", w.row_bytes,
           need, (long long)w.cols, ggml_traits(w.type).name);
  HS_CHECK(ldx >= w.cols && ldy >= w.rows, "matmul_f32act: ldx=%lld (cols %lld), ldy=%lld (rows %lld)",
           (long long)ldx, (long long)w.cols, (long long)ldy, (long long)w.rows);
}

}  // namespace

void matmul_f32act(const MatmulWeight& w, const float* x, int64_t n_tokens, int64_t ldx, float* y,
                   int64_t ldy, ThreadPool& pool) {
  check_args(w, n_tokens, ldx, ldy);
  if (n_tokens == 0 || w.rows == 0) return;
  const int nth = pool.size();
  Job job;
  job.w = &w;
  job.x = x;
  job.n_tokens = n_tokens;
  job.ldx = ldx;
  job.y = y;
  job.ldy = ldy;
  job.path = simd_path();

  if (n_tokens < gemm_min_tokens()) {
    // About 8 chunks of rows per thread (the atomic counter balances a slow thread), multiples of 16 rows.
    job.rows_per_item = std::clamp<int64_t>((w.rows / (8 * nth)) & ~int64_t(15), 16, 256);
    job.n_items = (w.rows + job.rows_per_item - 1) / job.rows_per_item;
    pool.run([&job](int, int) { run_gemv(job); });
    return;
  }

  job.S = job.path == SimdPath::kAvx512 ? kTileTokensAvx512 : kTileTokensAvx2;
  job.n_tiles = (n_tokens + job.S - 1) / job.S;
  job.xpack = thread_scratch(0, size_t(job.n_tiles) * size_t(job.S) * size_t(w.cols));
  pool.run([&job](int ith, int nth) {
    const int64_t a = job.n_tiles * ith / nth, b = job.n_tiles * (ith + 1) / nth;
    pack_x(job.x, job.ldx, job.w->cols, job.n_tokens, job.S, a * job.S, b * job.S, job.xpack);
  });
  // Items of up to 8 panels (at least ~8 items per thread), and token ranges split too when there are too few
  // panels to keep every thread busy.
  const int64_t n_panels = (w.rows + kPanelRows - 1) / kPanelRows;
  job.panels_per_item = std::clamp<int64_t>(n_panels / (8 * nth), 1, 8);
  const int64_t n_chunks = (n_panels + job.panels_per_item - 1) / job.panels_per_item;
  job.token_splits =
      std::min<int64_t>(job.n_tiles, std::max<int64_t>(1, (8 * nth + n_chunks - 1) / n_chunks));
  job.n_items = n_chunks * job.token_splits;
  pool.run([&job](int, int) { run_gemm(job); });
}

}  // namespace hs::cpu
