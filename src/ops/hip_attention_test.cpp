#include "ops/hip_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "util/common.h"

namespace hs {
namespace {

enum class Keys {
  kUniform,    // iid uniform [-1, 1]
  kSmooth,     // per-dim AR(1) random walk over positions plus noise: attention locality
  kFewValues,  // every key one of 3 vectors, queries from 3 vectors: many exactly tied scores
};

// One random problem with its own storage; the cache is [kv head][pos][dim] with spare capacity, q rows
// padded.
struct Problem {
  std::vector<float> q, out;
  std::vector<uint16_t> k, v;
  AttentionParams p;

  Problem(int32_t n_q, int32_t n_kv, int32_t q_pos0, int32_t n_head, int32_t n_kv_head, int32_t head_dim,
          uint32_t seed, Keys keys = Keys::kUniform) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> Uq(-2.0f, 2.0f), Ukv(-1.0f, 1.0f);
    std::normal_distribution<float> N01(0.0f, 1.0f);
    p.n_q = n_q, p.n_kv = n_kv, p.q_pos0 = q_pos0;
    p.n_head = n_head, p.n_kv_head = n_kv_head, p.head_dim = head_dim;
    p.scale = 1.0f / std::sqrt(float(head_dim));
    p.q_stride = p.out_stride = int64_t(n_head) * head_dim + 16;
    q.resize(size_t(std::max(n_q, 1)) * p.q_stride);
    out.assign(q.size(), -7.0f);
    const int64_t cap = n_kv + 3;
    k.resize(size_t(cap) * n_kv_head * head_dim);
    v.resize(k.size());
    p.kv_pos_stride = head_dim;
    p.kv_head_stride = cap * head_dim;
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data();
    for (auto& x : v) x = fp32_to_fp16(Ukv(rng));
    if (keys == Keys::kFewValues) {
      float kv3[3][kMaxHeadDim], q3[3][kMaxHeadDim];
      for (int a = 0; a < 3; ++a)
        for (int d = 0; d < head_dim; ++d) kv3[a][d] = Ukv(rng), q3[a][d] = Uq(rng);
      std::uniform_int_distribution<int> pick(0, 2);
      for (int64_t row = 0; row < cap * n_kv_head; ++row) {
        const int a = pick(rng);
        for (int d = 0; d < head_dim; ++d) k[row * head_dim + d] = fp32_to_fp16(kv3[a][d]);
      }
      for (int32_t i = 0; i < std::max(n_q, 1); ++i)
        for (int32_t h = 0; h < n_head; ++h) {
          const int a = pick(rng);
          for (int d = 0; d < head_dim; ++d) q[i * p.q_stride + h * head_dim + d] = q3[a][d];
        }
      return;
    }
    for (auto& x : q) x = Uq(rng);
    if (keys == Keys::kUniform) {
      for (auto& x : k) x = fp32_to_fp16(Ukv(rng));
      return;
    }
    for (int32_t g = 0; g < n_kv_head; ++g) {  // kSmooth
      std::vector<float> walk(head_dim);
      for (auto& x : walk) x = 0.5f * N01(rng);
      for (int64_t pos = 0; pos < cap; ++pos)
        for (int d = 0; d < head_dim; ++d) {
          walk[d] = 0.97f * walk[d] + 0.12f * N01(rng);  // stationary std ~0.5, correlation length ~30 keys
          const float x = std::clamp(walk[d] + 0.05f * N01(rng), -1.0f, 1.0f);
          k[g * p.kv_head_stride + pos * head_dim + d] = fp32_to_fp16(x);
        }
    }
  }

