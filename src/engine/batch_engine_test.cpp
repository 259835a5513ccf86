// The batch engine on the real model: concurrent sequences produce exactly what each produces alone through
// Session::generate (the `hipserve run` path); admission control; waiting for KV pages; cancellation.
#include "engine/batch_engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "engine/session.h"
#include "model/test_model.h"
#include "util/common.h"

namespace hs {
namespace {

std::shared_ptr<GenRequest> make_request(const std::vector<int32_t>& prompt, int32_t max_tokens, float temp,
                                         uint64_t seed) {
  auto r = std::make_shared<GenRequest>();
  r->prompt = prompt;
  r->max_tokens = max_tokens;
  r->sampling.temperature = temp;
  r->sampling.seed = seed;
  return r;
}

// Collects a request's text until it is done.
std::string drain(GenRequest& r) {
  std::string text;
  for (;;) {
    GenRequest::Update u = r.wait(std::chrono::milliseconds(200));
    text += u.text;
    if (u.done) return text;
  }
}

// Sets the shared model's matmul mode for one test and restores it.
struct MatmulModeGuard {
  Model& m;
  MatmulMode saved;
  MatmulModeGuard(Model& model, MatmulMode mode) : m(model), saved(model.matmul_mode()) {
    m.set_matmul_mode(mode);
  }
  ~MatmulModeGuard() { m.set_matmul_mode(saved); }
};

void check_concurrent_sequences_match_lone_runs(MatmulMode mode, int32_t n_slots) {
  Model& m = *testing::smollm2();
  MatmulModeGuard mode_guard(m, mode);
  ThreadPool pool(2);
  const Tokenizer& tok = m.tokenizer();
  const std::vector<std::string> prompts = {
      "The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
      "The three primary colors are", "Water boils at", "My favourite book is"};
  // Greedy for some, seeded sampling for others (the draw sequence must follow the sequence, not the batch).
  std::vector<std::shared_ptr<GenRequest>> reqs;
  for (size_t i = 0; i < prompts.size(); ++i)
    reqs.push_back(make_request(tok.encode(prompts[i], true, true), 24, i % 2 ? 0.8f : 0.0f, 100 + i));

  // Alone: each through Session::generate, the path of `hipserve run`.
  std::vector<std::string> lone;
  for (const auto& r : reqs) {
    Session s(m, 512, pool);
    GenerateOptions o;
    o.n_predict = r->max_tokens;
    o.sampling = r->sampling;
    o.show_progress = false;
    lone.push_back(s.generate(r->prompt, o).text);
  }

  EngineOptions eo;
  eo.n_slots = n_slots;  // 6 requests: with 4 slots two wait for a free one
  eo.n_ctx = 512;
  eo.page_size = 64;
  CpuSlotBackend backend(m, pool, eo.n_slots, eo.n_ctx, eo.page_size, eo.n_pages, eo.prefill_chunk);
  BatchEngine engine(backend, m.tokenizer(), eo);
  engine.start();
  for (const auto& r : reqs) ASSERT_EQ(engine.submit(r).status, BatchEngine::Admit::Ok);
  // Exact only where the kernels keep each row's summation order in batches of n_slots rows (fp32 on
  // AVX-512: up to 4; int8 with packed weights: any number); elsewhere (AVX2) batched logits differ from lone
  // ones in the last bits and a near-tie may flip a token.
  const bool exact = engine.stats().bit_exact_decode_rows >= eo.n_slots;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const std::string text = drain(*reqs[i]);
    if (exact) {
      EXPECT_EQ(text, lone[i]) << "request " << i << " (" << prompts[i] << ")";
    }
    EXPECT_TRUE(reqs[i]->error.empty());
    EXPECT_EQ(reqs[i]->n_prompt, int32_t(reqs[i]->prompt.size()));
  }
  const EngineStats st = engine.stats();
  EXPECT_GT(double(st.decode_rows) / double(st.decode_steps), 1.5);  // decode really ran batched
  EXPECT_EQ(st.requests_finished, 6);
  EXPECT_EQ(st.kv_pages_used, 0);  // every page came back
  engine.stop();
  if (!exact)
    GTEST_SKIP() << "batched == lone bit-for-bit not checked: this CPU path keeps lone-run bits only up to "
                 << st.bit_exact_decode_rows << " decode rows";
}

TEST(BatchEngine, ConcurrentSequencesMatchTheirLoneRuns) {
  HS_REQUIRE_SMOLLM2();
  check_concurrent_sequences_match_lone_runs(MatmulMode::F32, 4);
}

// llama.cpp-style int8 activations over weights packed for the AVX-512 kernels: every decode batch (here 6
// rows) gives each sequence its lone bits.
TEST(BatchEngine, ConcurrentSequencesMatchTheirLoneRunsInt8) {
  HS_REQUIRE_SMOLLM2();
  check_concurrent_sequences_match_lone_runs(MatmulMode::Int8, 6);
}

TEST(BatchEngine, AdmissionRefusesWhatCanNeverFit) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  ThreadPool pool(1);
  EngineOptions eo;
  eo.n_slots = 2;
  eo.n_ctx = 64;
  eo.page_size = 64;
  eo.max_queued = 1;
  CpuSlotBackend backend(m, pool, eo.n_slots, eo.n_ctx, eo.page_size, eo.n_pages, eo.prefill_chunk);
  BatchEngine engine(backend, m.tokenizer(), eo);  // not started: requests stay queued
  const std::vector<int32_t> p10(10, 42), p64(64, 42);
  EXPECT_EQ(engine.submit(make_request({}, 5, 0, 1)).status, BatchEngine::Admit::BadRequest);
  EXPECT_EQ(engine.submit(make_request(p64, 1, 0, 1)).status, BatchEngine::Admit::BadRequest);  // prompt = ctx
  const auto too_long = engine.submit(make_request(p10, 55, 0, 1));                            // 10 + 55 > 64
  EXPECT_EQ(too_long.status, BatchEngine::Admit::BadRequest);
  EXPECT_EQ(too_long.code, "context_length_exceeded");
  EXPECT_EQ(engine.submit(make_request({1, 99999999}, 5, 0, 1)).status, BatchEngine::Admit::BadRequest);
  auto bad_sampling = make_request(p10, 5, 0, 1);
  bad_sampling->sampling.top_p = 0;
  EXPECT_EQ(engine.submit(bad_sampling).status, BatchEngine::Admit::BadRequest);
  auto unlimited = make_request(p10, -1, 0, 1);  // max_tokens not given: the rest of the context
  EXPECT_EQ(engine.submit(unlimited).status, BatchEngine::Admit::Ok);
  EXPECT_EQ(unlimited->max_tokens, 54);
  EXPECT_EQ(engine.submit(make_request(p10, 5, 0, 1)).status, BatchEngine::Admit::Busy);  // queue full
  engine.stop();  // the queued request ends, cancelled
  EXPECT_TRUE(unlimited->wait(std::chrono::milliseconds(0)).done);
  EXPECT_EQ(unlimited->reason, StopReason::Cancelled);
}

