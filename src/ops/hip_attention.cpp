#include "ops/hip_attention.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "util/common.h"

namespace hs {

std::string HipConfig::validate() const {
  if (k <= 0 || block_q <= 0 || block_k <= 0 || stride_q <= 0 || stride_k <= 0)
    return strfmt("HiP: k, block_q, block_k, stride_q, stride_k must be positive (got %d, %d, %d, %d, %d)", k,
                  block_q, block_k, stride_q, stride_k);
  if (n_sink < 0 || window < 0) return strfmt("HiP: n_sink %d and window %d must be >= 0", n_sink, window);
  if (refresh < 1) return strfmt("HiP: refresh %d must be >= 1", refresh);
  if (k % block_k != 0) return strfmt("HiP: k %d is not a multiple of block_k %d", k, block_k);
  if (block_q % stride_q != 0)
    return strfmt("HiP: block_q %d is not a multiple of stride_q %d", block_q, stride_q);
  if (block_k % stride_k != 0)
    return strfmt("HiP: block_k %d is not a multiple of stride_k %d", block_k, stride_k);
  if (n_sink % block_k != 0) return strfmt("HiP: n_sink %d is not a multiple of block_k %d", n_sink, block_k);
  if (refresh > 1 && refresh > window)
    return strfmt("HiP: refresh %d exceeds the window %d (tokens generated between refreshes would be lost)",
                  refresh, window);
  return "";
}

namespace {

// The score of a sampled key that row i may not attend (key > t_i - w), applied before the max.
constexpr float kMaskedScore = -32000.0f;

void check_args(const HipConfig& cfg, const AttentionParams& p) {
  const std::string why = cfg.validate();
  HS_CHECK(why.empty(), "%s", why.c_str());
  HS_CHECK(p.n_q >= 0 && p.q_pos0 >= 0 && int64_t(p.q_pos0) + p.n_q <= p.n_kv,
           "hip_attention: queries [%d, %d) must lie in the cache of %d positions", p.q_pos0,
           p.q_pos0 + p.n_q, p.n_kv);
  HS_CHECK(p.n_kv_head > 0 && p.n_head > 0 && p.n_head % p.n_kv_head == 0,
           "hip_attention: n_head %d is not a multiple of n_kv_head %d", p.n_head, p.n_kv_head);
  HS_CHECK(p.head_dim > 0 && p.head_dim % 16 == 0 && p.head_dim <= kMaxHeadDim,
           "hip_attention: head_dim %d must be a multiple of 16 in [16, %d]", p.head_dim, kMaxHeadDim);
}

int32_t n_qblocks_of(const HipConfig& cfg, const AttentionParams& p) {
  return (p.n_q + cfg.block_q - 1) / cfg.block_q;
}

// Where one query block sits and what its estimate may search.
struct BlockGeom {
  int32_t row0 = 0, n_rows = 0;  // rows [row0, row0 + n_rows) of the call
  int32_t t_max = 0;             // position of the last row
  int32_t w_est = 0;             // window of the estimate: w, shrunk by refresh - 1 in decode (n_q == 1)
  int32_t lo = 0, hi = 0;        // searchable keys [lo, hi) (hi <= lo: nothing)
};

BlockGeom block_geom(const HipConfig& cfg, const AttentionParams& p, int32_t qblock) {
  BlockGeom g;
  g.row0 = qblock * cfg.block_q;
  g.n_rows = std::min(cfg.block_q, p.n_q - g.row0);
  g.t_max = p.q_pos0 + g.row0 + g.n_rows - 1;
  g.w_est = p.n_q == 1 ? cfg.window - (cfg.refresh - 1) : cfg.window;
  g.lo = cfg.n_sink;
  g.hi = g.t_max + 1 - g.w_est;
  return g;
}

// ---------------------------------------------------------------------------------------------------------------
// Scoring: q_i . k_j for the R sampled rows against groups of keys, in fp32 with a fixed accumulation order
// (so that the fast and the reference estimators agree bit for bit), chosen by R:
//  - R >= kRowsInLanes (prefill: b_q/b_sq = 16 rows): rows in lanes. Each dot is one FMA chain over
//    d = 0, 1, ..., dim-1 (s = fma(q_d, k_d, s)); per d, 8 rows x 4 keys take 2 row loads, 4 key broadcasts
//    and 8 FMAs, and no horizontal sums are needed (only a max over lanes per key).
//  - R < kRowsInLanes (decode: 1 row): dims in lanes. Lane l sums d = l (mod 8) with FMAs in increasing d,
//    then the lanes reduce as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)) (hsum4); rows in lanes would waste most
//    of the vector.
// Keys are converted from fp16 once per scored child (exact), into a small fp32 buffer.

constexpr int kRowsInLanes = 8;

inline __m256 load_half8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline __m128 hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// (max over lanes of m0, ..., of m3).
inline __m128 hmax4(__m256 m0, __m256 m1, __m256 m2, __m256 m3) {
  const __m256 x01 = _mm256_max_ps(_mm256_unpacklo_ps(m0, m1), _mm256_unpackhi_ps(m0, m1));
  const __m256 x23 = _mm256_max_ps(_mm256_unpacklo_ps(m2, m3), _mm256_unpackhi_ps(m2, m3));
  const __m256 y = _mm256_max_ps(_mm256_shuffle_ps(x01, x23, 0x44), _mm256_shuffle_ps(x01, x23, 0xEE));
  return _mm_max_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1));
}