  // Decode step at position t of a problem whose rows are positions 0..n_q-1 (q_pos0 = 0): one query row, a
  // cache of t+1 positions.
  AttentionParams step(int32_t t) const {
    AttentionParams s = p;
    s.q = q.data() + int64_t(t) * p.q_stride;
    s.out = const_cast<float*>(out.data()) + int64_t(t) * p.out_stride;
    s.n_q = 1, s.q_pos0 = t, s.n_kv = t + 1;
    return s;
  }
};

HipConfig small_config(int32_t k, int32_t bq, int32_t bk, int32_t sq, int32_t sk, int32_t sink,
                       int32_t window, int32_t refresh = 1) {
  HipConfig c;
  c.k = k, c.block_q = bq, c.block_k = bk, c.stride_q = sq, c.stride_k = sk;
  c.n_sink = sink, c.window = window, c.refresh = refresh;
  EXPECT_EQ(c.validate(), "");
  return c;
}

// Error bound relative to max|v| = 1 (see attention_test.cpp): fp32 scores over head_dim terms with |q| <= 2,
// |k| <= 1, exp_avx2, fp32 sums over n_vis terms.
double error_bound(const AttentionParams& p, int32_t n_vis) {
  const double u = std::ldexp(1.0, -24);
  const double ds = p.head_dim * u * p.scale * 2.0 * p.head_dim;
  return 2 * ds + 6e-7 + 2 * n_vis * u;
}

// Attention of one (row, head) over an explicit key set, in double precision.
void naive_row(const AttentionParams& p, int32_t row, int32_t head, const std::vector<int32_t>& keys,
               std::vector<double>& out) {
  const int32_t kvh = head / (p.n_head / p.n_kv_head), hd = p.head_dim;
  const float* q = p.q + int64_t(row) * p.q_stride + int64_t(head) * hd;
  std::vector<double> s(keys.size());
  double mx = -INFINITY;
  for (size_t j = 0; j < keys.size(); ++j) {
    const uint16_t* kr = p.k + kvh * p.kv_head_stride + int64_t(keys[j]) * p.kv_pos_stride;
    double dot = 0;
    for (int32_t d = 0; d < hd; ++d) dot += double(q[d]) * fp16_to_fp32(kr[d]);
    s[j] = dot * p.scale;
    mx = std::max(mx, s[j]);
  }
  out.assign(hd, 0.0);
  double sum = 0;
  for (size_t j = 0; j < keys.size(); ++j) {
    const double e = std::exp(s[j] - mx);
    sum += e;
    const uint16_t* vr = p.v + kvh * p.kv_head_stride + int64_t(keys[j]) * p.kv_pos_stride;
    for (int32_t d = 0; d < hd; ++d) out[d] += e * fp16_to_fp32(vr[d]);
  }
  for (auto& x : out) x = sum > 0 ? x / sum : 0.0;
}

// The keys row `row` of p attends under HiP with the given blocks, built from the definition: sink and
// selected keys <= t - w, window (t - w, t].
std::vector<int32_t> hip_key_set(const HipConfig& cfg, const AttentionParams& p, int32_t row,
                                 const int32_t* blocks, int32_t n_blocks) {
  const int32_t t = p.q_pos0 + row, w = cfg.window;
  std::vector<int32_t> keys;
  for (int32_t j = 0; j < cfg.n_sink && j <= t - w; ++j) keys.push_back(j);
  for (int32_t b = 0; b < n_blocks; ++b)
    for (int32_t j = blocks[b] * cfg.block_k; j < (blocks[b] + 1) * cfg.block_k && j <= t - w; ++j)
      keys.push_back(j);
  for (int32_t j = std::max(0, t - w + 1); j <= t; ++j) keys.push_back(j);
  return keys;
}

std::vector<int32_t> blocks_of(const HipMask& m, int32_t head, int32_t qblock) {
  const int32_t r = head * m.n_qblocks + qblock;
  return std::vector<int32_t>(m.indices.begin() + m.indptr[r], m.indices.begin() + m.indptr[r + 1]);
}

// got (layout of p.out) against the naive HiP reference of every row and head of p under mask.
void expect_matches_sparse_reference(const HipConfig& cfg, const AttentionParams& p, const HipMask& mask,
                                     const float* got, const char* what) {
  std::vector<double> ref;
  double worst = 0;
  for (int32_t h = 0; h < p.n_head; ++h)
    for (int32_t i = 0; i < p.n_q; ++i) {
      const int32_t m = p.n_q == 1 ? 0 : i / cfg.block_q;
      const std::vector<int32_t> blocks = blocks_of(mask, h, m);
      const std::vector<int32_t> keys = hip_key_set(cfg, p, i, blocks.data(), int32_t(blocks.size()));
      naive_row(p, i, h, keys, ref);
      const double bound = error_bound(p, int32_t(keys.size()));
      for (int32_t d = 0; d < p.head_dim; ++d) {
        const double e = std::abs(got[i * p.out_stride + h * p.head_dim + d] - ref[d]);
        worst = std::max(worst, e / bound);
        ASSERT_LE(e, bound) << what << " head " << h << " row " << i << " dim " << d;
      }
    }
}

// ---------------------------------------------------------------------------------------------------------------

TEST(HipConfig, Validate) {
  EXPECT_EQ(HipConfig{}.validate(), "");
  auto bad = [](auto f) {
    HipConfig c;
    f(c);
    return !c.validate().empty();
  };
  EXPECT_TRUE(bad([](HipConfig& c) { c.k = 511; }));
  EXPECT_TRUE(bad([](HipConfig& c) { c.block_q = 31; }));
  EXPECT_TRUE(bad([](HipConfig& c) { c.stride_k = 4; }));
  EXPECT_TRUE(bad([](HipConfig& c) { c.n_sink = 15; }));
  EXPECT_TRUE(bad([](HipConfig& c) { c.refresh = 300; }));
  EXPECT_TRUE(bad([](HipConfig& c) { c.refresh = 0; }));
  EXPECT_TRUE(bad([](HipConfig& c) { c.window = -1; }));
  EXPECT_TRUE(bad([](HipConfig& c) { c.block_k = 0; }));
  EXPECT_FALSE(bad([](HipConfig& c) { c.window = 0, c.refresh = 1; }));
  EXPECT_TRUE(bad([](HipConfig& c) { c.window = 0, c.refresh = 2; }));
}

// 1. k >= context, no sink, no window: every block of [0, t_max] is selected and HiP is dense attention.
TEST(HipAttention, FullBudgetEqualsDensePrefill) {
  ThreadPool pool(2);
  struct Case {
    int32_t n_q, n_kv, q_pos0, bq, bk;
  };
  for (const Case c : {Case{64, 64, 0, 32, 2}, Case{100, 357, 200, 32, 2}, Case{37, 1000, 963, 16, 4},
                       Case{128, 700, 300, 64, 8}}) {
    Problem pr(c.n_q, c.n_kv, c.q_pos0, 6, 2, 64, 11 + c.n_kv);
    const int32_t k = (c.n_kv + c.bk - 1) / c.bk * c.bk;
    const HipConfig cfg = small_config(k, c.bq, c.bk, 2, 1, 0, 0);
    HipMask mask;
    HipStats st;
    hip_attention(cfg, pr.p, mask, true, pool, &st);
    std::vector<float> naive(pr.out.size(), -7.0f), dense(pr.out.size(), -7.0f);
    AttentionParams dp = pr.p;
    dp.out = naive.data();
    attention_naive(dp);
    dp.out = dense.data();
    attention_dense(dp, pool);
    for (int32_t i = 0; i < c.n_q; ++i)
      for (int32_t j = 0; j < pr.p.n_head * pr.p.head_dim; ++j) {
        const float got = pr.out[i * pr.p.out_stride + j];
        const double bound = error_bound(pr.p, c.q_pos0 + i + 1);
        ASSERT_LE(std::abs(got - naive[i * pr.p.out_stride + j]), bound)
            << "naive: n_kv " << c.n_kv << " row " << i << " col " << j;
        ASSERT_LE(std::abs(got - dense[i * pr.p.out_stride + j]), 2 * bound)
            << "dense: n_kv " << c.n_kv << " row " << i << " col " << j;
      }
    int64_t pairs = 0;
    for (int32_t i = 0; i < c.n_q; ++i) pairs += c.q_pos0 + i + 1;
    EXPECT_EQ(st.attended_keys, pairs * pr.p.n_head);
  }
}

// Same with sink and window > 0 but a budget covering the rest: the three key sets must partition [0, t].
TEST(HipAttention, FullBudgetWithSinkAndWindowEqualsDense) {
  ThreadPool pool(2);
  Problem pr(96, 900, 804, 6, 3, 32, 5);
  const HipConfig cfg = small_config(1024, 32, 4, 2, 2, 16, 100, 8);
  HipMask mask;
  hip_attention(cfg, pr.p, mask, true, pool);
  std::vector<float> dense(pr.out.size());
  AttentionParams dp = pr.p;
  dp.out = dense.data();
  attention_naive(dp);
  for (int32_t i = 0; i < pr.p.n_q; ++i)
    for (int32_t j = 0; j < pr.p.n_head * pr.p.head_dim; ++j)
      ASSERT_LE(std::abs(pr.out[i * pr.p.out_stride + j] - dense[i * pr.p.out_stride + j]),
                error_bound(pr.p, pr.p.q_pos0 + i + 1));
}

TEST(HipAttention, FullBudgetEqualsDenseDecode) {
  ThreadPool pool(2);
  const int32_t T = 600;
  Problem pr(T, T, 0, 6, 2, 64, 3);
  const HipConfig cfg = small_config(T, 32, 2, 2, 1, 0, 0);
  HipMask mask;
  std::vector<float> ref(size_t(pr.p.n_head) * pr.p.head_dim);
  for (int32_t t : {0, 1, 2, 17, 255, 256, 511, 599}) {
    const AttentionParams s = pr.step(t);
    hip_attention(cfg, s, mask, true, pool);
    EXPECT_EQ(mask.estimated_at, t);
    AttentionParams rp = s;
    rp.out = ref.data();
    attention_naive(rp);
    for (size_t j = 0; j < ref.size(); ++j)
      ASSERT_LE(std::abs(s.out[j] - ref[j]), error_bound(s, t + 1)) << t;
  }
}

// 2. The fast estimator selects exactly the blocks of the line-by-line transcription.
TEST(HipEstimate, FastEqualsReference) {
  struct Case {
    int32_t T, n_q, k, bq, bk, sq, sk, sink, window, refresh;
    Keys keys;
  };
  const std::vector<Case> cases = {
      {100, 40, 16, 8, 2, 2, 1, 0, 0, 1, Keys::kUniform},
      {300, 64, 32, 16, 2, 2, 1, 4, 16, 1, Keys::kUniform},
      {777, 100, 64, 32, 2, 2, 1, 16, 64, 1, Keys::kSmooth},
      {1500, 77, 96, 32, 4, 4, 2, 8, 40, 1, Keys::kUniform},  // K_b = 24, not a power of two
      {2000, 50, 128, 16, 8, 1, 4, 16, 128, 1, Keys::kSmooth},
      {2500, 64, 400, 32, 2, 2, 1, 16, 256, 1, Keys::kUniform},    // A > 1 with empty initial nodes
      {3000, 1, 256, 32, 2, 2, 1, 16, 64, 8, Keys::kUniform},      // decode, window shrunk by 7
      {3000, 1, 128, 32, 4, 2, 2, 16, 64, 1, Keys::kSmooth},       // decode, refresh 1
      {4000, 64, 256, 32, 2, 2, 1, 16, 256, 1, Keys::kFewValues},  // ties everywhere
      {4000, 1, 256, 32, 2, 2, 1, 16, 256, 4, Keys::kFewValues},
      {5000, 33, 512, 32, 2, 2, 1, 16, 256, 1, Keys::kSmooth},  // partial second block (1 row)
      {6000, 96, 64, 64, 1, 4, 1, 3, 10, 1, Keys::kUniform},    // b_k = 1
      {9000, 40, 512, 32, 2, 2, 1, 16, 256, 1, Keys::kUniform},
      {3500, 89, 256, 64, 2, 2, 1, 16, 128, 1, Keys::kSmooth},  // R = 32 (4 row vectors), then R = 13 (pad)
      {2200, 40, 128, 48, 2, 1, 1, 8, 32, 1, Keys::kUniform},   // R = 40: 2 + 2 + 1 row vectors
      {20000, 32, 512, 32, 2, 2, 1, 16, 256, 1, Keys::kSmooth},
      {20000, 1, 512, 32, 2, 2, 1, 16, 256, 8, Keys::kUniform},
  };
  int n_checked = 0;
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const Case& c = cases[ci];
    for (uint32_t seed = 0; seed < (c.T > 5000 ? 1u : 3u); ++seed) {
      const int32_t q_pos0 = c.T - c.n_q;
      Problem pr(c.n_q, c.T, q_pos0, 4, 2, c.T > 5000 ? 32 : 64, uint32_t(1000 * ci + seed), c.keys);
      const HipConfig cfg = small_config(c.k, c.bq, c.bk, c.sq, c.sk, c.sink, c.window, c.refresh);
      const int32_t nqb = (c.n_q + c.bq - 1) / c.bq;
      for (int32_t h = 0; h < pr.p.n_head; h += (c.T > 5000 ? 3 : 1))
        for (int32_t m = 0; m < nqb; ++m) {
          const std::vector<int32_t> fast = hip_estimate_blocks(cfg, pr.p, h, m);
          const std::vector<int32_t> ref = hip_estimate_blocks_reference(cfg, pr.p, h, m);
          ASSERT_EQ(fast, ref) << "case " << ci << " seed " << seed << " head " << h << " qblock " << m;
          ++n_checked;
        }
    }
  }
  EXPECT_GT(n_checked, 100);
}

