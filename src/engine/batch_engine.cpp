#include "engine/batch_engine.h"

#include <algorithm>
#include <optional>

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
  int32_t index = 0;                // the backend's slot
  bool open = false;                // the backend's slot holds this request's sequence
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
}  // namespace

BatchEngine::BatchEngine(SlotBackend& backend, const Tokenizer& tokenizer, const EngineOptions& options)
    : backend_(backend), tok_(tokenizer), opt_(options) {
  HS_CHECK(opt_.n_slots == backend.n_slots() && opt_.n_ctx == backend.n_ctx(),
           "engine options (%d slots of %d tokens) do not match the backend's (%d slots of %d tokens)", opt_.n_slots,
           opt_.n_ctx, backend.n_slots(), backend.n_ctx());
  HS_CHECK(opt_.n_ctx >= 2, "the context must hold at least 2 tokens (got %d)", opt_.n_ctx);
  HS_CHECK(opt_.prefill_chunk >= 1, "the prefill chunk must be at least 1 token (got %d)", opt_.prefill_chunk);
  // Decode batches of up to n_slots rows and prefill chunks both go through one forward call.
  HS_CHECK(backend.max_batch_tokens() >= std::max(opt_.n_slots, opt_.prefill_chunk),
           "the backend takes %d rows per forward call, fewer than %d slots or a %d-token prefill chunk",
           backend.max_batch_tokens(), opt_.n_slots, opt_.prefill_chunk);
  opt_.page_size = backend.kv_unit_tokens();
  opt_.n_pages = backend.kv_units_total();
  bit_exact_decode_rows_ = backend.bit_exact_decode_rows();
  for (int32_t i = 0; i < opt_.n_slots; ++i) {
    auto s = std::make_unique<Slot>();
    s->index = i;
    s->logits.resize(size_t(backend.config().n_vocab));
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
    if (t < 0 || t >= backend_.config().n_vocab)
      return {Admit::BadRequest, strfmt("token id %d is out of range [0, %d)", t, backend_.config().n_vocab),
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
  if (backend_.kv_units_for(n_prompt + req->max_tokens) > backend_.kv_units_total())
    return {Admit::BadRequest,
            strfmt("the request needs %d KV pages but the whole pool has %d",
                   backend_.kv_units_for(n_prompt + req->max_tokens), backend_.kv_units_total()),
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
  s.kv_pages_total = backend_.kv_units_total();
  s.kv_pages_used = backend_.kv_units_total() - backend_.kv_units_free();
  s.kv_page_size = backend_.kv_unit_tokens();
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
    if (backend_.kv_units_for(need) > backend_.kv_units_free()) return;
    Slot& s = *free_slot;
    try {
      backend_.open(s.index, need);  // all its memory now: a running sequence never waits for memory
      s.open = true;
      s.sampler.emplace(req->sampling, backend_.config().n_vocab);
      for (int32_t t : req->prompt) s.sampler->accept(t);
      s.stops.emplace(req->stop);
      s.detok.emplace(tok_);
    } catch (const std::exception& e) {  // (submit() validated everything; this is a bug guard)
      if (s.open) backend_.close(s.index);
      s.open = false;
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
  if (s.open) backend_.close(s.index);
  s.open = false;
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
  if (!r.ignore_eos && tok_.is_end_of_generation(next)) {
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
  if (backend_.n_past(s.index) + 1 >= opt_.n_ctx) {  // unreachable while admission checks prompt + max_tokens
    end_slot(s, StopReason::ContextFull);
    return false;
  }
  s.next_token = next;
  return true;
}

void BatchEngine::decode_step() {
  std::vector<SlotBackend::Feed> batch;
  std::vector<Slot*> rows;
  for (auto& sp : slots_) {
    Slot& s = *sp;
    if (!s.req || s.prefilling()) continue;
    SlotBackend::Feed f;
    f.slot = s.index;
    f.tokens = &s.next_token;
    f.n_tokens = 1;
    f.logits = s.logits.data();
    batch.push_back(f);
    rows.push_back(&s);
  }
  if (batch.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  backend_.forward(batch);
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
  SlotBackend::Feed f;
  f.slot = s.index;
  f.tokens = s.req->prompt.data() + s.n_prefilled;
  f.n_tokens = chunk;
  const bool last = s.n_prefilled + chunk == n_prompt;
  f.logits = last ? s.logits.data() : nullptr;
  const auto t0 = std::chrono::steady_clock::now();
  backend_.forward(std::span<const SlotBackend::Feed>(&f, 1));
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
