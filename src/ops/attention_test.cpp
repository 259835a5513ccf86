#include "ops/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "backends/cpu/cpu_features.h"
#include "util/common.h"

namespace hs {
namespace {

// Puts the process's SIMD path back as it was (tests switch between the AVX2 and AVX-512 kernels).
struct SimdPathScope {
  cpu::SimdPath saved = cpu::simd_path();
  ~SimdPathScope() { cpu::set_simd_path(saved); }
};

// One random problem with its own storage. kv_pos_major: cache laid out [pos][kv head][dim] (llama.cpp style)
// instead of [kv head][pos][dim]; q rows are padded so strides are exercised.
struct Problem {
  std::vector<float> q, out;
  std::vector<uint16_t> k, v;
  AttentionParams p;

  Problem(int32_t n_q, int32_t n_kv, int32_t q_pos0, int32_t n_head, int32_t n_kv_head, int32_t head_dim,
          uint32_t seed, bool kv_pos_major = false) {
    std::mt19937 rng(seed);
    // q of magnitude ~2 makes the softmax peaky enough that the max tracking matters.
    std::uniform_real_distribution<float> Uq(-2.0f, 2.0f), Ukv(-1.0f, 1.0f);
    p.n_q = n_q, p.n_kv = n_kv, p.q_pos0 = q_pos0;
    p.n_head = n_head, p.n_kv_head = n_kv_head, p.head_dim = head_dim;
    p.scale = 1.0f / std::sqrt(float(head_dim));
    p.q_stride = p.out_stride = int64_t(n_head) * head_dim + 16;
    q.resize(size_t(std::max(n_q, 1)) * p.q_stride);
    for (auto& x : q) x = Uq(rng);
    out.assign(q.size(), -7.0f);
    const int64_t n_kv_cap = n_kv + 3;  // spare capacity past n_kv
    k.resize(size_t(n_kv_cap) * n_kv_head * head_dim);
    v.resize(k.size());
    for (auto& x : k) x = fp32_to_fp16(Ukv(rng));
    for (auto& x : v) x = fp32_to_fp16(Ukv(rng));
    if (kv_pos_major) {
      p.kv_pos_stride = int64_t(n_kv_head) * head_dim;
      p.kv_head_stride = head_dim;
    } else {
      p.kv_pos_stride = head_dim;
      p.kv_head_stride = n_kv_cap * head_dim;
    }
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data();
  }
};

// Error bound, relative to max|v| (= 1 here): the output is a convex combination of v's. Sources:
//  - scores in fp32 over head_dim terms: |ds| <= head_dim * 2^-24 * scale * sum|q||k| ~ 1e-6 for |q|<=2,
//  |k|<=1;
//    a score error ds changes the weights by a factor exp(ds), i.e. the output by <= 2|ds|;
//  - exp_avx2 relative error 3e-7 on every weight: output <= 2 * 3e-7;
//  - fp32 running sums l and o over n_vis terms: <= n_vis * 2^-24 worst case (sqrt(n_vis) * 2^-24 typical).
// Here |q_d| <= 2 and |k_d| <= 1 bound sum|q||k| by 2*head_dim.
double error_bound(const AttentionParams& p, int32_t n_vis) {
  const double u = std::ldexp(1.0, -24);
  const double ds = p.head_dim * u * p.scale * 2.0 * p.head_dim;
  return 2 * ds + 6e-7 + 2 * n_vis * u;
}

std::vector<float> naive_out(const Problem& pr) {
  std::vector<float> ref(pr.out.size(), -7.0f);
  AttentionParams rp = pr.p;
  rp.out = ref.data();
  attention_naive(rp);
  return ref;
}

void expect_close(const AttentionParams& p, const std::vector<float>& got, const std::vector<float>& ref,
                  const char* what) {
  double worst = 0, worst_abs = 0;
  for (int32_t i = 0; i < p.n_q; ++i) {
    const double bound = error_bound(p, p.q_pos0 + i + 1);
    for (int32_t j = 0; j < p.n_head * p.head_dim; ++j) {
      const double e = std::abs(double(got[i * p.out_stride + j]) - ref[i * p.out_stride + j]);
      worst = std::max(worst, e / bound);
      worst_abs = std::max(worst_abs, e);
      ASSERT_LE(e, bound) << what << " row " << i << " col " << j;
    }
    for (int64_t j = p.n_head * p.head_dim; j < p.out_stride; ++j)
      ASSERT_EQ(got[i * p.out_stride + j], -7.0f) << "padding written";
  }
  EXPECT_LT(worst, 1.0) << what;
  // The bound above is the rigorous worst case; rounding errors are random in practice and stay ~10 ulps of 1
  // (measured <= 2e-7). 1e-6 still catches any logic error: one key masked wrongly moves outputs by ~1/n_vis.
  EXPECT_LT(worst_abs, 1e-6) << what;
}

void expect_close_to_naive(Problem& pr, const std::vector<float>& got, const char* what) {
  expect_close(pr.p, got, naive_out(pr), what);
}

struct Case {
  int32_t n_q, n_kv, q_pos0, n_head, n_kv_head, head_dim;
};

TEST(AttentionDense, MatchesNaive) {
  const Case cases[] = {
      {1, 1, 0, 9, 3, 64},        // decode on the first token
      {1, 577, 576, 9, 3, 64},    // decode at length: split-K with several threads
      {5, 133, 128, 8, 2, 64},    // GQA 4
      {64, 64, 0, 4, 4, 128},     // GQA 1, prefill from empty
      {200, 600, 400, 9, 3, 64},  // chunked prefill on a prior cache, G = 3
      {200, 333, 100, 6, 6, 128},
      {64, 200, 136, 12, 3, 128},  // G = 4
      {5, 37, 17, 2, 1, 48},       // head_dim a multiple of 16 only
      {33, 600, 10, 3, 1, 16},     // q_pos0 + n_q < n_kv: the cache holds keys past the queries, never seen
      // Thin tiles (dot-product path: <= 8 rows with AVX2, <= 12 with AVX-512): 1 row, 6 rows with a causal
      // diagonal, 4 rows at head_dim 16, 12 rows (transposed path with AVX2).
      {1, 300, 299, 4, 4, 128},
      {3, 100, 97, 4, 2, 64},
      {1, 250, 249, 8, 2, 16},
      {2, 64, 62, 6, 1, 64},
  };
  uint32_t seed = 10;
  ThreadPool pools[3] = {ThreadPool(1), ThreadPool(2), ThreadPool(3)};
  SimdPathScope restore;
  for (const Case& c : cases)
    for (bool pos_major : {false, true}) {
      Problem pr(c.n_q, c.n_kv, c.q_pos0, c.n_head, c.n_kv_head, c.head_dim, seed++, pos_major);
      const std::vector<float> ref = naive_out(pr);
      for (cpu::SimdPath path : cpu::supported_simd_paths()) {
        cpu::set_simd_path(path);
        for (ThreadPool& pool : pools) {
          if (pos_major && pool.size() != 2) continue;
          std::fill(pr.out.begin(), pr.out.end(), -7.0f);
          attention_dense(pr.p, pool);
          const std::string what =
              strfmt("%s n_q %d n_kv %d q_pos0 %d heads %d/%d dim %d threads %d pos_major %d",
                     cpu::simd_path_name(path), c.n_q, c.n_kv, c.q_pos0, c.n_head, c.n_kv_head, c.head_dim,
                     pool.size(), int(pos_major));
          expect_close(pr.p, pr.out, ref, what.c_str());
        }
      }
    }
}

TEST(AttentionDense, SplitKAgreesWithOneThread) {
  // Decode at n_kv 2000 with 2 threads cuts each KV head's keys into pieces merged at the end.
  Problem pr(1, 2000, 1999, 9, 3, 64, 77);
  ThreadPool p1(1), p2(2);
  std::vector<float> one(pr.out.size());
  AttentionParams a = pr.p;
  a.out = one.data();
  attention_dense(a, p1);
  attention_dense(pr.p, p2);
  for (int j = 0; j < 9 * 64; ++j) EXPECT_NEAR(pr.out[j], one[j], 2e-6) << j;
  expect_close_to_naive(pr, pr.out, "split-K decode");
}

TEST(AttentionDense, BatchEqualsPerProblemCalls) {
  std::vector<Problem> probs;
  probs.emplace_back(1, 300, 299, 9, 3, 64, 1);
  probs.emplace_back(1, 17, 16, 9, 3, 64, 2);
  probs.emplace_back(7, 90, 83, 9, 3, 64, 3);
  probs.emplace_back(0, 5, 5, 9, 3, 64, 4);  // no queries: nothing to do
  probs.emplace_back(1, 700, 699, 9, 3, 64, 5);
  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    std::vector<AttentionParams> ps;
    std::vector<std::vector<float>> single;
    for (auto& pr : probs) {
      ps.push_back(pr.p);
      single.emplace_back(pr.out.size(), -7.0f);
      AttentionParams a = pr.p;
      a.out = single.back().data();
      attention_dense(a, pool);
    }
    attention_dense_batch(ps.data(), int(ps.size()), pool);
    for (size_t i = 0; i < probs.size(); ++i)
      for (size_t j = 0; j < single[i].size(); ++j) {
        // One thread: the same tiles in the same order, so the same bits. Two threads: the split-K cut may
        // differ.
        if (threads == 1)
          ASSERT_EQ(probs[i].out[j], single[i][j]) << i << " " << j;
        else
          ASSERT_NEAR(probs[i].out[j], single[i][j], 2e-6) << i << " " << j;
      }
  }
}

// Driving the pieces by hand, one head per tile (as HiP does with its per-head masks), gives the dense
// result.
TEST(AttentionDense, HandDrivenPerHeadTilesMatchDense) {
  Problem pr(23, 150, 127, 6, 2, 64, 9);
  ThreadPool pool(2);
  attention_dense(pr.p, pool);
  std::vector<float> mine(pr.out.size(), -7.0f);
  AttentionParams p = pr.p;
  p.out = mine.data();
  const int32_t G = p.n_head / p.n_kv_head;
  QueryTile qt;
  SoftmaxState st;
  for (int32_t h = 0; h < p.n_head; ++h)
    for (int32_t t0 = 0; t0 < p.n_q; t0 += 7) {
      const int32_t nt = std::min(7, p.n_q - t0);
      pack_query_tile(p, h, 1, t0, nt, qt);
      st.init(qt.n_rows(), qt.dim());
      const int32_t k_end = p.q_pos0 + t0 + nt, mid = k_end / 3;  // two ranges, merged by the state itself
      attention_update(st, qt, kv_head_view(p, h / G), mid, k_end);
      attention_update(st, qt, kv_head_view(p, h / G), 0, mid);
      write_query_tile(p, h, 1, t0, nt, st);
    }
  for (size_t j = 0; j < mine.size(); ++j) ASSERT_NEAR(mine[j], pr.out[j], 1e-6) << j;
  EXPECT_THROW(pack_query_tile(p, 2, 2, 0, 1, qt), Error);  // heads 2, 3 read different kv heads
}

TEST(AttentionDense, RejectsBadShapes) {
  Problem pr(4, 10, 8, 4, 3, 64, 1);  // 4 heads over 3 kv heads
  ThreadPool pool(1);
  EXPECT_THROW(attention_dense(pr.p, pool), Error);
  Problem pr2(4, 10, 8, 4, 2, 64, 1);
  pr2.p.q_pos0 = 7;  // 7 + 4 > 10
  EXPECT_THROW(attention_dense(pr2.p, pool), Error);
  pr2.p.q_pos0 = 6;
  pr2.p.head_dim = 40;
  EXPECT_THROW(attention_dense(pr2.p, pool), Error);
}

// SoftmaxState: attention over a key set == merge of the attentions over a random 3-way partition of it.
// n_rows 11 runs the transposed-K kernels, 3 the thin dot-product ones.
void check_merge_of_pieces(int32_t n_rows) {
  const int32_t dim = 64, n_keys = 300;
  Problem pr(n_rows, n_keys, 0, 1, 1, dim, 42);
  const KvHeadView kv{pr.p.k, pr.p.v, pr.p.kv_pos_stride};
  std::mt19937 rng(5);

  QueryTile qt;
  qt.init(n_rows, dim);
  for (int32_t r = 0; r < n_rows; ++r) {
    // Mixed row masks: causal-like, windowed, and row 3 sees a short range that lies in one piece only.
    int32_t lo = 0, hi = std::min(150 + 13 * r, n_keys);
    if (r % 3 == 1) lo = 40 + r;
    if (r == 3) lo = 200, hi = 203;
    qt.set_row(r, pr.p.q + r * pr.p.q_stride, pr.p.scale, lo, hi);
  }
  // The last row sees nothing at all.
  const int32_t blind = n_rows - 1;
  qt.set_key_range(blind, 5, 5);

  SoftmaxState whole(n_rows, dim);
  attention_update(whole, qt, kv, 0, n_keys);

  std::vector<std::vector<int32_t>> piece(3);
  for (int32_t j = 0; j < n_keys; ++j) piece[rng() % 3].push_back(j);
  // Move keys 200..202 to piece 2 so rows 3's keys are all there and its pieces 0, 1 are fully masked.
  for (int p = 0; p < 2; ++p)
    piece[p].erase(
        std::remove_if(piece[p].begin(), piece[p].end(), [](int32_t j) { return j >= 200 && j < 203; }),
        piece[p].end());
  for (int32_t j = 200; j < 203; ++j)
    if (!std::binary_search(piece[2].begin(), piece[2].end(), j))
      piece[2].insert(std::lower_bound(piece[2].begin(), piece[2].end(), j), j);

  SoftmaxState parts[3];
  for (int p = 0; p < 3; ++p) {
    parts[p].init(n_rows, dim);
    attention_update_gather(parts[p], qt, kv, piece[p].data(), int32_t(piece[p].size()));
  }
  EXPECT_EQ(parts[0].m()[3], -INFINITY);
  EXPECT_EQ(parts[0].l()[3], 0.0f);
  // Merge in a mixed order: (2 <- 0) then (2 <- 1).
  parts[2].merge(parts[0]);
  parts[2].merge(parts[1]);

  std::vector<float> a(n_rows * dim), b(n_rows * dim);
  whole.finalize(a.data(), dim);
  parts[2].finalize(b.data(), dim);
  for (int32_t r = 0; r < n_rows; ++r) {
    EXPECT_NEAR(parts[2].m()[r] == -INFINITY ? 0.0f : parts[2].m()[r],
                whole.m()[r] == -INFINITY ? 0.0f : whole.m()[r], 1e-6f);
    for (int32_t d = 0; d < dim; ++d) {
      ASSERT_TRUE(std::isfinite(b[r * dim + d])) << r;
      ASSERT_NEAR(a[r * dim + d], b[r * dim + d], 2e-6) << r << " " << d;
    }
  }
  for (int32_t d = 0; d < dim; ++d) EXPECT_EQ(b[blind * dim + d], 0.0f);  // the row that saw nothing

  // And the whole agrees with the naive formula for the plain causal rows (lo = 0).
  for (int32_t r = 0; r < n_rows; r += 3) {
    if (r == 3 || r == blind || qt.key_lo(r) != 0) continue;
    AttentionParams p1 = pr.p;
    p1.n_q = 1;
    p1.q = pr.p.q + r * pr.p.q_stride;
    p1.q_pos0 = qt.key_hi(r) - 1;
    std::vector<float> ref(dim);
    p1.out = ref.data();
    attention_naive(p1);
    for (int32_t d = 0; d < dim; ++d) EXPECT_NEAR(a[r * dim + d], ref[d], 1e-5) << r;
  }
}

TEST(SoftmaxState, MergeOfDisjointPiecesEqualsWhole) {
  SimdPathScope restore;
  for (cpu::SimdPath path : cpu::supported_simd_paths()) {
    SCOPED_TRACE(cpu::simd_path_name(path));
    cpu::set_simd_path(path);
    check_merge_of_pieces(14);  // transposed-K kernels
    check_merge_of_pieces(11);  // thin with AVX-512, transposed with AVX2
    check_merge_of_pieces(5);   // thin
  }
}

TEST(SoftmaxState, EmptyMergesAreNoOps) {
  SoftmaxState a(2, 16), b(2, 16);
  a.m()[0] = 1.5f, a.l()[0] = 2.0f;
  for (int d = 0; d < 16; ++d) a.o_row(0)[d] = float(d);
  SoftmaxState a0(2, 16);
  a0.merge(a);  // empty <- full: copies
  a.merge(b);   // full <- empty: unchanged
  for (const SoftmaxState* s : {&a, &a0}) {
    EXPECT_EQ(s->m()[0], 1.5f);
    EXPECT_EQ(s->l()[0], 2.0f);
    EXPECT_EQ(s->m()[1], -INFINITY);
    EXPECT_EQ(s->l()[1], 0.0f);
  }
  std::vector<float> out(32, 1.0f);
  a.finalize(out.data(), 16);
  for (int d = 0; d < 16; ++d) EXPECT_EQ(out[d], d / 2.0f);
  for (int d = 16; d < 32; ++d) EXPECT_EQ(out[d], 0.0f);
}

}  // namespace
}  // namespace hs
