// Paged K/V (a page table into a shared pool) must give exactly the bits of the contiguous layout, for dense
// and HiP attention, prefill and decode: the kernels read the same keys in the same order, only the addresses
// differ. Any addressing bug (wrong page, wrong row, a key block straddling pages) changes the output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "ops/attention.h"
#include "ops/hip_attention.h"
#include "util/common.h"

namespace hs {
namespace {

// A random cache held twice: contiguous [kv head][pos][dim], and paged [page][kv head][page_size][dim] with the
// pages in a scrambled order (so page i of the sequence is rarely pool page i).
struct TwoLayouts {
  int32_t n_kv, n_head, n_kv_head, dim, page_size;
  std::vector<float> q;
  std::vector<uint16_t> k, v;              // contiguous
  std::vector<uint16_t> pk, pv;            // pool
  std::vector<int32_t> table;              // sequence page -> pool page

  TwoLayouts(int32_t n_kv_, int32_t n_q, int32_t n_head_, int32_t n_kv_head_, int32_t dim_, int32_t page_size_,
             uint32_t seed)
      : n_kv(n_kv_), n_head(n_head_), n_kv_head(n_kv_head_), dim(dim_), page_size(page_size_) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> Uq(-2.0f, 2.0f), Ukv(-1.0f, 1.0f);
    q.resize(size_t(n_q) * n_head * dim);
    for (auto& x : q) x = Uq(rng);
    k.resize(size_t(n_kv_head) * n_kv * dim);
    v.resize(k.size());
    // Smooth keys (a random walk per dim) so HiP's top-k has structure to find, plus noise.
    std::normal_distribution<float> N01(0.0f, 1.0f);
    for (int32_t g = 0; g < n_kv_head; ++g) {
      std::vector<float> walk(dim, 0.0f);
      for (int32_t p = 0; p < n_kv; ++p)
        for (int32_t d = 0; d < dim; ++d) {
          walk[d] = 0.97f * walk[d] + 0.12f * N01(rng);
          k[(size_t(g) * n_kv + p) * dim + d] = fp32_to_fp16(std::clamp(walk[d] + 0.05f * N01(rng), -1.0f, 1.0f));
          v[(size_t(g) * n_kv + p) * dim + d] = fp32_to_fp16(Ukv(rng));
        }
    }
    const int32_t n_pages = (n_kv + page_size - 1) / page_size;
    const int32_t pool_pages = n_pages + 3;  // spare pages that hold garbage
    table.resize(n_pages);
    std::vector<int32_t> perm(pool_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::copy_n(perm.begin(), n_pages, table.begin());
    pk.assign(size_t(pool_pages) * n_kv_head * page_size * dim, fp32_to_fp16(100.0f));  // poison
    pv.assign(pk.size(), fp32_to_fp16(-100.0f));
    for (int32_t g = 0; g < n_kv_head; ++g)
      for (int32_t p = 0; p < n_kv; ++p) {
        const size_t dst = ((size_t(table[p / page_size]) * n_kv_head + g) * page_size + p % page_size) * dim;
        std::memcpy(&pk[dst], &k[(size_t(g) * n_kv + p) * dim], dim * 2);
        std::memcpy(&pv[dst], &v[(size_t(g) * n_kv + p) * dim], dim * 2);
      }
  }

  // Queries [q_pos0, q_pos0 + n_q) of the cache's first q_pos0 + n_q positions.
  AttentionParams contiguous(int32_t n_q, int32_t q_pos0, float* out) const {
    AttentionParams p;
    p.q = q.data();
    p.q_stride = int64_t(n_head) * dim;
    p.k = k.data();
    p.v = v.data();
    p.kv_head_stride = int64_t(n_kv) * dim;
    p.kv_pos_stride = dim;
    p.out = out;
    p.out_stride = int64_t(n_head) * dim;
    p.n_q = n_q, p.n_kv = q_pos0 + n_q, p.q_pos0 = q_pos0;
    p.n_head = n_head, p.n_kv_head = n_kv_head, p.head_dim = dim;
    p.scale = 1.0f / std::sqrt(float(dim));
    return p;
  }
  AttentionParams paged(int32_t n_q, int32_t q_pos0, float* out) const {
    AttentionParams p = contiguous(n_q, q_pos0, out);
    p.k = pk.data();
    p.v = pv.data();
    p.kv_head_stride = int64_t(page_size) * dim;
    p.kv_page_stride = int64_t(n_kv_head) * page_size * dim;
    p.page_table = table.data();
    p.page_size = page_size;
    return p;
  }
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(PagedAttention, DenseEqualsContiguousBitForBit) {
  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    for (int32_t page_size : {64, 128, 256}) {
      const TwoLayouts L(1000, 200, 9, 3, 64, page_size, 7 + page_size);
      for (auto [n_q, q_pos0] : {std::pair{200, 800}, std::pair{1, 999}, std::pair{37, 0}, std::pair{1, 63}}) {
        std::vector<float> a(size_t(n_q) * 9 * 64, -7.0f), b(a.size(), -8.0f);
        attention_dense(L.contiguous(n_q, q_pos0, a.data()), pool);
        attention_dense(L.paged(n_q, q_pos0, b.data()), pool);
        EXPECT_TRUE(same_bits(a, b)) << "page " << page_size << " n_q " << n_q << " q_pos0 " << q_pos0;
        // And both are attention at all (not two identical wrong answers): compare with the naive reference.
        std::vector<float> ref(a.size());
        AttentionParams rp = L.paged(n_q, q_pos0, ref.data());
        attention_naive(rp);
        double worst = 0;
        for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::fabs(a[i] - ref[i])));
        EXPECT_LT(worst, 1e-4);
      }
    }
  }
}