// Random configurations (block shapes, strides, budgets, sink, window, refresh, chunk offsets, decode rows).
TEST(HipEstimate, FastEqualsReferenceRandomConfigs) {
  std::mt19937 rng(2024);
  auto pick = [&](std::initializer_list<int32_t> v) {
    return *(v.begin() + std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng));
  };
  for (int it = 0; it < 60; ++it) {
    HipConfig c;
    c.block_k = pick({1, 2, 4, 8});
    c.stride_k = pick({1, 2, 4, 8});
    if (c.block_k % c.stride_k != 0) c.stride_k = 1;
    c.block_q = pick({4, 8, 16, 32, 64});
    c.stride_q = pick({1, 2, 4});
    c.k = c.block_k * std::uniform_int_distribution<int32_t>(1, 300)(rng);
    c.n_sink = c.block_k * std::uniform_int_distribution<int32_t>(0, 8)(rng);
    c.window = pick({0, 1, 17, 64, 256});
    c.refresh = c.window == 0 ? 1 : std::uniform_int_distribution<int32_t>(1, std::min(c.window, 16))(rng);
    ASSERT_EQ(c.validate(), "");
    const int32_t T = std::uniform_int_distribution<int32_t>(50, 6000)(rng);
    const int32_t n_q = std::min(pick({1, 1, 3, 37, 100}), T);
    const int32_t q_pos0 = std::uniform_int_distribution<int32_t>(0, T - n_q)(rng);
    const Keys keys =
        pick({0, 1, 2}) == 0 ? Keys::kUniform : (pick({0, 1}) ? Keys::kSmooth : Keys::kFewValues);
    Problem pr(n_q, T, q_pos0, 2, 1, pick({16, 32, 64}), 5000 + it, keys);
    const int32_t nqb = (n_q + c.block_q - 1) / c.block_q;
    const int32_t m = std::uniform_int_distribution<int32_t>(0, nqb - 1)(rng);
    for (int32_t h = 0; h < 2; ++h)
      ASSERT_EQ(hip_estimate_blocks(c, pr.p, h, m), hip_estimate_blocks_reference(c, pr.p, h, m))
          << "iteration " << it << ": T " << T << " n_q " << n_q << " q_pos0 " << q_pos0 << " k " << c.k
          << " b_q " << c.block_q << " b_k " << c.block_k << " b_sq " << c.stride_q << " b_sk " << c.stride_k
          << " sink " << c.n_sink << " w " << c.window << " r " << c.refresh << " qblock " << m;
  }
}