// Dims in lanes: out[r] = (q_r . k_0, ..., q_r . k_3) for MR rows dim apart; keys from fp32 rows kb + c*dim.
template <int MR>
inline void dots_f32(const float* q, int dim, const float* kb, __m128* out) {
  __m256 acc[MR][4];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm256_setzero_ps();
  for (int d = 0; d < dim; d += 8) {
    const __m256 k0 = _mm256_load_ps(kb + d), k1 = _mm256_load_ps(kb + dim + d),
                 k2 = _mm256_load_ps(kb + 2 * dim + d), k3 = _mm256_load_ps(kb + 3 * dim + d);
    for (int r = 0; r < MR; ++r) {
      const __m256 qv = _mm256_load_ps(q + r * dim + d);
      acc[r][0] = _mm256_fmadd_ps(qv, k0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(qv, k1, acc[r][1]);
      acc[r][2] = _mm256_fmadd_ps(qv, k2, acc[r][2]);
      acc[r][3] = _mm256_fmadd_ps(qv, k3, acc[r][3]);
    }
  }
  for (int r = 0; r < MR; ++r) out[r] = hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
}

// One row against 8 keys straight from fp16 key rows (decode: each key is used once, so no fp32 copy); 8
// independent chains keep the FMA pipes busy. Dims in lanes, as dots_f32.
inline void dots_half_1row8(const float* q, int dim, const uint16_t* const* kr, float* out) {
  __m256 a[8];
  for (int c = 0; c < 8; ++c) a[c] = _mm256_setzero_ps();
  for (int d = 0; d < dim; d += 8) {
    const __m256 qv = _mm256_load_ps(q + d);
    for (int c = 0; c < 8; ++c) a[c] = _mm256_fmadd_ps(qv, load_half8(kr[c] + d), a[c]);
  }
  _mm_storeu_ps(out, hsum4(a[0], a[1], a[2], a[3]));
  _mm_storeu_ps(out + 4, hsum4(a[4], a[5], a[6], a[7]));
}

// Rows in lanes: acc[v][c] lane l = q_{8v+l} . k_c for RV vectors of 8 rows; qt is [dim][rp] (row-vector v at
// qt + d*rp + 8v), keys fp32 rows kb + c*dim.
template <int RV>
inline void dots_rows_in_lanes(const float* qt, int rp, int dim, const float* kb, __m256 (&acc)[RV][4]) {
  for (int v = 0; v < RV; ++v) acc[v][0] = acc[v][1] = acc[v][2] = acc[v][3] = _mm256_setzero_ps();
  for (int d = 0; d < dim; ++d) {
    __m256 q[RV];
    for (int v = 0; v < RV; ++v) q[v] = _mm256_load_ps(qt + int64_t(d) * rp + 8 * v);
    for (int c = 0; c < 4; ++c) {
      const __m256 kc = _mm256_broadcast_ss(kb + c * dim + d);
      for (int v = 0; v < RV; ++v) acc[v][c] = _mm256_fmadd_ps(q[v], kc, acc[v][c]);
    }
  }
}

inline void prefetch_key(const uint16_t* k, int dim) {
  const char* c = reinterpret_cast<const char*>(k);
  for (int b = 0; b < dim * 2; b += 64) _mm_prefetch(c + b, _MM_HINT_T0);
}

// Per-thread scratch of the estimator; sized by the largest problem seen, never shrunk.
struct EstScratch {
  AlignedFloats qs;          // dims in lanes: [R][dim] sampled query rows (fp32, unscaled)
  AlignedFloats qt;          // rows in lanes: [dim][rp] the same transposed, rows padded to rp = 8*ceil(R/8)
  std::vector<int32_t> lim;  // [rp] last key position row i may score: t_i - w_est (ascending; pad: INT_MIN)
  std::vector<int32_t> nodes;    // start blocks of the live nodes (relative to lo)
  std::vector<int32_t> cand;     // start blocks of this iteration's children
  std::vector<int32_t> todo;     // children still to score
  std::vector<int32_t> size_at;  // [N] size of the node / child starting at block c
  std::vector<float> score_at;   // [N] its score (NaN: not scored yet)
  std::vector<int32_t> kpos;     // sampled key positions of the children to score, b_k/b_sk each
  std::vector<int32_t> live;     // indices into kpos of keys some sampled row may score
  std::vector<float> kmax;       // per kpos entry: max over rows
  std::vector<uint64_t> keys;    // selection keys: (descending score order << 32) | start
  std::vector<uint64_t> keys_tmp;
  AlignedFloats kbuf;  // [4][dim] fp32 keys of one group
};

// Maps a score to 32 bits whose ascending order is the descending score order (-0 folded into +0).
inline uint32_t desc_order(float s) {
  s += 0.0f;  // -0 -> +0
  uint32_t u;
  std::memcpy(&u, &s, 4);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // ascending-order bits
  return ~u;
}

// The per-(head, query block) problem of the estimator.
struct EstProblem {
  KvHeadView kv;  // the KV head's rows (contiguous or paged)
  int dim;
  int R;  // sampled rows
};

// Rows in lanes over all row vectors of qt: the max over rows of the 4 keys' masked scores.
inline __m128 score4_rows_in_lanes(const EstScratch& sc, int R, int dim, const int32_t* pos4,
                                   bool need_mask) {
  const int rp = (R + 7) / 8 * 8, nv = rp / 8;
  const float* qt = sc.qt.data();
  const float* kb = sc.kbuf.data();
  const __m256 masked = _mm256_set1_ps(kMaskedScore), ninf = _mm256_set1_ps(-INFINITY);
  __m256 m[4] = {ninf, ninf, ninf, ninf};
  auto take = [&](int v, const __m256* acc) {  // acc[c]: row vector v against key c
    const __m256i lim = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc.lim.data() + 8 * v));
    const bool pad = 8 * v + 8 > R;
    for (int c = 0; c < 4; ++c) {
      __m256 x = acc[c];
      if (need_mask || pad) {  // rows with lim < pos score -32000 (pad lanes have lim = INT_MIN)
        const __m256i over = _mm256_cmpgt_epi32(_mm256_set1_epi32(pos4[c]), lim);
        x = _mm256_blendv_ps(x, masked, _mm256_castsi256_ps(over));
      }
      if (pad) {  // pad lanes do not exist: -inf
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i is_pad = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(R - 8 * v - 1));
        x = _mm256_blendv_ps(x, ninf, _mm256_castsi256_ps(is_pad));
      }
      m[c] = _mm256_max_ps(m[c], x);
    }
  };
  int v = 0;
  for (; v + 2 <= nv; v += 2) {
    __m256 acc[2][4];
    dots_rows_in_lanes<2>(qt + 8 * v, rp, dim, kb, acc);
    take(v, acc[0]);
    take(v + 1, acc[1]);
  }
  if (v < nv) {
    __m256 acc[1][4];
    dots_rows_in_lanes<1>(qt + 8 * v, rp, dim, kb, acc);
    take(v, acc[0]);
  }
  return hmax4(m[0], m[1], m[2], m[3]);
}

