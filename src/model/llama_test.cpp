// Forward-pass consistency on the real model: chunked prefill, token-by-token decode and multi-sequence batches
// must compute the same function. (Agreement with an independent implementation is reference_test.cpp.)
//
// Tolerance: the paths differ only in fp32 summation order (GEMM panels vs row streaming in the linear layers,
// attention tiles), i.e. relative changes of ~1e-7 per layer output that 30 layers amplify to at most ~2e-2 on
// logits of magnitude ~20 (measured up to 0.016). A real bug (a wrong position, a stale or overwritten cache
// row, a mixed-up sequence) moves logits by whole units, so 0.05 separates the two cleanly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "model/llama.h"
#include "model/test_model.h"
#include "util/common.h"

namespace hs {
namespace {

constexpr double kTol = 0.05;

using testing::random_tokens;

double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

// Logits of every position in one forward call (all_logits).
std::vector<float> all_logits(Model& m, const std::vector<int32_t>& toks, ThreadPool& pool) {
  const int V = m.config().n_vocab;
  KvCache cache(m.config(), 4096);
  std::vector<float> out(toks.size() * V);
  SeqBatch s{&cache, toks.data(), int32_t(toks.size()), true, out.data()};
  m.forward(std::span<const SeqBatch>(&s, 1), pool);
  EXPECT_EQ(cache.n_past(), int32_t(toks.size()));
  return out;
}

TEST(LlamaForward, DecodeMatchesPrefillAtEveryPosition) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  ThreadPool pool(2);
  const int V = m.config().n_vocab;
  const std::vector<int32_t> toks = random_tokens(48, V, 1);
  const std::vector<float> ref = all_logits(m, toks, pool);

  // Token by token: the same K/V (fp16) and the same arithmetic per row, only the attention tiling differs.
  KvCache cache(m.config(), 4096);
  std::vector<float> step(V);
  double worst = 0;
  for (size_t i = 0; i < toks.size(); ++i) {
    m.prefill(cache, std::span<const int32_t>(&toks[i], 1), step.data(), pool);
    worst = std::max(worst, max_abs_diff(step.data(), ref.data() + i * V, V));
  }
  EXPECT_LT(worst, kTol);
}

TEST(LlamaForward, ChunkedPrefillMatchesOneShot) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  ThreadPool pool(2);
  const int V = m.config().n_vocab;
  const std::vector<int32_t> toks = random_tokens(100, V, 2);
  const std::vector<float> ref = all_logits(m, toks, pool);
  const int32_t saved = m.max_batch_tokens();
  for (int32_t chunk : {7, 32, 64}) {
    m.set_max_batch_tokens(chunk);
    KvCache cache(m.config(), 4096);
    std::vector<float> last(V);
    m.prefill(cache, toks, last.data(), pool);
    EXPECT_EQ(cache.n_past(), 100);
    EXPECT_LT(max_abs_diff(last.data(), ref.data() + 99 * V, V), kTol) << "chunk " << chunk;
  }
  m.set_max_batch_tokens(saved);
}

TEST(LlamaForward, MultiSequenceBatchMatchesSeparateRuns) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  ThreadPool pool(2);
  const int V = m.config().n_vocab;
  // Three sequences with different histories, then one decode step each in a single batch.
  std::vector<std::vector<int32_t>> prompts = {random_tokens(5, V, 3), random_tokens(17, V, 4), random_tokens(9, V, 5)};
  std::vector<int32_t> next = {11, 2222, 33333};
  std::vector<std::unique_ptr<KvCache>> caches;
  for (auto& p : prompts) {
    caches.push_back(std::make_unique<KvCache>(m.config(), 256));
    m.prefill(*caches.back(), p, nullptr, pool);
  }
  std::vector<float> batched(3 * V);
  std::vector<SeqBatch> batch;
  for (int i = 0; i < 3; ++i) batch.push_back({caches[i].get(), &next[i], 1, false, batched.data() + i * V});
  m.forward(batch, pool);
  for (int i = 0; i < 3; ++i) {
    std::vector<int32_t> full = prompts[i];
    full.push_back(next[i]);
    const std::vector<float> ref = all_logits(m, full, pool);
    EXPECT_LT(max_abs_diff(batched.data() + i * V, ref.data() + (full.size() - 1) * V, V), kTol) << "seq " << i;
    EXPECT_EQ(caches[i]->n_past(), int32_t(full.size()));
  }
}

TEST(LlamaForward, RejectsOutOfRangeTokenAndContextOverflow) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  ThreadPool pool(1);
  KvCache cache(m.config(), 4);
  const std::vector<int32_t> bad = {m.config().n_vocab};
  EXPECT_THROW(m.prefill(cache, bad, nullptr, pool), hs::Error);
  const std::vector<int32_t> five = {1, 2, 3, 4, 5};
  EXPECT_THROW(m.prefill(cache, five, nullptr, pool), hs::Error);
}

}  // namespace
}  // namespace hs
