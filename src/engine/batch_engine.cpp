#include "engine/batch_engine.h"

#include <algorithm>
#include <optional>

#include "backends/cpu/matmul_f32act.h"
#include "engine/stop_strings.h"
#include "util/common.h"

namespace hs {

// ---------------------------------------------------------------------------------------------------------------
// GenRequest

GenRequest::Update GenRequest::wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return done_ || !pending_.empty(); });
  Update u;
  u.text.swap(pending_);
  u.done = done_;
  return u;
}

void GenRequest::append_text(const std::string& text) {
  if (text.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_ += text;
  }
  cv_.notify_all();
}

void GenRequest::finish(StopReason why, const std::string& error_message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    reason = why;
    error = error_message;
    t_done = Clock::now();
    done_ = true;
  }
  cv_.notify_all();
}

// ---------------------------------------------------------------------------------------------------------------
// Slots

struct BatchEngine::Slot {
  std::shared_ptr<GenRequest> req;  // null: free
  std::unique_ptr<KvCache> cache;   // paged, in the engine's pool
  std::optional<Sampler> sampler;
  std::optional<StopStringMatcher> stops;
  std::optional<StreamDecoder> detok;
  std::vector<float> logits;     // [n_vocab]
  int32_t n_prefilled = 0;       // prompt tokens already in the cache
  int32_t next_token = -1;       // sampled but not yet fed (decode phase); -1 while prefilling
  int32_t max_tokens = 0;        // resolved limit
  int64_t admitted = 0;          // admission order
  bool prefilling() const { return req && next_token < 0; }
};

namespace {
int64_t us_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
}
int32_t pages_for(int64_t tokens, int32_t page_size) { return int32_t((tokens + page_size - 1) / page_size); }
}  // namespace

BatchEngine::BatchEngine(Model& model, ThreadPool& pool, const EngineOptions& options)
    : model_(model), pool_(pool), opt_(options),
      kv_pool_(model.config(), options.page_size,
               options.n_pages > 0 ? options.n_pages
                                   : options.n_slots * pages_for(options.n_ctx, options.page_size)) {
  HS_CHECK(opt_.n_slots >= 1, "the engine needs at least one slot (got %d)", opt_.n_slots);
  HS_CHECK(opt_.n_ctx >= 2, "the context must hold at least 2 tokens (got %d)", opt_.n_ctx);
  HS_CHECK(opt_.prefill_chunk >= 1, "the prefill chunk must be at least 1 token (got %d)", opt_.prefill_chunk);
  opt_.n_pages = kv_pool_.n_pages();
  bit_exact_decode_rows_ =
      model.matmul_mode() == MatmulMode::F32 ? int32_t(cpu::f32act_batch_invariant_tokens()) : 1;
  // Decode batches of up to n_slots rows and prefill chunks both go through one forward call.
  model_.set_max_batch_tokens(std::max({model_.max_batch_tokens(), opt_.n_slots, opt_.prefill_chunk}));
  for (int32_t i = 0; i < opt_.n_slots; ++i) {
    auto s = std::make_unique<Slot>();
    s->logits.resize(size_t(model.config().n_vocab));
    slots_.push_back(std::move(s));
  }
}

BatchEngine::~BatchEngine() { stop(); }

void BatchEngine::start() {
  HS_CHECK(!thread_.joinable(), "the engine is already running");
  thread_ = std::thread([this] { loop(); });
}

void BatchEngine::stop(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    accepting_ = false;
    for (auto& r : queue_) r->finish(StopReason::Cancelled);
    cancelled_ += int64_t(queue_.size());
    queue_.clear();
    const auto at = std::chrono::steady_clock::now() + grace;
    if (at < cancel_at_) cancel_at_ = at;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (auto& s : slots_)  // never started, or the thread ended by an exception: nothing may hang
    if (s->req) end_slot(*s, StopReason::Cancelled);
}

