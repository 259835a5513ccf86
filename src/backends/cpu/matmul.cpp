// CPU matmul: dispatch, activation quantization, weight-tile repacking, threading, and the fp32 path.
//
// Integer path (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K):
//   1. Each activation row is quantized once per call to int8 blocks of 32 (ActQ, matmul_kernels.h).
//   2a. Few tokens (decode, < gemm_min_tokens): weight rows are streamed straight from the GGML blocks, one
//       row at a time against all tokens (gemv_int_*). Threads take chunks of rows.
//   2b. Many tokens (prefill): a thread takes a tile of NR rows, repacks it once into an interleaved u8
//       layout (pack_tile*) in its own scratch, and runs an NR rows x NT tokens register-tiled microkernel
//       over every token (gemm_int_*); the tile is reused from L1/L2 for all tokens.
//   2c. Weights packed ahead of time (pack_weight; AVX-512, Q4_0 / Q4_1 / Q8_0): every call, decode or
//       prefill, runs the register-tiled microkernel straight from the packed tiles (gemm_packed_avx512).
// fp32 path (F32, F16, BF16): rows are dequantized to fp32 in per-thread scratch and multiplied with an AVX2
// FMA kernel of 4 rows x 2 tokens.
#include "backends/cpu/matmul.h"
#include "backends/cpu/scratch.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "backends/cpu/cpu_features.h"
#include "backends/cpu/matmul_kernels.h"
#include "backends/cpu/quants.h"
#include "util/common.h"