// Earlier chunks (q_pos0 < T - n_q, i.e. the cache holds later keys the block may not see) and every query
// block of a chunk: the estimate must not depend on keys after the block.
TEST(HipEstimate, FastEqualsReferenceMidChunk) {
  Problem pr(160, 3000, 1200, 3, 1, 64, 77, Keys::kSmooth);
  const HipConfig cfg = small_config(128, 32, 2, 2, 1, 16, 64);
  for (int32_t m = 0; m < 5; ++m)
    ASSERT_EQ(hip_estimate_blocks(cfg, pr.p, 1, m), hip_estimate_blocks_reference(cfg, pr.p, 1, m)) << m;
  // Poisoning keys after the chunk changes nothing.
  const std::vector<int32_t> before = hip_estimate_blocks(cfg, pr.p, 2, 4);
  for (int64_t pos = 1360; pos < 3000; ++pos)
    for (int32_t d = 0; d < 64; ++d) pr.k[pos * 64 + d] = fp32_to_fp16(1000.0f);
  EXPECT_EQ(hip_estimate_blocks(cfg, pr.p, 2, 4), before);
}

// 3. Decode with refresh = 1: a cached mask estimated at the same step gives the same output as estimating in
// the call; with refresh = 8 the cached steps equal the naive reference over the cached mask's key sets.
TEST(HipAttention, DecodeCachedMask) {
  ThreadPool pool(2);
  const int32_t T = 2600;
  Problem pr(T, T, 0, 6, 2, 64, 9, Keys::kSmooth);
  const HipConfig cfg1 = small_config(256, 32, 2, 2, 1, 16, 128, 1);
  std::vector<float> a(size_t(pr.p.n_head) * pr.p.head_dim);
  for (int32_t t = 2400; t < 2410; ++t) {
    AttentionParams s = pr.step(t);
    HipMask fresh, cached;
    hip_attention(cfg1, s, fresh, true, pool);
    std::copy_n(s.out, a.size(), a.data());
    // The cache: estimated at t by hip_estimate_blocks, then used with estimate = false.
    cached.n_head = s.n_head, cached.n_qblocks = 1;
    cached.indptr = {0};
    for (int32_t h = 0; h < s.n_head; ++h) {
      const std::vector<int32_t> b = hip_estimate_blocks(cfg1, s, h, 0);
      cached.indices.insert(cached.indices.end(), b.begin(), b.end());
      cached.indptr.push_back(int32_t(cached.indices.size()));
    }
    EXPECT_EQ(cached.indptr, fresh.indptr);
    EXPECT_EQ(cached.indices, fresh.indices);
    hip_attention(cfg1, s, cached, false, pool);
    for (size_t j = 0; j < a.size(); ++j) ASSERT_EQ(a[j], s.out[j]) << "t " << t << " j " << j;
  }

  const HipConfig cfg8 = small_config(256, 32, 2, 2, 1, 16, 128, 8);
  HipMask mask;
  for (int32_t t = 2400; t < 2424; ++t) {
    const AttentionParams s = pr.step(t);
    const bool refresh = hip_needs_refresh(cfg8, mask, t);
    EXPECT_EQ(refresh, (t - 2400) % cfg8.refresh == 0);
    hip_attention(cfg8, s, mask, refresh, pool);
    EXPECT_EQ(mask.estimated_at, 2400 + (t - 2400) / 8 * 8);
    expect_matches_sparse_reference(cfg8, s, mask, s.out, "cached decode");
    // The overlap into the window: some selected blocks may lie in (t0 - w, t0 - w + 7].
    for (int32_t h = 0; h < s.n_head; ++h)
      for (int32_t b : blocks_of(mask, h, 0)) ASSERT_LE(b * cfg8.block_k, mask.estimated_at - 128 + 7);
  }
}