TEST(BatchEngine, RequestsWaitForKvPagesAndCancellationFreesThem) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  ThreadPool pool(2);
  EngineOptions eo;
  eo.n_slots = 2;
  eo.n_ctx = 256;
  eo.page_size = 64;
  eo.n_pages = 2;  // one request of <= 128 tokens at a time although there are two slots
  CpuSlotBackend backend(m, pool, eo.n_slots, eo.n_ctx, eo.page_size, eo.n_pages, eo.prefill_chunk);
  BatchEngine engine(backend, m.tokenizer(), eo);
  engine.start();
  const std::vector<int32_t> prompt = m.tokenizer().encode("Tell me a long story about a dragon.", true, true);
  auto first = make_request(prompt, 100, 0, 1);
  first->ignore_eos = true;
  auto second = make_request(prompt, 8, 0, 1);
  second->ignore_eos = true;
  ASSERT_EQ(engine.submit(first).status, BatchEngine::Admit::Ok);
  // Wait until the first one streams, so it holds both pages.
  std::string head;
  while (head.empty()) head += first->wait(std::chrono::milliseconds(100)).text;
  ASSERT_EQ(engine.submit(second).status, BatchEngine::Admit::Ok);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EngineStats st = engine.stats();
  EXPECT_EQ(st.running, 1);
  EXPECT_EQ(st.queued, 1);  // a slot is free, the pages are not
  EXPECT_EQ(st.kv_pages_used, 2);
  first->cancel();
  drain(*first);
  EXPECT_EQ(first->reason, StopReason::Cancelled);
  EXPECT_LT(first->n_generated, 100);
  EXPECT_FALSE(drain(*second).empty());  // ran once the pages came back
  EXPECT_EQ(second->reason, StopReason::Length);
  EXPECT_EQ(second->n_generated, 8);
  st = engine.stats();
  EXPECT_EQ(st.kv_pages_used, 0);
  EXPECT_EQ(st.requests_cancelled, 1);
  engine.stop();
}

TEST(BatchEngine, StopStringsAndEndOfGenerationEndRequests) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  ThreadPool pool(2);
  EngineOptions eo;
  eo.n_ctx = 256;
  eo.page_size = 64;
  CpuSlotBackend backend(m, pool, eo.n_slots, eo.n_ctx, eo.page_size, eo.n_pages, eo.prefill_chunk);
  BatchEngine engine(backend, m.tokenizer(), eo);
  engine.start();
  const std::vector<int32_t> prompt = m.tokenizer().encode("Count: 1, 2, 3, 4,", true, true);
  // Greedy continuation first, then the same with a stop string taken from inside it.
  auto full = make_request(prompt, 16, 0, 1);
  ASSERT_EQ(engine.submit(full).status, BatchEngine::Admit::Ok);
  const std::string text = drain(*full);
  ASSERT_GE(text.size(), 4u);
  const std::string stop = text.substr(2, 2);
  auto cut = make_request(prompt, 16, 0, 1);
  cut->stop = {stop};
  ASSERT_EQ(engine.submit(cut).status, BatchEngine::Admit::Ok);
  EXPECT_EQ(drain(*cut), text.substr(0, text.find(stop)));
  EXPECT_EQ(cut->reason, StopReason::StopString);
  engine.stop();
}