// kmax[j] = max_i (kpos[j] > lim[i] ? -32000 : q_i . k(kpos[j])) for j < n. Keys no row may score are not
// read. Returns the number of keys read.
int64_t score_keys(const EstProblem& ep, EstScratch& sc, int n) {
  const int R = ep.R, dim = ep.dim;
  const int32_t* lim = sc.lim.data();
  const int32_t lim_min = lim[0], lim_max = lim[R - 1];
  const int32_t* kpos = sc.kpos.data();
  float* kmax = sc.kmax.data();
  int n_live = 0;
  for (int j = 0; j < n; ++j) {
    if (kpos[j] > lim_max)
      kmax[j] = kMaskedScore;
    else
      sc.live[n_live++] = j;
  }
  const int32_t* live = sc.live.data();
  constexpr int kAhead = 3;  // groups prefetched ahead (the keys are scattered over the cache)
  if (R == 1) {              // decode: groups of 8 keys, one row
    const uint16_t* kr[8];
    alignas(32) float dots[8];
    for (int g = 0; g < std::min(n_live, 8 * kAhead); ++g)
      prefetch_key(ep.kv.key(kpos[live[g]]), dim);
    for (int g0 = 0; g0 < n_live; g0 += 8) {
      const int gn = std::min(8, n_live - g0);
      for (int c = 0; c < 8; ++c)
        kr[c] = ep.kv.key(kpos[live[g0 + std::min(c, gn - 1)]]);
      for (int c = g0 + 8 * kAhead; c < std::min(n_live, g0 + 8 * kAhead + 8); ++c)
        prefetch_key(ep.kv.key(kpos[live[c]]), dim);
      dots_half_1row8(sc.qs.data(), dim, kr, dots);
      for (int c = 0; c < gn; ++c) {
        const int j = live[g0 + c];
        kmax[j] = kpos[j] > lim[0] ? kMaskedScore : dots[c];
      }
    }
    return n_live;
  }
  float* kb = sc.kbuf.data();
  const float* qs = sc.qs.data();
  const bool rows_in_lanes = R >= kRowsInLanes;
  const uint16_t* kr[4];
  alignas(16) int32_t pos4[4];
  alignas(16) float best4[4];
  const __m128 masked = _mm_set1_ps(kMaskedScore);
  for (int g = 0; g < std::min(n_live, 4 * kAhead); ++g)
    prefetch_key(ep.kv.key(kpos[live[g]]), dim);
  for (int g0 = 0; g0 < n_live; g0 += 4) {
    const int gn = std::min(4, n_live - g0);
    for (int c = 0; c < 4; ++c) {
      const int j = live[g0 + std::min(c, gn - 1)];  // a short group repeats its last key
      pos4[c] = kpos[j];
      kr[c] = ep.kv.key(kpos[j]);
    }
    for (int c = g0 + 4 * kAhead; c < std::min(n_live, g0 + 4 * kAhead + 4); ++c)
      prefetch_key(ep.kv.key(kpos[live[c]]), dim);
    const bool need_mask = std::max(std::max(pos4[0], pos4[1]), std::max(pos4[2], pos4[3])) > lim_min;
    for (int c = 0; c < 4; ++c)
      for (int d = 0; d < dim; d += 8) _mm256_store_ps(kb + c * dim + d, load_half8(kr[c] + d));
    __m128 best;
    if (rows_in_lanes) {
      best = score4_rows_in_lanes(sc, R, dim, pos4, need_mask);
    } else {  // 2..7 rows (partial blocks, small b_q / b_sq)
      best = _mm_set1_ps(-INFINITY);
      const __m128i vpos = _mm_load_si128(reinterpret_cast<const __m128i*>(pos4));
      auto take = [&](int r, __m128 d) {
        if (need_mask) {
          const __m128i over = _mm_cmpgt_epi32(vpos, _mm_set1_epi32(lim[r]));
          d = _mm_blendv_ps(d, masked, _mm_castsi128_ps(over));
        }
        best = _mm_max_ps(best, d);
      };
      __m128 out[2];
      int r = 0;
      for (; r + 2 <= R; r += 2) {
        dots_f32<2>(qs + int64_t(r) * dim, dim, kb, out);
        take(r, out[0]);
        take(r + 1, out[1]);
      }
      if (r < R) {
        dots_f32<1>(qs + int64_t(r) * dim, dim, kb, out);
        take(r, out[0]);
      }
    }
    _mm_store_ps(best4, best);
    for (int c = 0; c < gn; ++c) kmax[live[g0 + c]] = best4[c];
  }
  return n_live;
}