namespace hs::cpu {

using detail::ActQ;
using detail::GemmArgs;
using detail::GemvArgs;
using detail::IntScheme;

namespace {

// With at least this many tokens the repacked GEMM beats streaming rows (measured with
// bench/matmul_f32act_bench.cpp; adjustable for tuning and tests through detail::set_gemm_min_tokens). Four
// tokens (a 4-sequence decode step) stream: every SmolLM2 linear layer of a step in 7.4 ms against 12.1 ms
// repacked (2-core Zen 4), since the pass of 4 tokens shares each unpacked weight block.
std::atomic<int64_t> g_gemm_min_tokens{5};

// Slot 0: the calling thread's quantized activations (read by every worker); 1: each thread's packed rows.
uint8_t* thread_scratch(int slot, size_t bytes) {
  return static_cast<uint8_t*>(thread_scratch_bytes(slot == 0 ? kScratchInt8Activations : kScratchInt8Weights, bytes));
}

bool is_int_type(GgmlType t) {
  switch (t) {
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

// The AVX-512 GEMV kernels cover these; K-quants stream through the AVX2 ones on both paths.
bool has_avx512_gemv(GgmlType t) {
  return t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q8_0;
}

// u8 ranges: Q4 0..15 (8 int16 steps: 16 * 15 * 127 < 32768), Q5_K 0..31 (4), Q6_K 0..63 (2).
IntScheme int_scheme(GgmlType t, SimdPath path) {
  IntScheme s;
  switch (t) {
    case GgmlType::Q4_0:
      s.offset = 8;
      break;
    case GgmlType::Q4_1:
      s.has_min = true;
      break;
    case GgmlType::Q8_0:
      if (path == SimdPath::kAvx512) {
        s.offset = 128;  // stored as u8 = q + 128
      } else {
        s.signed_q = true, s.i16_steps = 1;
      }
      break;
    case GgmlType::Q4_K:
      s.has_min = true;
      break;
    case GgmlType::Q5_K:
      s.has_min = true, s.i16_steps = 4;
      break;
    case GgmlType::Q6_K:
      s.sb = 16, s.offset = 32, s.i16_steps = 2;
      break;
    default:
      break;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// Activation quantization.

ActQ make_actq(int64_t K, int L, int sb, int64_t n_tokens, uint8_t* (*alloc)(int, size_t)) {
  ActQ a;
  a.K = K;
  a.L = L;
  const size_t q_bytes = align64(size_t(K) * L), ds_bytes = align64(size_t(K / 32) * L * 2 * sizeof(float));
  const size_t off_bytes = align64(size_t(K / sb) * L * sizeof(int32_t));
  a.ds_offset = int64_t(q_bytes);
  a.off_offset = int64_t(q_bytes + ds_bytes);
  a.tile_bytes = int64_t(q_bytes + ds_bytes + off_bytes);
  const int64_t n_tiles = (n_tokens + L - 1) / L;
  a.base = alloc(0, size_t(n_tiles) * size_t(a.tile_bytes));
  return a;
}

inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// Quantizes tokens [t0, t1) of x ([n][ldx] fp32, K columns) into a: per block of 32, d = max|x| / 127 and
// q = round_to_nearest_even(x * 127 / max|x|), so |x - d q| <= d / 2 (up to one ulp of the scaling).
void quantize_activations(const float* x, int64_t ldx, const ActQ& a, int sb, int offset, int64_t t0,
                          int64_t t1) {
  const int64_t nb = a.K / 32;
  const int L = a.L;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t t = t0; t < t1; ++t) {
    const float* xr = x + t * ldx;
    int32_t* q = const_cast<int32_t*>(a.q(t));
    float* ds = const_cast<float*>(a.ds(t));
    int32_t* off = const_cast<int32_t*>(a.off(t));
    for (int64_t b = 0; b < nb; ++b) {
      __m256 v[4];
      for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xr + 32 * b + 8 * i);
      __m256 am = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
      __m128 m = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
      m = _mm_max_ps(m, _mm_movehl_ps(m, m));
      m = _mm_max_ss(m, _mm_movehdup_ps(m));
      const float amax = _mm_cvtss_f32(m);
      const float d = amax / 127.0f;
      const __m256 id = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
      __m256i i[4];
      for (int k = 0; k < 4; ++k) i[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], id));
      const int s0 = hsum_i32(_mm256_add_epi32(i[0], i[1])), s1 = hsum_i32(_mm256_add_epi32(i[2], i[3]));
      const __m256i p8 = _mm256_permutevar8x32_epi32(
          _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3])), order);
      if (L == 1) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 8 * b), p8);
      } else {
        alignas(32) int32_t words[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(words), p8);
        for (int k = 0; k < 8; ++k) q[(8 * b + k) * L] = words[k];
      }
      ds[2 * L * b] = d;
      ds[2 * L * b + 1] = d * float(s0 + s1);
      if (sb == 32) {
        off[L * b] = -offset * (s0 + s1);
      } else {
        off[L * 2 * b] = -offset * s0;
        off[L * (2 * b + 1)] = -offset * s1;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Weight tile repacking (layout in matmul_kernels.h).

inline float h2f(uint16_t h) {
  return _cvtsh_ss(h);
}

// Sub-block j (sb columns) of one K-quant row as u8 q[sb] with W = d * (q - offset) + m.
void unpack_kquant(GgmlType type, const uint8_t* row, int64_t j, uint8_t* q, float* d, float* m) {
  if (type == GgmlType::Q6_K) {
    const BlockQ6_K& b = reinterpret_cast<const BlockQ6_K*>(row)[j / 16];
    const int is = int(j % 16), h = is / 8, g = (is % 8) / 2, l0 = 16 * (is % 2);
    const int ql_add = (g & 1) ? 32 : 0, ql_shift = g >= 2 ? 4 : 0;
    for (int l = l0; l < l0 + 16; ++l)
      q[l - l0] = uint8_t(((b.ql[64 * h + l + ql_add] >> ql_shift) & 0xF) |
                          (((b.qh[32 * h + l] >> (2 * g)) & 3) << 4));
    *d = h2f(b.d) * float(b.scales[is]);
    *m = 0.0f;
    return;
  }
  // Q4_K / Q5_K: sub-block s of 32 values; chunk s/2 holds it in the low (s even) or high nibbles.
  const int s = int(j % 8), shift = 4 * (s % 2);
  const uint8_t *qs, *scales, *qh = nullptr;
  uint16_t hd, hdmin;
  if (type == GgmlType::Q4_K) {
    const BlockQ4_K& b = reinterpret_cast<const BlockQ4_K*>(row)[j / 8];
    qs = b.qs, scales = b.scales, hd = b.d, hdmin = b.dmin;
  } else {
    const BlockQ5_K& b = reinterpret_cast<const BlockQ5_K*>(row)[j / 8];
    qs = b.qs, scales = b.scales, hd = b.d, hdmin = b.dmin, qh = b.qh;
  }
  for (int l = 0; l < 32; ++l) {
    int v = (qs[32 * (s / 2) + l] >> shift) & 0xF;
    if (qh) v |= ((qh[l] >> s) & 1) << 4;
    q[l] = uint8_t(v);
  }
  uint8_t sc, mn;
  get_scale_min_k4(s, scales, &sc, &mn);
  *d = h2f(hd) * float(sc);
  *m = -(h2f(hdmin) * float(mn));
}

// Packs rows [0, nr_valid) starting at row0 into an NR-row tile (rows nr_valid..NR-1 zero).
void pack_tile(GgmlType type, const IntScheme& s, const uint8_t* row0, size_t row_bytes, int nr_valid, int NR,
               int64_t nsb, uint8_t* out) {
  const size_t sub_bytes = detail::packed_subblock_bytes(s, NR);
  const int steps = s.sb / 4;
  const uint32_t q8_xor = s.offset == 128 ? 0x80808080u : 0u;
  for (int r = 0; r < NR; ++r) {
    const uint8_t* row = row0 + size_t(r) * row_bytes;
    uint8_t* o = out;
    for (int64_t j = 0; j < nsb; ++j, o += sub_bytes) {
      uint32_t* st = reinterpret_cast<uint32_t*>(o);
      float* dv = reinterpret_cast<float*>(o + size_t(s.sb) * NR);
      float* mv = dv + NR;
      if (r >= nr_valid) {
        for (int k = 0; k < steps; ++k) st[k * NR + r] = 0;
        dv[r] = 0.0f;
        if (s.has_min) mv[r] = 0.0f;
        continue;
      }
      switch (type) {
        case GgmlType::Q4_0:
        case GgmlType::Q4_1: {
          const uint8_t* blk = row + j * (type == GgmlType::Q4_0 ? sizeof(BlockQ4_0) : sizeof(BlockQ4_1));
          const uint8_t* qs = blk + (type == GgmlType::Q4_0 ? 2 : 4);
          uint32_t w[4];
          std::memcpy(w, qs, 16);
          for (int k = 0; k < 4; ++k) {
            st[k * NR + r] = w[k] & 0x0F0F0F0Fu;               // columns 4k..4k+3
            st[(k + 4) * NR + r] = (w[k] >> 4) & 0x0F0F0F0Fu;  // columns 16+4k..16+4k+3
          }
          uint16_t h[2];
          std::memcpy(h, blk, 4);
          dv[r] = h2f(h[0]);
          if (s.has_min) mv[r] = h2f(h[1]);
          break;
        }
        case GgmlType::Q8_0: {
          const BlockQ8_0& b = reinterpret_cast<const BlockQ8_0*>(row)[j];
          uint32_t w[8];
          std::memcpy(w, b.qs, 32);
          for (int k = 0; k < 8; ++k) st[k * NR + r] = w[k] ^ q8_xor;
          dv[r] = h2f(b.d);
          break;
        }
        default: {
          alignas(32) uint8_t q[32];
          float d, m;
          unpack_kquant(type, row, j, q, &d, &m);
          for (int k = 0; k < steps; ++k) std::memcpy(&st[k * NR + r], q + 4 * k, 4);
          dv[r] = d;
          if (s.has_min) mv[r] = m;
          break;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// fp32 path: dot-product kernel over R rows x T tokens, 8 columns per step, scalar tail.

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R, int T>
void fp_kernel(const float* const* w, const float* x, int64_t ldx, int64_t K, float* y, int64_t ldy) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_ps(w[r] + k);
    for (int t = 0; t < T; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * ldx + k);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float s = hsum(acc[r][t]);
      for (int64_t c = k; c < K; ++c) s += w[r][c] * x[t * ldx + c];
      y[t * ldy + r] = s;
    }
}

constexpr int64_t kFpMaxChunk = 64;  // rows dequantized per work item

template <int T>
void fp_rows(const float* const* w, int nrows, const float* x, int64_t ldx, int64_t K, float* y,
             int64_t ldy) {
  int r = 0;
  for (; r + 4 <= nrows; r += 4) fp_kernel<4, T>(w + r, x, ldx, K, y + r, ldy);
  for (; r < nrows; ++r) fp_kernel<1, T>(w + r, x, ldx, K, y + r, ldy);
}

// ---------------------------------------------------------------------------------------------------------
// The parallel drivers. Work items are claimed through an atomic counter so a slow thread takes fewer.

struct Job {
  const MatmulWeight* w;
  const float* x;
  int64_t n_tokens, ldx;
  float* y;
  int64_t ldy;
  SimdPath path;
  IntScheme scheme;
  ActQ act;
  int64_t rows_per_item, token_splits, n_items;
  int64_t lead_rows = 0, n_lead = 0;  // guided chunks: the first n_lead items have lead_rows units
  std::atomic<int64_t> next{0};

  // Guided chunks over n units (GEMV: rows, packed: 16-row tiles) in multiples of `align`: each thread's
  // first item is a long contiguous stream of n / (2 nth) units, the rest of the matrix goes in n / (8 nth)
  // pieces that balance late or slow threads. (Pure streaming reads of the model's matrices measured the same
  // with 1, 4 or 16 chunks per thread; decode reached ~90% of that rate.) Returns the number of chunks.
  int64_t plan_guided(int64_t n, int nth, int64_t align) {
    lead_rows = n / (2 * nth) / align * align;
    n_lead = lead_rows > 0 ? nth : 0;
    rows_per_item = std::max<int64_t>(align, n / (8 * nth) / align * align);
    return n_lead + (n - n_lead * lead_rows + rows_per_item - 1) / rows_per_item;
  }
  // Units [*b, *e) of guided chunk i (of n units).
  void guided_range(int64_t i, int64_t n, int64_t* b, int64_t* e) const {
    *b = i < n_lead ? i * lead_rows : n_lead * lead_rows + (i - n_lead) * rows_per_item;
    *e = std::min(n, *b + (i < n_lead ? lead_rows : rows_per_item));
  }
  // Tokens [*t0, *t1) of token split `split` (whole tiles of act.L tokens).
  void split_tokens(int64_t split, int64_t* t0, int64_t* t1) const {
    const int64_t L = act.L, n_token_tiles = (n_tokens + L - 1) / L;
    *t0 = std::min(n_tokens, n_token_tiles * split / token_splits * L);
    *t1 = std::min(n_tokens, n_token_tiles * (split + 1) / token_splits * L);
  }
};

// Quantizes every token of job.x into job.act: inline for one tile of tokens (decode: no pool round), else
// token tiles spread over the pool.
void quantize_job_activations(Job& job, ThreadPool& pool) {
  const int64_t L = job.act.L, n_token_tiles = (job.n_tokens + L - 1) / L;
  if (n_token_tiles == 1) {
    quantize_activations(job.x, job.ldx, job.act, job.scheme.sb, job.scheme.offset, 0, job.n_tokens);
    return;
  }
  pool.run([&job, n_token_tiles, L](int ith, int nth) {
    const int64_t t0 = std::min(job.n_tokens, n_token_tiles * ith / nth * L);
    const int64_t t1 = std::min(job.n_tokens, n_token_tiles * (ith + 1) / nth * L);
    quantize_activations(job.x, job.ldx, job.act, job.scheme.sb, job.scheme.offset, t0, t1);
  });
}

// Token splits for n_units row units: enough items to keep every thread busy when the units are few.
int64_t token_splits_for(int64_t n_token_tiles, int64_t n_units, int nth) {
  return std::min<int64_t>(n_token_tiles, std::max<int64_t>(1, (4 * nth + n_units - 1) / n_units));
}

void run_gemv(Job& job, int ith, int nth) {
  const MatmulWeight& w = *job.w;
  GemvArgs g;
  g.type = w.type;
  g.w = static_cast<const uint8_t*>(w.data);
  g.row_bytes = w.row_bytes;
  g.nb = w.cols / 32;
  g.act = &job.act;
  g.n_tokens = job.n_tokens;
  g.y = job.y;
  g.ldy = job.ldy;
  for (int64_t i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.n_items;) {
    job.guided_range(i, w.rows, &g.r0, &g.r1);
    if (job.path == SimdPath::kAvx512 && has_avx512_gemv(w.type)) {
      detail::gemv_int_avx512(g);
    } else {
      detail::gemv_int_avx2(g);
    }
  }
}

void run_gemm(Job& job, int ith, int nth) {
  const MatmulWeight& w = *job.w;
  const int NR = job.path == SimdPath::kAvx512 ? detail::kGemmRowsAvx512 : detail::kGemmRowsAvx2;
  const int64_t nsb = w.cols / job.scheme.sb;
  uint8_t* pack = thread_scratch(1, size_t(nsb) * detail::packed_subblock_bytes(job.scheme, NR));
  int64_t packed_tile = -1;
  for (int64_t i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.n_items;) {
    const int64_t tile = i / job.token_splits, split = i % job.token_splits;
    const int64_t r0 = tile * NR;
    const int nr = int(std::min<int64_t>(NR, w.rows - r0));
    if (tile != packed_tile) {
      const uint8_t* row0 = static_cast<const uint8_t*>(w.data) + size_t(r0) * w.row_bytes;
      const bool fast =
          nr == NR && (job.path == SimdPath::kAvx512
                           ? detail::pack_tile_avx512(w.type, job.scheme, row0, w.row_bytes, nsb, pack)
                           : detail::pack_tile_avx2(w.type, job.scheme, row0, w.row_bytes, nsb, pack));
      if (!fast) pack_tile(w.type, job.scheme, row0, w.row_bytes, nr, NR, nsb, pack);
      packed_tile = tile;
    }
    GemmArgs g;
    g.wpack = pack;
    g.nsb = nsb;
    g.act = &job.act;
    job.split_tokens(split, &g.t0, &g.t1);
    g.y = job.y + r0;
    g.ldy = job.ldy;
    g.nr_valid = nr;
    if (g.t0 >= g.t1) continue;
    if (job.path == SimdPath::kAvx512) {
      detail::gemm_int_avx512(job.scheme, g);
    } else {
      detail::gemm_int_avx2(job.scheme, g);
    }
  }
}

// Weights packed ahead of time: items are runs of whole 16-row tiles (job.lead_rows / rows_per_item count
// tiles here, as in the GEMV's guided chunks) times token splits; a tile stays in L1 for all its tokens.
void run_packed(Job& job) {
  const MatmulWeight& w = *job.w;
  constexpr int NR = detail::kGemmRowsAvx512;
  const int64_t nsb = w.cols / 32;
  const size_t tile_bytes = size_t(nsb) * detail::packed16_block_bytes(w.type);
  const int64_t n_tiles = (w.rows + NR - 1) / NR;
  for (int64_t i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.n_items;) {
    int64_t g0, g1;
    job.guided_range(i / job.token_splits, n_tiles, &g0, &g1);
    GemmArgs g;
    g.nsb = nsb;
    g.act = &job.act;
    job.split_tokens(i % job.token_splits, &g.t0, &g.t1);
    g.ldy = job.ldy;
    if (g.t0 >= g.t1) continue;
    for (int64_t tile = g0; tile < g1; ++tile) {
      g.wpack = static_cast<const uint8_t*>(w.packed) + size_t(tile) * tile_bytes;
      g.y = job.y + tile * NR;
      g.nr_valid = int(std::min<int64_t>(NR, w.rows - tile * NR));
      detail::gemm_packed_avx512(w.type, g);
    }
  }
}

void run_fp(Job& job, int ith, int nth) {
  const MatmulWeight& w = *job.w;
  const int64_t K = w.cols;
  const int64_t chunk = job.rows_per_item;
  const size_t row_stride = align64(size_t(K) * sizeof(float));
  uint8_t* buf = w.type == GgmlType::F32 ? nullptr : thread_scratch(1, size_t(chunk) * row_stride);
  const float* rows[kFpMaxChunk];
  for (int64_t i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.n_items;) {
    const int64_t r0 = i * chunk;
    const int nr = int(std::min(chunk, w.rows - r0));
    for (int r = 0; r < nr; ++r) {
      const uint8_t* src = static_cast<const uint8_t*>(w.data) + size_t(r0 + r) * w.row_bytes;
      if (w.type == GgmlType::F32) {
        rows[r] = reinterpret_cast<const float*>(src);
      } else {
        float* dst = reinterpret_cast<float*>(buf + size_t(r) * row_stride);
        dequantize_row(w.type, src, dst, K);
        rows[r] = dst;
      }
    }
    int64_t t = 0;
    for (; t + 2 <= job.n_tokens; t += 2)
      fp_rows<2>(rows, nr, job.x + t * job.ldx, job.ldx, K, job.y + t * job.ldy + r0, job.ldy);
    if (t < job.n_tokens)
      fp_rows<1>(rows, nr, job.x + t * job.ldx, job.ldx, K, job.y + t * job.ldy + r0, job.ldy);
  }
}

void check_args(const MatmulWeight& w, int64_t n_tokens, int64_t ldx, int64_t ldy, const char* what) {
  HS_CHECK(cpu_supports_type(w.type), "%s: unsupported weight type %s", what,
           ggml_type_name(uint32_t(w.type)).c_str());
  HS_CHECK(w.rows >= 0 && w.cols > 0 && n_tokens >= 0, "%s: bad shape rows=%lld cols=%lld n_tokens=%lld",
           what, (long long)w.rows, (long long)w.cols, (long long)n_tokens);
  size_t need = 0;
  HS_CHECK(ggml_row_bytes(w.type, w.cols, &need), "%s: %lld columns is not a multiple of the %s block size",
           what, (long long)w.cols, ggml_traits(w.type).name);
  HS_CHECK(w.row_bytes >= need, "%s: row_bytes %zu < %zu needed for %lld %s values", what, w.row_bytes, need,
           (long long)w.cols, ggml_traits(w.type).name);
  HS_CHECK(ldx >= w.cols && ldy >= w.rows, "%s: ldx=%lld (cols %lld), ldy=%lld (rows %lld)", what,
           (long long)ldx, (long long)w.cols, (long long)ldy, (long long)w.rows);
}

}  // namespace

int64_t detail::gemm_min_tokens() {
  return g_gemm_min_tokens.load(std::memory_order_relaxed);
}
int64_t detail::set_gemm_min_tokens(int64_t n) {
  return g_gemm_min_tokens.exchange(std::max<int64_t>(1, n));
}

size_t detail::packed16_block_bytes(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0:
      return 16 * sizeof(BlockQ4_0);
    case GgmlType::Q4_1:
      return 16 * sizeof(BlockQ4_1);
    case GgmlType::Q8_0:
      return 16 * sizeof(BlockQ8_0);
    default:
      return 0;
  }
}

size_t packed_weight_bytes(const MatmulWeight& w) {
  if (!cpu_features().has_avx512_path()) return 0;
  const size_t block = detail::packed16_block_bytes(w.type);
  if (block == 0 || w.rows <= 0 || w.cols <= 0 || w.cols % 32 != 0) return 0;
  const int64_t NR = detail::kGemmRowsAvx512;
  return size_t((w.rows + NR - 1) / NR) * size_t(w.cols / 32) * block;
}

void pack_weight(const MatmulWeight& w, void* out) {
  HS_CHECK(packed_weight_bytes(w) > 0, "pack_weight: no packed form for %s on this CPU",
           ggml_traits(w.type).name);
  HS_CHECK(reinterpret_cast<uintptr_t>(out) % 64 == 0, "pack_weight: output is not 64-byte aligned");
  constexpr int NR = detail::kGemmRowsAvx512;
  // Each tile goes through the per-call GEMM packer (u8 per value, fp32 scales), then is narrowed: two 4-bit
  // steps per byte, scales back to the fp16 they came from (exact).
  const IntScheme s = int_scheme(w.type, SimdPath::kAvx512);
  const int64_t nsb = w.cols / 32;
  const size_t sub_bytes = detail::packed_subblock_bytes(s, NR), block = detail::packed16_block_bytes(w.type);
  std::vector<uint8_t> wide(size_t(nsb) * sub_bytes + 64);
  uint8_t* tmp = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(wide.data()) + 63) & ~uintptr_t(63));
  uint8_t* o = static_cast<uint8_t*>(out);
  const bool q8 = w.type == GgmlType::Q8_0;
  for (int64_t r0 = 0; r0 < w.rows; r0 += NR) {
    const int nr = int(std::min<int64_t>(NR, w.rows - r0));
    const uint8_t* row0 = static_cast<const uint8_t*>(w.data) + size_t(r0) * w.row_bytes;
    if (nr < NR || !detail::pack_tile_avx512(w.type, s, row0, w.row_bytes, nsb, tmp))
      pack_tile(w.type, s, row0, w.row_bytes, nr, NR, nsb, tmp);
    for (int64_t j = 0; j < nsb; ++j, o += block) {
      const uint8_t* st = tmp + size_t(j) * sub_bytes;  // step k at st + 64 k
      const int q_bytes = q8 ? 512 : 256;
      if (q8) {
        std::memcpy(o, st, 512);
      } else {
        for (int b = 0; b < 256; ++b) o[b] = uint8_t(st[b] | st[b + 256] << 4);
      }
      const float* dv = reinterpret_cast<const float*>(st + 512);
      uint16_t* h = reinterpret_cast<uint16_t*>(o + q_bytes);
      for (int r = 0; r < NR; ++r) h[r] = _cvtss_sh(dv[r], 0);
      if (s.has_min)
        for (int r = 0; r < NR; ++r) h[NR + r] = _cvtss_sh(dv[NR + r], 0);
    }
  }
}