BatchEngine::AdmitResult BatchEngine::submit(const std::shared_ptr<GenRequest>& req) {
  AdmitResult res;
  const int64_t n_prompt = int64_t(req->prompt.size());
  if (n_prompt == 0) return {Admit::BadRequest, "the prompt is empty (nothing to condition on)", "invalid_prompt"};
  for (int32_t t : req->prompt)
    if (t < 0 || t >= model_.config().n_vocab)
      return {Admit::BadRequest, strfmt("token id %d is out of range [0, %d)", t, model_.config().n_vocab),
              "invalid_prompt"};
  if (n_prompt >= opt_.n_ctx)
    return {Admit::BadRequest,
            strfmt("this model's maximum context length is %d tokens, but the prompt is %lld tokens", opt_.n_ctx,
                   (long long)n_prompt),
            "context_length_exceeded"};
  if (req->max_tokens < 0) req->max_tokens = int32_t(opt_.n_ctx - n_prompt);
  if (req->max_tokens == 0) return {Admit::BadRequest, "max_tokens must be at least 1", "invalid_value"};
  if (n_prompt + req->max_tokens > opt_.n_ctx)
    return {Admit::BadRequest,
            strfmt("this model's maximum context length is %d tokens, but %lld were requested (%lld in the prompt, "
                   "%d for the completion); reduce max_tokens or the prompt",
                   opt_.n_ctx, (long long)(n_prompt + req->max_tokens), (long long)n_prompt, req->max_tokens),
            "context_length_exceeded"};
  // (prompt + max_tokens <= n_ctx <= what n_slots full contexts need, unless the pool was made smaller.)
  if (pages_for(n_prompt + req->max_tokens, kv_pool_.page_size()) > kv_pool_.n_pages())
    return {Admit::BadRequest,
            strfmt("the request needs %d KV pages but the whole pool has %d", pages_for(n_prompt + req->max_tokens,
                                                                                        kv_pool_.page_size()),
                   kv_pool_.n_pages()),
            "context_length_exceeded"};
  const std::string why = req->sampling.validate();
  if (!why.empty()) return {Admit::BadRequest, why, "invalid_value"};
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!accepting_) return {Admit::Busy, "the server is shutting down", "server_shutting_down"};
    if (int32_t(queue_.size()) >= opt_.max_queued)
      return {Admit::Busy, strfmt("too many requests waiting (%d); retry later", opt_.max_queued), "queue_full"};
    req->n_prompt = int32_t(n_prompt);
    req->t_submit = GenRequest::Clock::now();
    queue_.push_back(req);
  }
  cv_.notify_all();
  return res;
}

EngineStats BatchEngine::stats() const {
  EngineStats s;
  s.prompt_tokens = prompt_tokens_.load();
  s.generated_tokens = generated_tokens_.load();
  s.prompt_seconds = double(prompt_us_.load()) * 1e-6;
  s.decode_seconds = double(decode_us_.load()) * 1e-6;
  s.decode_steps = decode_steps_.load();
  s.decode_rows = decode_rows_.load();
  s.requests_finished = finished_.load();
  s.requests_cancelled = cancelled_.load();
  s.requests_failed = failed_.load();
  s.running = running_.load();
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.queued = int32_t(queue_.size());
  }
  s.kv_pages_total = kv_pool_.n_pages();
  s.kv_pages_used = kv_pool_.n_pages() - kv_pool_.n_free();
  s.kv_page_size = kv_pool_.page_size();
  s.bit_exact_decode_rows = bit_exact_decode_rows_;
  return s;
}

// Called with mu_ held: FIFO into free slots while the front request's pages are free (head-of-line: a big
// request is not overtaken forever by small ones).
void BatchEngine::admit_locked() {
  while (!queue_.empty()) {
    std::shared_ptr<GenRequest>& req = queue_.front();
    if (req->cancelled()) {
      req->finish(StopReason::Cancelled);
      cancelled_++;
      queue_.pop_front();
      continue;
    }
    Slot* free_slot = nullptr;
    for (auto& s : slots_)
      if (!s->req) {
        free_slot = s.get();
        break;
      }
    if (!free_slot) return;
    const int32_t need = int32_t(req->prompt.size()) + req->max_tokens;
    if (pages_for(need, kv_pool_.page_size()) > kv_pool_.n_free()) return;
    Slot& s = *free_slot;
    try {
      s.cache = std::make_unique<KvCache>(model_.config(), opt_.n_ctx, kv_pool_);
      s.cache->reserve(need);  // all pages now: a running sequence never waits for memory
      s.sampler.emplace(req->sampling, model_.config().n_vocab);
      for (int32_t t : req->prompt) s.sampler->accept(t);
      s.stops.emplace(req->stop);
      s.detok.emplace(model_.tokenizer());
    } catch (const std::exception& e) {  // (submit() validated everything; this is a bug guard)
      s.cache.reset();
      s.sampler.reset();
      s.stops.reset();
      failed_++;
      req->finish(StopReason::Cancelled, std::string("internal error: ") + e.what());
      queue_.pop_front();
      continue;
    }
    s.n_prefilled = 0;
    s.next_token = -1;
    s.max_tokens = req->max_tokens;
    s.admitted = admit_counter_++;
    req->t_start = GenRequest::Clock::now();
    s.req = std::move(req);
    queue_.pop_front();
    running_++;
  }
}