// The trailing-edge gap (reference section 3): a key that is in the window when the mask is estimated at t0
// and slides out of it before the next refresh stays attended, because the decode estimate searches refresh -
// 1 tokens into the window. Here every decode query is the same vector q and the key at t0 - w + 3 is a copy
// of q (in a bump of similar keys), so its block is among the best as soon as it is searchable.
TEST(HipAttention, DecodeCoversKeysLeavingTheWindow) {
  ThreadPool pool(1);
  const int32_t T = 3000, t0 = 2900, w = 64, dim = 64;
  Problem pr(T, T, 0, 1, 1, dim, 12, Keys::kSmooth);
  for (int32_t t = t0; t < t0 + 8; ++t)
    std::copy_n(pr.q.data() + int64_t(t0) * pr.p.q_stride, dim, pr.q.data() + int64_t(t) * pr.p.q_stride);
  const int32_t needle = t0 - w + 3;
  for (int32_t pos = needle - 24; pos <= needle + 24;
       ++pos) {  // with locality: a bump of similar keys around it
    const float a = 1.0f - float(std::abs(pos - needle)) / 25.0f;
    for (int32_t d = 0; d < dim; ++d) {
      const float old = fp16_to_fp32(pr.k[pos * dim + d]);
      pr.k[pos * dim + d] = fp32_to_fp16((1 - a) * old + a * pr.q[int64_t(t0) * pr.p.q_stride + d]);
    }
  }
  const HipConfig cfg = small_config(128, 32, 2, 2, 1, 16, w, 8);
  HipMask mask;
  hip_attention(cfg, pr.step(t0), mask, true, pool);
  const std::vector<int32_t> b = blocks_of(mask, 0, 0);
  ASSERT_TRUE(std::binary_search(b.begin(), b.end(), needle / 2));
  for (int32_t t = t0 + 1; t < t0 + 8; ++t) {  // cached steps: the needle stays in the key set, once
    const AttentionParams s = pr.step(t);
    ASSERT_FALSE(hip_needs_refresh(cfg, mask, t));
    const std::vector<int32_t> keys = hip_key_set(cfg, s, 0, b.data(), int32_t(b.size()));
    EXPECT_EQ(std::count(keys.begin(), keys.end(), needle), 1) << t;
    hip_attention(cfg, s, mask, false, pool);
    expect_matches_sparse_reference(cfg, s, mask, s.out, "trailing edge");
  }
  // Without the overlap (refresh = 1) the block is not searchable at t0.
  const HipConfig cfg1 = small_config(128, 32, 2, 2, 1, 16, w, 1);
  const std::vector<int32_t> b1 = hip_estimate_blocks(cfg1, pr.step(t0), 0, 0);
  EXPECT_FALSE(std::binary_search(b1.begin(), b1.end(), needle / 2));
}

