// CpuSlotBackend against the Model calls it wraps: a batched forward over several slots gives each slot the
// logits a lone Model::forward on a contiguous cache gives (bit for bit where the kernels keep the row's
// summation order, cpu::f32act_batch_invariant_tokens); memory is taken at open() and returned at close();
// misuse (closed or doubly fed slots, oversize reservations) is refused.
#include "model/slot_backend.h"

#include <gtest/gtest.h>

#include <tuple>

#include "backends/cpu/matmul_f32act.h"
#include "model/llama.h"
#include "model/test_model.h"
#include "util/common.h"
#include "util/thread_pool.h"

namespace hs {
namespace {

using testing::random_tokens;

TEST(CpuSlotBackend, BatchedSlotsGiveTheirLoneLogitsAndAccountMemory) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  struct RestoreChunk {  // the shared test model's rows per call, also when an assertion returns early
    Model& m;
    int32_t n;
    ~RestoreChunk() { m.set_max_batch_tokens(n); }
  } restore{m, m.max_batch_tokens()};
  ThreadPool pool(2);
  const int V = m.config().n_vocab;
  CpuSlotBackend be(m, pool, /*n_slots=*/3, /*n_ctx=*/256, /*page_size=*/64, /*n_pages=*/0, /*max_batch=*/32);
  EXPECT_EQ(be.n_slots(), 3);
  EXPECT_EQ(be.kv_units_total(), 12);  // 3 slots x 256 positions / 64
  EXPECT_EQ(be.kv_units_for(65), 2);
  EXPECT_GE(be.max_batch_tokens(), 32);

  const std::vector<int32_t> a = random_tokens(40, V, 1), b = random_tokens(25, V, 2);
  be.open(0, 100);  // 2 pages
  be.open(2, 64);   // 1 page
  EXPECT_EQ(be.kv_units_free(), 9);
  EXPECT_THROW(be.open(0, 10), Error);   // already open
  EXPECT_THROW(be.open(1, 257), Error);  // more than a slot holds
  std::vector<float> la(size_t(V), 0.0f), lb(size_t(V), 0.0f);
  be.forward(std::vector<SlotBackend::Feed>{{0, a.data(), 40, la.data()}});
  be.forward(std::vector<SlotBackend::Feed>{{2, b.data(), 25, lb.data()}});
  EXPECT_EQ(be.n_past(0), 40);
  EXPECT_EQ(be.n_past(2), 25);

  // One batched decode step of both slots against lone forwards on contiguous caches.
  const int32_t ta = 11, tb = 12;
  std::vector<float> da(size_t(V), 0.0f), db(size_t(V), 0.0f);
  be.forward(std::vector<SlotBackend::Feed>{{0, &ta, 1, da.data()}, {2, &tb, 1, db.data()}});
  for (const auto& [toks, tok, got] : {std::tuple{&a, ta, &da}, std::tuple{&b, tb, &db}}) {
    KvCache cache(m.config(), 256);
    std::vector<float> prompt_logits(size_t(V), 0.0f), want(size_t(V), 0.0f);
    m.prefill(cache, *toks, prompt_logits.data(), pool);
    SeqBatch s{&cache, &tok, 1, false, want.data()};
    m.forward(std::span<const SeqBatch>(&s, 1), pool);
    if (cpu::f32act_batch_invariant_tokens() >= 2 && m.matmul_mode() == MatmulMode::F32)
      EXPECT_EQ(*got, want);
    else
      for (int i = 0; i < V; ++i) ASSERT_NEAR((*got)[size_t(i)], want[size_t(i)], 1e-3f);
  }

  EXPECT_THROW(be.forward(std::vector<SlotBackend::Feed>{{1, &ta, 1, nullptr}}), Error);  // closed
  EXPECT_THROW(be.forward(std::vector<SlotBackend::Feed>{{0, &ta, 1, nullptr}, {0, &tb, 1, nullptr}}), Error);
  EXPECT_EQ(be.n_past(0), 41);  // the refused calls changed nothing
  be.close(0);
  be.close(0);  // no-op
  EXPECT_EQ(be.kv_units_free(), 11);
  EXPECT_THROW(be.n_past(0), Error);
  be.open(0, 256);  // a reopened slot starts empty
  EXPECT_EQ(be.n_past(0), 0);
  const std::vector<int32_t> more = random_tokens(40, V, 3);  // 26 + 40 > the 64 positions slot 2 reserved
  EXPECT_THROW(be.forward(std::vector<SlotBackend::Feed>{{2, more.data(), 40, nullptr}}), Error);
  EXPECT_EQ(be.n_past(2), 26);
  be.close(0);
  be.close(2);
  EXPECT_EQ(be.kv_units_free(), 12);
}

}  // namespace
}  // namespace hs
