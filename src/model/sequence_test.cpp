// CpuSequence against the Model calls it wraps: chunked all-logits appends equal one forward pass per chunk of
// the model, bit for bit (the same calls in the same order); last-token logits equal Model::prefill's;
// truncate rewinds; overflow and bad ids are refused without touching the cache.
#include <gtest/gtest.h>

#include <random>

#include "model/sequence.h"
#include "model/test_model.h"
#include "util/common.h"

namespace hs {
namespace {

using testing::random_tokens;

TEST(CpuSequence, AllLogitsChunkedEqualModelForwardPerChunk) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  ThreadPool pool(2);
  const int V = m.config().n_vocab;
  const int32_t saved_chunk = m.max_batch_tokens();
  m.set_max_batch_tokens(24);  // 70 tokens = chunks of 24, 24, 22
  const std::vector<int32_t> toks = random_tokens(70, V, 7);

  CpuSequence seq(m, 256, pool);
  std::vector<float> got(toks.size() * size_t(V), 0.0f);
  std::vector<int64_t> reported;
  seq.append(toks, got.data(), true, [&](int64_t done, int64_t total) {
    EXPECT_EQ(total, 70);
    reported.push_back(done);
  });
  EXPECT_EQ(seq.n_past(), 70);
  EXPECT_EQ(reported, (std::vector<int64_t>{24, 48, 70}));

  KvCache cache(m.config(), 256);
  std::vector<float> want(toks.size() * size_t(V), 0.0f);
  for (int32_t start = 0; start < 70; start += 24) {
    const int32_t n = std::min(24, 70 - start);
    SeqBatch s{&cache, toks.data() + start, n, true, want.data() + int64_t(start) * V};
    m.forward(std::span<const SeqBatch>(&s, 1), pool);
  }
  EXPECT_EQ(got, want);

  // Last-token logits after a rewind: the same as Model::prefill on a cache holding the same prefix.
  seq.truncate(40);
  EXPECT_EQ(seq.n_past(), 40);
  std::vector<float> last(size_t(V), 0.0f), last_want(size_t(V), 0.0f);
  seq.append(std::span<const int32_t>(toks.data() + 40, 30), last.data());
  cache.truncate(40);
  m.prefill(cache, std::span<const int32_t>(toks.data() + 40, 30), last_want.data(), pool);
  EXPECT_EQ(last, last_want);
  m.set_max_batch_tokens(saved_chunk);
}

TEST(CpuSequence, RefusesOverflowAndBadTokensKeepingTheCache) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  ThreadPool pool(2);
  CpuSequence seq(m, 32, pool);
  const std::vector<int32_t> toks = random_tokens(20, m.config().n_vocab, 3);
  seq.append(toks, nullptr);
  EXPECT_THROW(seq.append(toks, nullptr), Error);  // 40 > 32
  EXPECT_EQ(seq.n_past(), 20);
  const int32_t bad[] = {1, m.config().n_vocab};
  EXPECT_THROW(seq.append(bad, nullptr), Error);
  EXPECT_EQ(seq.n_past(), 20);
  EXPECT_THROW(seq.append(std::span<const int32_t>(), nullptr), Error);
}

}  // namespace
}  // namespace hs