// The cached path rejects masks of the wrong shape.
TEST(HipAttention, CachedMaskChecks) {
  ThreadPool pool(1);
  Problem pr(64, 1000, 936, 4, 2, 32, 1);
  const HipConfig cfg = small_config(128, 32, 2, 2, 1, 16, 64, 8);
  HipMask mask;
  hip_attention(cfg, pr.p, mask, true, pool);
  EXPECT_EQ(mask.n_qblocks, 2);
  EXPECT_THROW(hip_attention(cfg, pr.p, mask, false, pool), Error);  // n_q = 64
  Problem dec(1, 1000, 999, 4, 2, 32, 1);
  EXPECT_THROW(hip_attention(cfg, dec.p, mask, false, pool), Error);  // 2 query blocks
  hip_attention(cfg, dec.p, mask, true, pool);
  HipMask bad = mask;
  bad.indices[0] = 0;  // inside the sink
  EXPECT_THROW(hip_attention(cfg, dec.p, bad, false, pool), Error);
  bad = mask;
  std::swap(bad.indices[0], bad.indices[1]);
  EXPECT_THROW(hip_attention(cfg, dec.p, bad, false, pool), Error);
  bad = mask;
  bad.n_head = 2;
  EXPECT_THROW(hip_attention(cfg, dec.p, bad, false, pool), Error);
  EXPECT_NO_THROW(hip_attention(cfg, dec.p, mask, false, pool));
}