// Moves the k smallest of the n distinct keys[0, n) to keys[0, k), in no particular order: MSD radix select
// on 8-bit digits with branch-free partitions (nth_element's comparisons mispredict about half the time on
// these keys), finishing small remainders with nth_element. tmp: n entries.
void select_smallest(uint64_t* keys, int n, int k, uint64_t* tmp) {
  if (k >= n) return;
  int placed = 0, need = k, n_cur = n;  // keys[0, placed) selected; need more from cur[0, n_cur)
  uint64_t* cur = keys;
  uint64_t diff = 0;  // bits in which some keys differ: digits start at the highest one
  for (int i = 1; i < n; ++i) diff |= keys[i] ^ keys[0];
  for (int shift = std::max(0, 63 - __builtin_clzll(diff | 1) - 7); n_cur > 32;
       shift = std::max(0, shift - 8)) {
    int hist[256] = {};
    for (int i = 0; i < n_cur; ++i) ++hist[(cur[i] >> shift) & 255];
    int b = 0, below = 0;
    while (below + hist[b] < need) below += hist[b++];
    // Digits < b are in, > b out, == b undecided. Writing the selected ones to keys[placed] never passes the
    // read position (also when cur == keys), the undecided go to tmp (compacted in place after the first
    // pass).
    int m = 0;
    for (int i = 0; i < n_cur; ++i) {
      const uint64_t x = cur[i];
      const int d = int((x >> shift) & 255);
      keys[placed] = x;
      placed += d < b;
      tmp[m] = x;
      m += d == b;
    }
    need -= below;
    cur = tmp;
    n_cur = m;
    if (need == n_cur || shift == 0) break;  // distinct keys: after the last digit n_cur == need
  }
  if (need < n_cur) std::nth_element(cur, cur + need, cur + n_cur);
  std::copy_n(cur, need, keys + placed);
}