void BatchEngine::end_slot(Slot& s, StopReason why, const std::string& error) {
  if (!s.req) return;
  if (why != StopReason::Cancelled && error.empty() && s.stops && s.detok && !s.stops->stopped())
    s.req->append_text(s.stops->push(s.detok->flush()) + s.stops->flush());
  if (!error.empty())
    failed_++;
  else if (why == StopReason::Cancelled)
    cancelled_++;
  else
    finished_++;
  // Free the pages and the slot before telling the client, so that what it sees next (/metrics, a new
  // request) already has them.
  s.cache.reset();
  s.sampler.reset();
  s.stops.reset();
  s.detok.reset();
  std::shared_ptr<GenRequest> req = std::move(s.req);
  running_--;
  req->finish(why, error);
}

bool BatchEngine::consume_logits(Slot& s) {
  GenRequest& r = *s.req;
  const int32_t next = s.sampler->sample(s.logits.data());
  s.sampler->accept(next);
  if (r.n_generated == 0) r.t_first_token = GenRequest::Clock::now();
  r.n_generated++;
  generated_tokens_++;
  if (!r.ignore_eos && model_.tokenizer().is_end_of_generation(next)) {
    end_slot(s, StopReason::EndOfGeneration);
    return false;
  }
  r.append_text(s.stops->push(s.detok->push(next)));
  if (s.stops->stopped()) {
    end_slot(s, StopReason::StopString);
    return false;
  }
  if (r.n_generated >= s.max_tokens) {
    end_slot(s, StopReason::Length);
    return false;
  }
  if (s.cache->n_past() + 1 >= opt_.n_ctx) {  // unreachable while admission checks prompt + max_tokens
    end_slot(s, StopReason::ContextFull);
    return false;
  }
  s.next_token = next;
  return true;
}

void BatchEngine::decode_step() {
  std::vector<SeqBatch> batch;
  std::vector<Slot*> rows;
  for (auto& sp : slots_) {
    Slot& s = *sp;
    if (!s.req || s.prefilling()) continue;
    SeqBatch b;
    b.cache = s.cache.get();
    b.tokens = &s.next_token;
    b.n_tokens = 1;
    b.logits = s.logits.data();
    batch.push_back(b);
    rows.push_back(&s);
  }
  if (batch.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  model_.forward(std::span<const SeqBatch>(batch), pool_);
  decode_us_ += us_since(t0);
  decode_steps_++;
  decode_rows_ += int64_t(rows.size());
  for (Slot* s : rows) consume_logits(*s);
}

void BatchEngine::prefill_step() {
  Slot* oldest = nullptr;
  for (auto& sp : slots_)
    if (sp->prefilling() && (!oldest || sp->admitted < oldest->admitted)) oldest = sp.get();
  if (!oldest) return;
  Slot& s = *oldest;
  const int32_t n_prompt = int32_t(s.req->prompt.size());
  const int32_t chunk = std::min(opt_.prefill_chunk, n_prompt - s.n_prefilled);
  SeqBatch b;
  b.cache = s.cache.get();
  b.tokens = s.req->prompt.data() + s.n_prefilled;
  b.n_tokens = chunk;
  const bool last = s.n_prefilled + chunk == n_prompt;
  b.logits = last ? s.logits.data() : nullptr;
  const auto t0 = std::chrono::steady_clock::now();
  model_.forward(std::span<const SeqBatch>(&b, 1), pool_);
  prompt_us_ += us_since(t0);
  prompt_tokens_ += chunk;
  s.n_prefilled += chunk;
  if (last) consume_logits(s);
}

void BatchEngine::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (accepting_) admit_locked();
      const bool idle = running_.load() == 0;
      if (stop_ && idle) return;
      if (idle) {
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        continue;
      }
      if (std::chrono::steady_clock::now() >= cancel_at_)
        for (auto& s : slots_)
          if (s->req) s->req->cancel();
    }
    try {
      for (auto& s : slots_)
        if (s->req && s->req->cancelled()) end_slot(*s, StopReason::Cancelled);
      decode_step();
      prefill_step();
    } catch (const std::exception& e) {
      // A failed forward leaves the batch's caches in an unknown state: end every running sequence with the
      // error rather than take the server down.
      for (auto& s : slots_)
        if (s->req) end_slot(*s, StopReason::Cancelled, std::string("internal error: ") + e.what());
    }
  }
}

}  // namespace hs