MatmulWeight make_weight(GgmlType type, const void* data, int64_t rows, int64_t cols) {
  MatmulWeight w;
  w.type = type;
  w.data = data;
  w.rows = rows;
  w.cols = cols;
  HS_CHECK(ggml_row_bytes(type, cols, &w.row_bytes),
           "make_weight: %lld columns is not a multiple of the %s block size", (long long)cols,
           ggml_traits(type).name);
  return w;
}

void matmul(const MatmulWeight& w, const float* x, int64_t n_tokens, int64_t ldx, float* y, int64_t ldy,
            ThreadPool& pool) {
  check_args(w, n_tokens, ldx, ldy, "matmul");
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

  const int64_t gemm_min_tokens = detail::gemm_min_tokens();
  if (!is_int_type(w.type)) {
    // fp32: chunks of rows, enough of them to balance the threads.
    job.rows_per_item = std::clamp<int64_t>(w.rows / (8 * nth), 4, kFpMaxChunk) & ~int64_t(3);
    job.n_items = (w.rows + job.rows_per_item - 1) / job.rows_per_item;
    pool.run([&job](int ith, int nth) { run_fp(job, ith, nth); });
    return;
  }

  if (w.packed && job.path == SimdPath::kAvx512 && detail::packed16_block_bytes(w.type) > 0) {
    constexpr int NR = detail::kGemmRowsAvx512, L = detail::kGemmTokensAvx512;
    job.scheme = int_scheme(w.type, SimdPath::kAvx512);
    job.act = make_actq(w.cols, L, job.scheme.sb, n_tokens, thread_scratch);
    quantize_job_activations(job, pool);
    // Whole tiles in guided chunks, as the GEMV's rows.
    const int64_t n_groups = job.plan_guided((w.rows + NR - 1) / NR, nth, 1);
    job.token_splits = token_splits_for((n_tokens + L - 1) / L, n_groups, nth);
    job.n_items = n_groups * job.token_splits;
    pool.run([&job](int, int) { run_packed(job); });
    return;
  }

  const bool gemm = n_tokens >= gemm_min_tokens;
  // Q8_0's AVX-512 GEMM stores u8 = q + 128; the row-streaming kernels read the blocks as they are.
  job.scheme = int_scheme(w.type, gemm ? job.path : SimdPath::kAvx2);
  const int L = !gemm                           ? 1
                : job.path == SimdPath::kAvx512 ? detail::kGemmTokensAvx512
                                                : detail::kGemmTokensAvx2;
  job.act = make_actq(w.cols, L, job.scheme.sb, n_tokens, thread_scratch);
  if (!gemm) {
    quantize_activations(x, ldx, job.act, job.scheme.sb, job.scheme.offset, 0, n_tokens);
    job.n_items = job.plan_guided(w.rows, nth, 8);  // chunks of whole rows, multiples of 8
    pool.run([&job](int ith, int nth) { run_gemv(job, ith, nth); });
    return;
  }

  quantize_job_activations(job, pool);
  const int NR = job.path == SimdPath::kAvx512 ? detail::kGemmRowsAvx512 : detail::kGemmRowsAvx2;
  const int64_t n_row_tiles = (w.rows + NR - 1) / NR;
  // Split tokens too when there are too few row tiles to keep every thread busy.
  job.token_splits = token_splits_for((n_tokens + L - 1) / L, n_row_tiles, nth);
  job.n_items = n_row_tiles * job.token_splits;
  pool.run([&job](int ith, int nth) { run_gemm(job, ith, nth); });
}

void matmul_ref(const MatmulWeight& w, const float* x, int64_t n_tokens, int64_t ldx, float* y, int64_t ldy) {
  check_args(w, n_tokens, ldx, ldy, "matmul_ref");
  std::vector<float> row(size_t(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row_ref(w.type, static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes, row.data(),
                       w.cols);
    for (int64_t t = 0; t < n_tokens; ++t) {
      double s = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) s += double(row[size_t(c)]) * double(x[t * ldx + c]);
      y[t * ldy + r] = float(s);
    }
  }
}

void get_row(const MatmulWeight& w, int64_t row, float* dst) {
  HS_CHECK(row >= 0 && row < w.rows, "get_row: row %lld out of range [0, %lld)", (long long)row,
           (long long)w.rows);
  dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + size_t(row) * w.row_bytes, dst, w.cols);
}

}  // namespace hs::cpu