TEST(PagedAttention, DenseBatchOfPagedAndContiguousProblems) {
  ThreadPool pool(2);
  const TwoLayouts A(700, 1, 9, 3, 64, 256, 1), B(300, 1, 9, 3, 64, 64, 2);
  std::vector<float> a1(9 * 64), b1(9 * 64), a2(9 * 64), b2(9 * 64);
  const AttentionParams lone[2] = {A.contiguous(1, 699, a1.data()), B.contiguous(1, 299, b1.data())};
  attention_dense(lone[0], pool);
  attention_dense(lone[1], pool);
  const AttentionParams batch[2] = {A.paged(1, 699, a2.data()), B.paged(1, 299, b2.data())};
  attention_dense_batch(batch, 2, pool);
  // A problem's bits do not depend on its batch neighbours (split-K is planned per problem).
  EXPECT_TRUE(same_bits(a1, a2));
  EXPECT_TRUE(same_bits(b1, b2));
}

TEST(PagedAttention, HipEqualsContiguousBitForBit) {
  ThreadPool pool(2);
  HipConfig cfg;
  cfg.k = 128, cfg.block_q = 32, cfg.block_k = 2, cfg.stride_q = 2, cfg.stride_k = 1;
  cfg.n_sink = 16, cfg.window = 64, cfg.refresh = 4;
  ASSERT_EQ(cfg.validate(), "");
  for (int32_t page_size : {64, 256}) {
    const TwoLayouts L(1500, 300, 9, 3, 64, page_size, 11 + page_size);
    // Prefill chunk: the estimator scores keys all over the cache and attends the selected blocks.
    std::vector<float> a(size_t(300) * 9 * 64), b(a.size());
    HipMask ma, mb;
    HipStats sa;
    hip_attention(cfg, L.contiguous(300, 1200, a.data()), ma, true, pool, &sa);
    hip_attention(cfg, L.paged(300, 1200, b.data()), mb, true, pool);
    EXPECT_GT(sa.iterations, 0);  // the tree search really ran
    EXPECT_TRUE(same_bits(a, b)) << "prefill, page " << page_size;
    EXPECT_EQ(ma.indptr, mb.indptr);
    EXPECT_EQ(ma.indices, mb.indices);
    // Decode: estimate, then reuse the cached mask.
    for (bool estimate : {true, false}) {
      std::vector<float> c(9 * 64), d(9 * 64);
      const int32_t pos = estimate ? 1400 : 1401;
      hip_attention(cfg, L.contiguous(1, pos, c.data()), ma, estimate, pool);
      hip_attention(cfg, L.paged(1, pos, d.data()), mb, estimate, pool);
      EXPECT_TRUE(same_bits(c, d)) << "decode, estimate " << estimate << ", page " << page_size;
      EXPECT_EQ(ma.indices, mb.indices);
    }
    // The reference estimator reads through the page table too.
    const AttentionParams pc = L.contiguous(300, 1200, a.data()), pp = L.paged(300, 1200, b.data());
    for (int32_t head : {0, 5})
      EXPECT_EQ(hip_estimate_blocks_reference(cfg, pc, head, 7), hip_estimate_blocks_reference(cfg, pp, head, 7));
  }
}

TEST(PagedAttention, RejectsPagesThatAreNotWholeKeyBlocks) {
  ThreadPool pool(1);
  const TwoLayouts L(128, 1, 9, 3, 64, 64, 3);
  std::vector<float> out(9 * 64);
  AttentionParams p = L.paged(1, 127, out.data());
  p.page_size = 48;
  EXPECT_THROW(attention_dense(p, pool), Error);
}

}  // namespace
}  // namespace hs