// 4. Keys scored per query block grow like (2 k / b_sk) log2(T / k), far below T.
TEST(HipEstimate, ScoredKeysGrowLogarithmically) {
  const HipConfig cfg;  // k = 512, b_q = 32, b_k = 2, b_sq = 2, b_sk = 1
  const int32_t Kb = cfg.k / cfg.block_k;
  std::vector<double> per_block;
  for (int32_t T : {4096, 8192, 16384, 32768}) {
    Problem pr(32, T, T - 32, 1, 1, 64, 5, Keys::kSmooth);
    HipStats st;
    const std::vector<int32_t> blocks = hip_estimate_blocks(cfg, pr.p, 0, 0, &st);
    EXPECT_EQ(int32_t(blocks.size()), Kb);
    // The tree runs until the surviving nodes are single blocks: at most ceil(log2(largest initial node))
    // iterations (initial nodes are A or 2A blocks, A = ceil(2^floor(log2 N) / K_b), the tail node < 3A), at
    // least log2(A); about log2(T / k).
    const int32_t N = (T - cfg.window - cfg.n_sink + 1) / 2;
    const int32_t A = ((1 << (31 - __builtin_clz(uint32_t(N)))) + Kb - 1) / Kb;
    int32_t max_node = 0;
    for (int32_t j = 0; j < Kb; ++j) {
      const int32_t b0 = std::min((int32_t(int64_t(j) * N / Kb) / A) * A, N);
      const int32_t b1 = j + 1 == Kb ? N : std::min((int32_t(int64_t(j + 1) * N / Kb) / A) * A, N);
      max_node = std::max(max_node, b1 - b0);
    }
    EXPECT_LE(st.iterations, int64_t(std::ceil(std::log2(double(max_node))))) << T;
    EXPECT_GE(st.iterations, int64_t(std::log2(double(A)))) << T;
    EXPECT_LE(st.iterations, int64_t(std::ceil(std::log2(double(T) / cfg.k))) + 1) << T;
    EXPECT_LE(st.scored_keys, int64_t(2) * cfg.k * st.iterations);  // <= 2 K_b children x b_k/b_sk keys
    EXPECT_GE(st.scored_keys, int64_t(cfg.k) * st.iterations);
    if (T >= 16384) {
      EXPECT_LT(st.scored_keys, T / 3) << T;  // ~(2k/b_sk) log2(T/k) key reads, against T for dense
    }
    per_block.push_back(double(st.scored_keys));
    std::printf("T=%6d: %lld keys scored in %lld iterations (%.3f of T)\n", T, (long long)st.scored_keys,
                (long long)st.iterations, st.scored_keys / double(T));
  }
  // Doubling T adds about one iteration (~2 k keys); it does not double the work.
  for (size_t i = 1; i < per_block.size(); ++i) {
    EXPECT_LE(per_block[i] - per_block[i - 1], 2.5 * cfg.k) << i;
    EXPECT_LT(per_block[i] / per_block[i - 1], 1.5) << i;
  }
  EXPECT_LT(per_block.back() / per_block.front(), 2.5);  // T grew 8x
}

// 5. Mask structure: causal, ascending, unique, outside the sink, exactly K_b blocks once the range exceeds
// k, every block of the range otherwise; the parallel driver stores what hip_estimate_blocks returns.
TEST(HipAttention, MaskStructure) {
  ThreadPool pool(2);
  for (int32_t q_pos0 : {0, 100, 500, 1900}) {
    Problem pr(100, q_pos0 + 100, q_pos0, 4, 2, 32, 40 + q_pos0, Keys::kSmooth);
    const HipConfig cfg = small_config(128, 16, 4, 2, 2, 8, 64);
    HipMask mask;
    hip_attention(cfg, pr.p, mask, true, pool);
    ASSERT_EQ(mask.n_qblocks, 7);
    ASSERT_EQ(mask.n_head, 4);
    ASSERT_EQ(mask.indptr.size(), size_t(29));
    EXPECT_EQ(mask.estimated_at, q_pos0 + 99);
    for (int32_t h = 0; h < 4; ++h)
      for (int32_t m = 0; m < 7; ++m) {
        const std::vector<int32_t> b = blocks_of(mask, h, m);
        EXPECT_EQ(b, hip_estimate_blocks(cfg, pr.p, h, m));
        const int32_t t_max = q_pos0 + std::min(100, (m + 1) * 16) - 1;
        const int32_t range = t_max + 1 - cfg.window - cfg.n_sink;
        if (range > cfg.k) {
          EXPECT_EQ(b.size(), size_t(cfg.k / cfg.block_k));
        } else {
          EXPECT_EQ(b.size(), size_t(std::max(0, (range + 3) / 4)));
          for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(b[i], 2 + int32_t(i));
        }
        for (size_t i = 0; i < b.size(); ++i) {
          EXPECT_GE(b[i], cfg.n_sink / cfg.block_k);
          EXPECT_LE(b[i] * cfg.block_k, t_max - cfg.window);  // starts in the searchable range
          if (i > 0) {
            EXPECT_GT(b[i], b[i - 1]);
          }
        }
      }
  }
}