// The fast estimator for one (head, query block): writes the ascending block list to out (capacity K_b) and
// returns its length.
int32_t estimate_into(const HipConfig& cfg, const AttentionParams& p, int32_t head, int32_t qblock,
                      EstScratch& sc, int32_t* out, int64_t& scored_keys, int64_t& iterations) {
  const BlockGeom g = block_geom(cfg, p, qblock);
  const int32_t bk = cfg.block_k, lo = g.lo, base = lo / bk;
  if (g.hi - lo <= cfg.k) {  // everything searchable fits: take it all (K_b blocks at most)
    const int32_t n = g.hi > lo ? (g.hi - lo + bk - 1) / bk : 0;
    for (int32_t s = 0; s < n; ++s) out[s] = base + s;
    return n;
  }
  const int32_t N = (g.hi - lo + bk - 1) / bk, Kb = cfg.k / bk;
  const int32_t pow2 = int32_t(1) << (31 - __builtin_clz(uint32_t(N)));  // 2^floor(log2 N)
  const int32_t A = (pow2 + Kb - 1) / Kb;

  // Sampled rows (ascending) and their score limits.
  const int dim = p.head_dim;
  const int32_t max_rows = cfg.block_q / cfg.stride_q + 1, max_rp = (max_rows + 7) / 8 * 8;
  sc.qs.reserve(size_t(max_rows) * dim);
  if (sc.lim.size() < size_t(max_rp)) sc.lim.resize(max_rp);
  int R = 0;
  auto add_row = [&](int32_t rr) {
    const float* q = p.q + int64_t(g.row0 + rr) * p.q_stride + int64_t(head) * dim;
    std::memcpy(sc.qs.data() + int64_t(R) * dim, q, sizeof(float) * dim);
    sc.lim[R++] = p.q_pos0 + g.row0 + rr - g.w_est;
  };
  for (int32_t rr = cfg.stride_q - 1; rr < g.n_rows; rr += cfg.stride_q) add_row(rr);
  if (g.n_rows % cfg.stride_q != 0) add_row(g.n_rows - 1);
  if (R >= kRowsInLanes) {  // transpose to [dim][rp], pad rows with zeros and lim = INT_MIN
    const int rp = (R + 7) / 8 * 8;
    sc.qt.reserve(size_t(rp) * dim);
    for (int r = R; r < rp; ++r) sc.lim[r] = std::numeric_limits<int32_t>::min();
    for (int d = 0; d < dim; ++d)
      for (int r = 0; r < rp; ++r)
        sc.qt.data()[int64_t(d) * rp + r] = r < R ? sc.qs.data()[int64_t(r) * dim + d] : 0.0f;
  }

  const int32_t group = p.n_head / p.n_kv_head;
  const EstProblem ep{kv_head_view(p, head / group), dim, R};
  const int32_t nks = bk / cfg.stride_k;  // sampled keys per representative block

  auto grow = [](auto& v, size_t n) {
    if (v.size() < n) v.resize(n);
  };
  const size_t max_cand = 2 * size_t(Kb);
  grow(sc.size_at, size_t(N));
  grow(sc.score_at, size_t(N));
  grow(sc.nodes, size_t(Kb));
  grow(sc.cand, max_cand);
  grow(sc.todo, max_cand);
  grow(sc.keys, max_cand);
  grow(sc.keys_tmp, max_cand);
  grow(sc.kpos, max_cand * nks);
  grow(sc.live, max_cand * nks);
  grow(sc.kmax, max_cand * nks);
  sc.kbuf.reserve(size_t(4) * dim);
  int32_t* size_at = sc.size_at.data();
  float* score_at = sc.score_at.data();
  const float unscored = std::numeric_limits<float>::quiet_NaN();

  // Initial nodes: aligned boundaries, the last one at N (tail fix).
  int32_t n_nodes = 0, max_size = 0;
  int32_t prev = 0;
  for (int32_t j = 1; j <= Kb; ++j) {
    const int32_t b = j == Kb ? N : std::min(int32_t((int64_t(j) * N / Kb) / A * A), N);
    if (b > prev) {
      sc.nodes[n_nodes++] = prev;
      size_at[prev] = b - prev;
      score_at[prev] = unscored;
      max_size = std::max(max_size, b - prev);
    }
    prev = b;
  }

  while (max_size > 1) {
    ++iterations;
    // Halve: children in cand, those without a score in todo.
    int32_t n_cand = 0, n_todo = 0;
    for (int32_t i = 0; i < n_nodes; ++i) {
      const int32_t s = sc.nodes[i], h = size_at[s];
      if (h == 1) {  // passes through as itself, with the score it already has (or gets now)
        sc.cand[n_cand++] = s;
        if (std::isnan(score_at[s])) sc.todo[n_todo++] = s;
        continue;
      }
      const int32_t hl = h / 2;
      size_at[s] = hl;
      size_at[s + hl] = h - hl;
      sc.cand[n_cand++] = s;
      sc.cand[n_cand++] = s + hl;
      sc.todo[n_todo++] = s;
      sc.todo[n_todo++] = s + hl;
    }
    // Score each child by its center block r = c + floor(h/2).
    int32_t* kp = sc.kpos.data();
    for (int32_t i = 0; i < n_todo; ++i) {
      const int32_t c = sc.todo[i], r = c + size_at[c] / 2;
      const int32_t k0 = lo + r * bk + cfg.stride_k - 1;
      for (int32_t j = 0; j < nks; ++j) *kp++ = k0 + j * cfg.stride_k;
    }
    scored_keys += score_keys(ep, sc, n_todo * nks);
    const float* km = sc.kmax.data();
    for (int32_t i = 0; i < n_todo; ++i, km += nks) {
      float s = km[0];
      for (int32_t j = 1; j < nks; ++j) s = std::max(s, km[j]);
      score_at[sc.todo[i]] = s;
    }
    // Select the K_b best children of all nodes (score desc, then start asc): no sort, a selection.
    for (int32_t i = 0; i < n_cand; ++i) {
      const int32_t c = sc.cand[i];
      sc.keys[i] = (uint64_t(desc_order(score_at[c])) << 32) | uint32_t(c);
    }
    select_smallest(sc.keys.data(), n_cand, Kb, sc.keys_tmp.data());
    n_nodes = std::min(n_cand, Kb);
    max_size = 0;
    for (int32_t i = 0; i < n_nodes; ++i) {
      const int32_t c = int32_t(uint32_t(sc.keys[i]));
      sc.nodes[i] = c;
      max_size = std::max(max_size, size_at[c]);
    }
  }
  std::sort(sc.nodes.begin(), sc.nodes.begin() + n_nodes);
  for (int32_t i = 0; i < n_nodes; ++i) out[i] = base + sc.nodes[i];
  return n_nodes;
}

EstScratch& est_scratch() {
  thread_local EstScratch sc;
  return sc;
}

// ---------------------------------------------------------------------------------------------------------------
// Block-sparse attention of one (head, query block): one online-softmax state over the gathered sink and
// selected keys (row t takes keys <= t - w) and the window range (row t takes (t - w, t]).

struct AttnScratch {
  QueryTile qt;
  SoftmaxState st;
  std::vector<int32_t> keys;  // ascending: sink keys, then the selected blocks' keys
};

AttnScratch& attn_scratch() {
  thread_local AttnScratch sc;
  return sc;
}