// A SlotBackend that fails on demand (no model behind it: logits make token 42 the greedy choice), to test the
// engine's error path: a forward that throws ends every running request with the error, frees every slot, and
// the engine keeps serving.
class FailingBackend final : public SlotBackend {
 public:
  explicit FailingBackend(const ModelConfig& c) : cfg_(c), open_(2, false), n_past_(2, 0) {}
  const ModelConfig& config() const override { return cfg_; }
  std::string name() const override { return "fake"; }
  int32_t n_slots() const override { return 2; }
  int32_t n_ctx() const override { return 64; }
  int32_t kv_unit_tokens() const override { return 64; }
  int32_t kv_units_total() const override { return 2; }
  int32_t kv_units_free() const override { return n_free_.load(); }
  int32_t kv_units_for(int64_t tokens) const override { return int32_t((tokens + 63) / 64); }
  size_t kv_bytes() const override { return 0; }
  void open(int32_t slot, int32_t) override {
    HS_CHECK(!open_[size_t(slot)], "slot %d is open", slot);
    open_[size_t(slot)] = true;
    n_past_[size_t(slot)] = 0;
    n_free_--;
  }
  void close(int32_t slot) override {
    if (!open_[size_t(slot)]) return;
    open_[size_t(slot)] = false;
    n_free_++;
  }
  int32_t n_past(int32_t slot) const override { return n_past_[size_t(slot)]; }
  void forward(std::span<const Feed> feeds) override {
    if (++calls_ == fail_at_call) throw Error("injected failure");
    for (const Feed& f : feeds) {
      HS_CHECK(open_[size_t(f.slot)], "slot %d is closed", f.slot);
      n_past_[size_t(f.slot)] += f.n_tokens;
      if (f.logits) {
        std::fill(f.logits, f.logits + cfg_.n_vocab, 0.0f);
        f.logits[42] = 10.0f;
      }
    }
  }
  int32_t max_batch_tokens() const override { return 256; }
  int32_t bit_exact_decode_rows() const override { return 1; }
  int fail_at_call = -1;

 private:
  ModelConfig cfg_;
  std::vector<bool> open_;
  std::vector<int32_t> n_past_;
  std::atomic<int32_t> n_free_{2};
  int calls_ = 0;
};

TEST(BatchEngine, AFailingForwardEndsTheRunningRequestsAndFreesTheirSlots) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  FailingBackend be(m.config());
  be.fail_at_call = 4;  // two prompts, one decode step, then the failure
  EngineOptions eo;
  eo.n_slots = 2;
  eo.n_ctx = 64;
  BatchEngine engine(be, m.tokenizer(), eo);
  EXPECT_EQ(engine.options().n_pages, 2);
  const std::vector<int32_t> prompt = {1, 2, 3};
  auto a = make_request(prompt, 20, 0.0f, 0), b = make_request(prompt, 20, 0.0f, 0);
  a->ignore_eos = b->ignore_eos = true;
  ASSERT_EQ(engine.submit(a).status, BatchEngine::Admit::Ok);
  ASSERT_EQ(engine.submit(b).status, BatchEngine::Admit::Ok);
  engine.start();
  drain(*a);
  drain(*b);
  EXPECT_NE(a->error.find("injected failure"), std::string::npos) << a->error;
  EXPECT_NE(b->error.find("injected failure"), std::string::npos) << b->error;
  EXPECT_EQ(engine.stats().requests_failed, 2);
  EXPECT_EQ(be.kv_units_free(), 2);
  EXPECT_EQ(engine.stats().running, 0);
  auto c = make_request(prompt, 5, 0.0f, 0);  // the engine still serves
  c->ignore_eos = true;
  ASSERT_EQ(engine.submit(c).status, BatchEngine::Admit::Ok);
  drain(*c);
  EXPECT_TRUE(c->error.empty()) << c->error;
  EXPECT_EQ(c->n_generated, 5);
  EXPECT_EQ(engine.stats().requests_finished, 1);
  engine.stop();
}

TEST(BatchEngine, RefusesOptionsThatDoNotMatchTheBackend) {
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  FailingBackend be(m.config());
  EngineOptions eo;
  eo.n_slots = 3;  // the backend has 2
  eo.n_ctx = 64;
  EXPECT_THROW(BatchEngine(be, m.tokenizer(), eo), Error);
  eo.n_slots = 2;
  eo.n_ctx = 128;  // the backend's slots hold 64
  EXPECT_THROW(BatchEngine(be, m.tokenizer(), eo), Error);
}

}  // namespace
}  // namespace hs