// 6. Sparse attention equals a double-precision reference over the same key set per row (selected U sink U
// window), in prefill chunks at several offsets, with GQA, several block shapes.
TEST(HipAttention, SparseMatchesNaiveKeySets) {
  ThreadPool pool(2);
  struct Case {
    int32_t n_q, n_kv, k, bq, bk, sink, window;
  };
  for (const Case c : {Case{70, 1500, 128, 32, 2, 16, 64}, Case{64, 3000, 256, 16, 4, 4, 100},
                       Case{33, 800, 64, 32, 1, 3, 10}, Case{50, 2000, 512, 64, 8, 0, 0}}) {
    Problem pr(c.n_q, c.n_kv, c.n_kv - c.n_q, 6, 2, 64, 7 + c.n_kv, Keys::kSmooth);
    const HipConfig cfg = small_config(c.k, c.bq, c.bk, 2 - (c.bq % 2), 1, c.sink, c.window);
    HipMask mask;
    HipStats st;
    hip_attention(cfg, pr.p, mask, true, pool, &st);
    expect_matches_sparse_reference(cfg, pr.p, mask, pr.out.data(), "prefill");
    int64_t pairs = 0;
    for (int32_t h = 0; h < pr.p.n_head; ++h)
      for (int32_t i = 0; i < c.n_q; ++i) {
        const std::vector<int32_t> b = blocks_of(mask, h, i / c.bq);
        pairs += int64_t(hip_key_set(cfg, pr.p, i, b.data(), int32_t(b.size())).size());
      }
    EXPECT_EQ(st.attended_keys, pairs);
    // One thread gives the same bits.
    ThreadPool one(1);
    std::vector<float> first = pr.out;
    HipMask mask1;
    hip_attention(cfg, pr.p, mask1, true, one);
    EXPECT_EQ(mask1.indices, mask.indices);
    EXPECT_EQ(first, pr.out);
  }
}

// 7. Needles: a key equal to (a multiple of) the query, planted in smooth keys with a bump of similar keys
// around it (locality), must be found; an isolated needle in pure noise is a design limit (reported only).
TEST(HipEstimate, Needles) {
  const HipConfig cfg;  // paper defaults
  const int32_t T = 16384, dim = 64;
  int found_bump = 0, found_noise = 0, n = 0;
  for (uint32_t seed = 0; seed < 8; ++seed) {
    for (Keys keys : {Keys::kSmooth, Keys::kUniform}) {
      Problem pr(32, T, T - 32, 1, 1, dim, 300 + seed, keys);
      std::mt19937 rng(seed);
      const int32_t needle = std::uniform_int_distribution<int32_t>(100, T - 1000)(rng);
      const float* q = pr.q.data() + 31 * pr.p.q_stride;  // the block's last row
      const int32_t radius = keys == Keys::kSmooth ? 48 : 0;
      for (int32_t pos = needle - radius; pos <= needle + radius; ++pos) {
        const float a = 1.0f - float(std::abs(pos - needle)) / float(radius + 1);  // 1 at the needle
        for (int32_t d = 0; d < dim; ++d) {
          const float old = fp16_to_fp32(pr.k[pos * dim + d]);
          pr.k[pos * dim + d] = fp32_to_fp16((1 - a) * old + a * q[d]);
        }
      }
      const std::vector<int32_t> b = hip_estimate_blocks(cfg, pr.p, 0, 0);
      const bool hit = std::binary_search(b.begin(), b.end(), needle / cfg.block_k);
      (keys == Keys::kSmooth ? found_bump : found_noise) += hit;
      n += keys == Keys::kSmooth;
    }
  }
  std::printf("needle recall: %d/%d with locality, %d/%d isolated in noise (design limit, not asserted)\n",
              found_bump, n, found_noise, n);
  EXPECT_EQ(found_bump, n);
}

}  // namespace
}  // namespace hs