// Returns the (row, key) pairs attended.
int64_t attend_block(const HipConfig& cfg, const AttentionParams& p, int32_t head, int32_t qblock,
                     const int32_t* blocks, int32_t n_blocks, AttnScratch& sc, bool count) {
  const BlockGeom g = block_geom(cfg, p, qblock);
  const int32_t w = cfg.window, bk = cfg.block_k, dim = p.head_dim;
  const int32_t t_min = p.q_pos0 + g.row0, far = g.t_max - w;  // far: the last key a selected block may give
  // Key list: sink then selected keys, <= far (the last row's limit; earlier rows are cut per row).
  sc.keys.resize(size_t(cfg.n_sink) + size_t(n_blocks) * bk);
  int32_t n = 0;
  for (int32_t j = 0; j < std::min(cfg.n_sink, far + 1); ++j) sc.keys[n++] = j;
  for (int32_t b = 0; b < n_blocks; ++b) {
    const int32_t k0 = blocks[b] * bk, k1 = std::min(k0 + bk, far + 1);
    for (int32_t j = k0; j < k1; ++j) sc.keys[n++] = j;
  }

  QueryTile& qt = sc.qt;
  qt.init(g.n_rows, dim);
  for (int32_t r = 0; r < g.n_rows; ++r) {
    const int32_t t = t_min + r;
    qt.set_row(r, p.q + int64_t(g.row0 + r) * p.q_stride + int64_t(head) * dim, p.scale, 0,
               std::max(0, t - w + 1));
  }
  const int32_t kvh = head / (p.n_head / p.n_kv_head);
  const KvHeadView kv = kv_head_view(p, kvh);
  SoftmaxState& st = sc.st;
  st.init(g.n_rows, dim);
  attention_update_gather(st, qt, kv, sc.keys.data(), n);
  int64_t attended = 0;
  for (int32_t r = 0; r < g.n_rows; ++r) {
    const int32_t t = t_min + r, lo = std::max(0, t - w + 1);
    if (count)
      attended +=
          (std::upper_bound(sc.keys.data(), sc.keys.data() + n, t - w) - sc.keys.data()) + (t + 1 - lo);
    qt.set_key_range(r, lo, t + 1);
  }
  if (w > 0) attention_update(st, qt, kv, std::max(0, t_min - w + 1), g.t_max + 1);
  for (int32_t r = 0; r < g.n_rows; ++r)
    st.finalize_row(r, p.out + int64_t(g.row0 + r) * p.out_stride + int64_t(head) * dim);
  return attended;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Runs fn(item) for item in [0, n) on the pool, handed out one at a time (items cost about the same, but
// there are few of them in decode).
template <class Fn>
void for_each_item(ThreadPool& pool, int32_t n, const Fn& fn) {
  if (n <= 0) return;
  if (pool.size() == 1 || n == 1) {
    for (int32_t i = 0; i < n; ++i) fn(i);
    return;
  }
  struct Shared {
    std::atomic<int32_t> next{0};
    int32_t n;
    const Fn* fn;
  } sh;
  sh.n = n;
  sh.fn = &fn;
  Shared* shp = &sh;  // one pointer captured: std::function keeps it inline, no allocation per call
  pool.run([shp](int, int) {
    for (int32_t i = shp->next.fetch_add(1, std::memory_order_relaxed); i < shp->n;
         i = shp->next.fetch_add(1, std::memory_order_relaxed))
      (*shp->fn)(i);
  });
}

// Decode (one row per head, mask of one query block): the sink and the window are the same keys for every
// query head of a KV group, so one item per group attends to them with the group's G rows in one tile (each
// K/V block read once for G heads instead of G times), one item per head attends to its own selected blocks
// (keys <= t - w), and each head's two partial states are merged (disjoint key sets: the blocks start at
// n_sink). Deterministic: the same items and merge order whatever the thread count.
struct DecodeScratch {
  std::vector<SoftmaxState> group, head;  // [n_kv_head] of G rows, [n_head] of 1 row
  std::vector<QueryTile> tiles;           // [n_kv_head + n_head]
};

int64_t decode_attend(const HipConfig& cfg, const AttentionParams& p, const HipMask& mask, ThreadPool& pool,
                      bool count) {
  // Of the calling thread (a reference, so that the items on the pool's threads see this one, not theirs);
  // the items write disjoint entries.
  thread_local DecodeScratch scratch;
  DecodeScratch& sc = scratch;
  const int32_t H = p.n_head, Hkv = p.n_kv_head, G = H / Hkv, dim = p.head_dim;
  const int32_t t = p.q_pos0, w = cfg.window, far = t - w, bk = cfg.block_k;
  const int32_t sink_hi = std::max(0, std::min(cfg.n_sink, far + 1)), win_lo = std::max(0, t - w + 1);
  if (sc.group.size() < size_t(Hkv)) sc.group.resize(size_t(Hkv));
  if (sc.head.size() < size_t(H)) sc.head.resize(size_t(H));
  if (sc.tiles.size() < size_t(Hkv + H)) sc.tiles.resize(size_t(Hkv + H));
  std::atomic<int64_t> attended{0};
  for_each_item(pool, Hkv + H, [&](int32_t item) {
    QueryTile& qt = sc.tiles[size_t(item)];
    if (item < Hkv) {  // the group's sink and window
      const int32_t g = item;
      const KvHeadView kv = kv_head_view(p, g);
      SoftmaxState& st = sc.group[size_t(g)];
      qt.init(G, dim);
      st.init(G, dim);
      for (int32_t r = 0; r < G; ++r) qt.set_row(r, p.q + int64_t(g * G + r) * dim, p.scale, 0, sink_hi);
      if (sink_hi > 0) attention_update(st, qt, kv, 0, sink_hi);
      for (int32_t r = 0; r < G; ++r) qt.set_key_range(r, win_lo, t + 1);
      if (w > 0) attention_update(st, qt, kv, win_lo, t + 1);
      if (count)
        attended.fetch_add(int64_t(G) * (sink_hi + (w > 0 ? t + 1 - win_lo : 0)), std::memory_order_relaxed);
      return;
    }
    const int32_t h = item - Hkv;  // the head's selected blocks, keys <= far
    SoftmaxState& st = sc.head[size_t(h)];
    qt.init(1, dim);
    st.init(1, dim);
    qt.set_row(0, p.q + int64_t(h) * dim, p.scale, 0, far + 1);
    std::vector<int32_t>& keys = attn_scratch().keys;
    keys.clear();
    for (int32_t i = mask.indptr[h]; i < mask.indptr[h + 1]; ++i) {
      const int32_t k0 = mask.indices[i] * bk, k1 = std::min(k0 + bk, far + 1);
      for (int32_t j = k0; j < k1; ++j) keys.push_back(j);
    }
    if (!keys.empty())
      attention_update_gather(st, qt, kv_head_view(p, h / G), keys.data(), int32_t(keys.size()));
    if (count) attended.fetch_add(int64_t(keys.size()), std::memory_order_relaxed);
  });
  for (int32_t h = 0; h < H; ++h) {  // each head's row of its group's state into the head's own state
    sc.head[size_t(h)].merge_row(0, sc.group[size_t(h / G)], h % G);
    sc.head[size_t(h)].finalize_row(0, p.out + int64_t(h) * dim);
  }
  return attended.load();
}

}  // namespace

std::vector<int32_t> hip_estimate_blocks(const HipConfig& cfg, const AttentionParams& p, int32_t head,
                                         int32_t qblock, HipStats* stats) {
  check_args(cfg, p);
  HS_CHECK(head >= 0 && head < p.n_head && qblock >= 0 && qblock < n_qblocks_of(cfg, p),
           "hip_estimate_blocks: head %d / query block %d out of range", head, qblock);
  std::vector<int32_t> out(size_t(cfg.k / cfg.block_k));
  int64_t scored = 0, iters = 0;
  const auto t0 = std::chrono::steady_clock::now();
  out.resize(size_t(estimate_into(cfg, p, head, qblock, est_scratch(), out.data(), scored, iters)));
  if (stats) {
    stats->scored_keys += scored;
    stats->iterations += iters;
    stats->mask_ms += ms_since(t0);
  }
  return out;
}

void hip_attention(const HipConfig& cfg, const AttentionParams& p, HipMask& mask, bool estimate,
                   ThreadPool& pool, HipStats* stats) {
  check_args(cfg, p);
  if (p.n_q == 0) return;
  const int32_t H = p.n_head, nqb = n_qblocks_of(cfg, p), n_items = H * nqb;
  const int32_t Kb = cfg.k / cfg.block_k;

  std::atomic<int64_t> scored{0}, iters{0}, attended{0};
  if (estimate) {
    const auto t0 = std::chrono::steady_clock::now();
    mask.n_head = H;
    mask.n_qblocks = nqb;
    mask.indptr.resize(size_t(n_items) + 1);
    mask.indices.resize(size_t(n_items) * Kb);  // item i first at i*Kb, compacted below
    for_each_item(pool, n_items, [&](int32_t item) {
      int64_t s = 0, it = 0;
      const int32_t m = item / H, h = item % H;  // heads of one KV group next to each other: shared keys
      const int32_t row = h * nqb + m;
      mask.indptr[row + 1] =
          estimate_into(cfg, p, h, m, est_scratch(), mask.indices.data() + int64_t(row) * Kb, s, it);
      scored.fetch_add(s, std::memory_order_relaxed);
      iters.fetch_add(it, std::memory_order_relaxed);
    });
    mask.indptr[0] = 0;
    for (int32_t row = 0; row < n_items; ++row) {
      const int32_t n = mask.indptr[row + 1];
      std::memmove(mask.indices.data() + mask.indptr[row], mask.indices.data() + int64_t(row) * Kb,
                   sizeof(int32_t) * n);  // the destination never passes the source
      mask.indptr[row + 1] = mask.indptr[row] + n;
    }
    mask.indices.resize(size_t(mask.indptr[n_items]));
    mask.estimated_at = p.q_pos0 + p.n_q - 1;
    if (stats) stats->mask_ms += ms_since(t0);
  } else {
    HS_CHECK(
        p.n_q == 1 && mask.n_qblocks == 1 && mask.n_head == H && mask.indptr.size() == size_t(H) + 1 &&
            mask.indices.size() == size_t(mask.indptr[H]),
        "hip_attention: a cached mask needs one query row (got %d) and a mask of 1 query block x %d heads "
        "(got %d x %d)",
        p.n_q, H, mask.n_qblocks, mask.n_head);
    const int32_t first = cfg.n_sink / cfg.block_k;
    for (int32_t h = 0; h < H; ++h)
      for (int32_t i = mask.indptr[h]; i < mask.indptr[h + 1]; ++i)
        HS_CHECK(mask.indices[i] >= first && (i == mask.indptr[h] || mask.indices[i] > mask.indices[i - 1]),
                 "hip_attention: cached mask of head %d is not ascending from block %d", h, first);
  }

  const auto t1 = std::chrono::steady_clock::now();
  const bool count = stats != nullptr;
  if (p.n_q == 1)
    attended = decode_attend(cfg, p, mask, pool, count);
  else
    for_each_item(pool, n_items, [&](int32_t item) {
      const int32_t m = item / H, h = item % H;
      const int32_t row = h * nqb + m;
      const int32_t b0 = mask.indptr[row];
      const int64_t a = attend_block(cfg, p, h, m, mask.indices.data() + b0, mask.indptr[row + 1] - b0,
                                     attn_scratch(), count);
      if (count) attended.fetch_add(a, std::memory_order_relaxed);
    });
  if (stats) {
    stats->attn_ms += ms_since(t1);
    stats->scored_keys += scored.load();
    stats->iterations += iters.load();
    stats->attended_keys += attended.load();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The reference: HIP_MASK of HIP_REFERENCE.md section 2, line by line, with this file's decisions (sampled
// rows of partial blocks, decode window shrink, tail fix, tie rule, dot order).

namespace {

// fp32 q . k in the fixed order of the fast kernels, which depends on the number of sampled rows R: one FMA
// chain over d for R >= 8, else 8 lane sums over d = l (mod 8) reduced as a pair tree.
float reference_dot(const float* q, const uint16_t* k, int32_t dim, size_t n_rows) {
  if (n_rows >= size_t(kRowsInLanes)) {
    float s = 0;
    for (int32_t d = 0; d < dim; ++d) s = std::fma(q[d], fp16_to_fp32(k[d]), s);
    return s;
  }
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int32_t d = 0; d < dim; d += 8)
    for (int32_t l = 0; l < 8; ++l) lane[l] = std::fma(q[d + l], fp16_to_fp32(k[d + l]), lane[l]);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

}  // namespace

std::vector<int32_t> hip_estimate_blocks_reference(const HipConfig& cfg, const AttentionParams& p,
                                                   int32_t head, int32_t qblock) {
  check_args(cfg, p);
  HS_CHECK(head >= 0 && head < p.n_head && qblock >= 0 && qblock < n_qblocks_of(cfg, p),
           "hip_estimate_blocks_reference: head %d / query block %d out of range", head, qblock);
  const int32_t b_q = cfg.block_q, b_k = cfg.block_k, b_sq = cfg.stride_q, b_sk = cfg.stride_k;
  const int32_t first_row = qblock * b_q, last_row = std::min((qblock + 1) * b_q, p.n_q) - 1;
  const int32_t t_max = p.q_pos0 + last_row;
  const int32_t w = p.n_q == 1 ? cfg.window - (cfg.refresh - 1) : cfg.window;  // decode: shrunk window
  const int32_t lo = cfg.n_sink, hi = t_max + 1 - w;
  std::vector<int32_t> result;
  if (hi - lo <= cfg.k) {
    for (int32_t s = 0; lo + s * b_k < hi; ++s) result.push_back(lo / b_k + s);
    return result;
  }
  const int32_t N = (hi - lo + b_k - 1) / b_k, Kb = cfg.k / b_k;
  int64_t pow2 = 1;
  while (pow2 * 2 <= N) pow2 *= 2;
  const int64_t A = (pow2 + Kb - 1) / Kb;
  std::vector<int64_t> bnd(size_t(Kb) + 1);
  for (int32_t j = 0; j < Kb; ++j) bnd[j] = std::min<int64_t>((int64_t(j) * N / Kb) / A * A, N);
  bnd[Kb] = N;  // tail fix ([C] rounds this one down too)
  struct Node {
    int32_t s, g;
  };
  std::vector<Node> nodes;
  for (int32_t j = 0; j < Kb; ++j) nodes.push_back({int32_t(bnd[j]), int32_t(bnd[j + 1] - bnd[j])});
  std::vector<int32_t> rows;  // in-call row indices
  for (int32_t i = 0; i < b_q / b_sq; ++i)
    if (first_row + i * b_sq + b_sq - 1 <= last_row) rows.push_back(first_row + i * b_sq + b_sq - 1);
  if (rows.empty() || rows.back() != last_row) rows.push_back(last_row);  // partial block: its last row too
  const int32_t kvh = head / (p.n_head / p.n_kv_head);
  const KvHeadView K = kv_head_view(p, kvh);

  auto max_size = [&] {
    int32_t m = 0;
    for (const Node& n : nodes) m = std::max(m, n.g);
    return m;
  };
  struct Cand {
    float score;
    int32_t c, h;
  };
  while (max_size() > 1) {
    std::vector<Cand> cand;
    for (const Node& node : nodes) {
      const Node halves[2] = {{node.s, node.g / 2}, {node.s + node.g / 2, node.g - node.g / 2}};
      for (const Node& ch : halves) {
        if (ch.g == 0) continue;
        const int32_t r = ch.s + ch.g / 2;
        float best = -std::numeric_limits<float>::infinity();
        for (int32_t row : rows)
          for (int32_t j = 0; j < b_k / b_sk; ++j) {
            const int32_t key = lo + r * b_k + j * b_sk + b_sk - 1;
            float S;
            if (key > p.q_pos0 + row - w)
              S = kMaskedScore;
            else
              S = reference_dot(p.q + int64_t(row) * p.q_stride + int64_t(head) * p.head_dim,
                                K.key(key), p.head_dim, rows.size());
            best = std::max(best, S);
          }
        cand.push_back({best, ch.s, ch.g});
      }
    }
    std::sort(cand.begin(), cand.end(), [](const Cand& a, const Cand& b) {
      return a.score > b.score || (a.score == b.score && a.c < b.c);
    });
    nodes.clear();
    for (size_t i = 0; i < cand.size() && i < size_t(Kb); ++i) nodes.push_back({cand[i].c, cand[i].h});
  }
  for (const Node& n : nodes) result.push_back(lo / b_k + n.s);
  std::sort(result.begin(), result.end());
  return result;
}

}  // namespace hs
