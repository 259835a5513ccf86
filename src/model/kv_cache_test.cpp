// The page pool's bookkeeping, and the real model computing exactly the same logits from a paged cache (pages
// scattered through a shared pool) as from a contiguous one, with dense and with HiP attention.
#include "model/kv_cache.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "model/llama.h"
#include "model/test_model.h"
#include "util/common.h"

namespace hs {
namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_head_kv = 2;
  c.head_dim = 64;
  c.n_embd = 256;
  return c;
}

TEST(KvPagePool, AllocatesAllOrNothingLowestFirstAndReuses) {
  KvPagePool pool(tiny_config(), 64, 5);
  EXPECT_EQ(pool.n_free(), 5);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(pool.allocate(3, a));
  EXPECT_EQ(a, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_FALSE(pool.allocate(3, b));  // only 2 left: nothing taken
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(pool.n_free(), 2);
  ASSERT_TRUE(pool.allocate(2, b));
  EXPECT_EQ(pool.n_free(), 0);
  pool.release({a[1]});
  std::vector<int32_t> c;
  ASSERT_TRUE(pool.allocate(1, c));
  EXPECT_EQ(c, (std::vector<int32_t>{1}));  // the freed page comes back
  pool.release({a[0], a[2]});
  EXPECT_EQ(pool.n_free(), 2);
  EXPECT_THROW(pool.release({a[0]}), Error);  // page 0 is free already: a double release is caught
  EXPECT_THROW(pool.release({7}), Error);     // not a page of this pool
  EXPECT_EQ(pool.n_free(), 2);
}

TEST(KvPagePool, RejectsPageSizesThatSplitKeyBlocks) {
  EXPECT_THROW(KvPagePool(tiny_config(), 100, 4), Error);
  EXPECT_THROW(KvPagePool(tiny_config(), 0, 4), Error);
  EXPECT_THROW(KvPagePool(tiny_config(), 64, 0), Error);
}

TEST(KvCache, PagedReserveTakesPagesAndReleaseReturnsThem) {
  const ModelConfig c = tiny_config();
  KvPagePool pool(c, 64, 4);
  {
    KvCache a(c, 1000, pool), b(c, 1000, pool);
    a.reserve(65);  // 2 pages
    EXPECT_EQ(a.capacity(), 128);
    EXPECT_EQ(a.block_table().size(), 2u);
    EXPECT_EQ(pool.n_free(), 2);
    EXPECT_THROW(b.reserve(64 * 3), Error);  // 3 pages wanted, 2 free
    EXPECT_EQ(pool.n_free(), 2);             // and none were taken
    EXPECT_EQ(b.capacity(), 0);
    b.reserve(64);
    // Rows of different positions and heads never alias.
    a.advance(65);
    EXPECT_NE(a.k_row(0, 0, 63), a.k_row(0, 0, 64));
    EXPECT_EQ(a.k_row(0, 0, 1) - a.k_row(0, 0, 0), c.head_dim);
    EXPECT_EQ(a.k_row(0, 1, 0) - a.k_row(0, 0, 0), 64 * c.head_dim);
    EXPECT_THROW(a.reserve(1001), Error);  // beyond the sequence's context
    EXPECT_THROW((void)a.k(0), Error);     // no contiguous view of a paged cache
  }
  EXPECT_EQ(pool.n_free(), 4);  // destructors returned every page
}

using testing::random_tokens;

// Prefill `prompt` in chunks of 256, then decode `steps` tokens; returns the logits after every call.
std::vector<float> run_sequence(Model& m, KvCache& cache, const std::vector<int32_t>& prompt,
                                const std::vector<int32_t>& steps, ThreadPool& pool) {
  const int V = m.config().n_vocab;
  std::vector<float> out, logits(V);
  for (size_t done = 0; done < prompt.size(); done += 256) {
    const int32_t n = int32_t(std::min<size_t>(256, prompt.size() - done));
    SeqBatch s{&cache, prompt.data() + done, n, false, logits.data()};
    m.forward(std::span<const SeqBatch>(&s, 1), pool);
    out.insert(out.end(), logits.begin(), logits.end());
  }
  for (int32_t t : steps) {
    SeqBatch s{&cache, &t, 1, false, logits.data()};
    m.forward(std::span<const SeqBatch>(&s, 1), pool);
    out.insert(out.end(), logits.begin(), logits.end());
  }
  return out;
}

TEST(KvCache, PagedModelLogitsEqualContiguousBitForBit) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  const AttentionConfig saved = m.attention();
  ThreadPool pool(2);
  const int V = m.config().n_vocab;
  const std::vector<int32_t> prompt = random_tokens(700, V, 5), steps = random_tokens(12, V, 6);

  AttentionConfig hip = saved;
  hip.kind = AttentionKind::Hip;
  hip.hip.k = 128;      // < the searchable range: the top-k search really selects
  hip.hip.window = 64;  // so HiP differs from dense from ~80 tokens on
  hip.hip.refresh = 4;
  AttentionConfig dense = saved;
  dense.kind = AttentionKind::Dense;
  for (const AttentionConfig& cfg : {dense, hip}) {
    m.set_attention(cfg);
    KvCache contiguous(m.config(), 2048);
    const std::vector<float> ref = run_sequence(m, contiguous, prompt, steps, pool);

    // A pool whose free pages are not in order: another sequence holds pages 0, 2, 4 while ours grows.
    KvPagePool kv_pool(m.config(), 64, 24);
    KvCache other(m.config(), 2048, kv_pool), paged(m.config(), 2048, kv_pool);
    other.reserve(64);
    paged.reserve(64);
    other.reserve(128);
    paged.reserve(128);
    other.reserve(192);
    const std::vector<float> got = run_sequence(m, paged, prompt, steps, pool);
    EXPECT_NE(paged.block_table()[1], paged.block_table()[0] + 1);  // really not contiguous
    ASSERT_EQ(got.size(), ref.size());
    EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)), 0)
        << (cfg.kind == AttentionKind::Hip ? "hip" : "dense");
  }
  m.set_attention(saved);
}

}  // namespace
}  // namespace hs
