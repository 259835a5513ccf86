// Continuous batching for many concurrent generation requests over one model (what `hipserve serve` runs).
//
// One engine thread drives a SlotBackend (model/slot_backend.h: the CPU model with a KvPagePool shared by every
// sequence, or the GPU model with a K/V region per slot). Each loop iteration (a "step"):
//   1. admits queued requests into free slots, FIFO, while the pool has the pages the request can ever need
//      (prompt + max_tokens, reserved at admission: a running sequence never runs out of KV memory);
//   2. drops slots whose request was cancelled (client gone, shutdown);
//   3. runs ONE forward pass with the decode row of every sequence that has a sampled token to feed
//      (SlotBackend::forward over several slots: the weight matrices are read once for all of them);
//   4. runs at most `prefill_chunk` prompt tokens of the oldest sequence still prefilling, so a long prompt
//      delays the running streams by one bounded chunk per step rather than by its whole length.
// Decode rows and prefill chunks run as separate forward calls on purpose: a prompt chunk of >= 12 rows takes
// the panel GEMM while few decode rows take the row-streaming GEMV (different fp32 summation), so mixing them
// would make a stream's bits depend on whether someone else was prefilling. Kept apart, a sequence's tokens
// do not depend on its neighbours (tested), and a prompt shorter than prefill_chunk is fed exactly as
// `hipserve run` feeds it.
//
// Requests are shared objects: the HTTP side submits one, then waits on it for text; the engine thread appends
// text and finally marks it done. Cancellation is a flag the engine polls once per step.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/sampler.h"
#include "engine/session.h"
#include "model/slot_backend.h"
#include "model/tokenizer.h"

namespace hs {

class GenRequest {
 public:
  using Clock = std::chrono::steady_clock;

  // ---- input: set before submit(), read-only afterwards ----
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int32_t max_tokens = -1;  // -1: up to the context size
  std::vector<std::string> stop;
  bool ignore_eos = false;

  // ---- any thread ----
  void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

  // What the consumer gets from wait(): the text produced since the last call, and whether the request has
  // ended (then the fields below are final).
  struct Update {
    std::string text;
    bool done = false;
  };
  // Blocks until there is new text, the request is done, or `timeout` passed.
  Update wait(std::chrono::milliseconds timeout);

  // ---- final results, valid once an Update said done ----
  StopReason reason = StopReason::Length;
  std::string error;        // non-empty: the request failed inside the engine (message for the client)
  int32_t n_prompt = 0;     // prompt tokens
  int32_t n_generated = 0;  // sampled tokens (incl. a final end-of-generation token)
  Clock::time_point t_submit, t_start, t_first_token, t_done;  // t_start: admitted into a slot

  // ---- engine side ----
  void append_text(const std::string& text);
  void finish(StopReason why, const std::string& error_message = "");

 private:
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::string pending_;
  bool done_ = false;
};

struct EngineOptions {
  int32_t n_slots = 4;         // sequences generating at once
  int32_t n_ctx = 4096;        // per-sequence context: prompt + max_tokens must fit
  int32_t page_size = 256;     // KV positions per page (multiple of kAttnKeyBlock; CPU backend)
  int32_t n_pages = 0;         // KV pool size in pages; 0: enough for n_slots full contexts (CPU backend)
  int32_t prefill_chunk = 256; // prompt tokens fed per step at most
  int32_t max_queued = 256;    // waiting requests beyond this are refused (503)
};

// Snapshot for /metrics and logs.
struct EngineStats {
  int64_t prompt_tokens = 0, generated_tokens = 0;  // totals since start
  double prompt_seconds = 0, decode_seconds = 0;    // engine time in prefill / decode forward passes
  int64_t decode_steps = 0, decode_rows = 0;        // batched decode forwards, and rows they carried
  int64_t requests_finished = 0, requests_cancelled = 0, requests_failed = 0;
  int32_t running = 0, queued = 0;
  int32_t kv_pages_used = 0, kv_pages_total = 0, kv_page_size = 0;  // K/V memory units (SlotBackend)
  // Decode batches of up to this many sequences give each one exactly the bits of its lone run (the linear
  // layers' kernels keep their summation order up to this many rows; see cpu::f32act_batch_invariant_tokens).
  int32_t bit_exact_decode_rows = 1;
};

class BatchEngine {
 public:
  // The backend and tokenizer must outlive the engine; the engine thread is the backend's only user while it
  // runs. options.n_slots and n_ctx must match the backend's; page_size and n_pages are taken from it.
  BatchEngine(SlotBackend& backend, const Tokenizer& tokenizer, const EngineOptions& options);
  ~BatchEngine();  // stop()s

  const EngineOptions& options() const { return opt_; }

  enum class Admit { Ok, BadRequest, Busy };
  struct AdmitResult {
    Admit status = Admit::Ok;
    std::string message;  // why not, for the client
    std::string code;     // OpenAI-style error code, e.g. "context_length_exceeded"
  };
  // Checks the request against the context and the pool (prompt + max_tokens must fit; max_tokens -1 becomes
  // the rest of the context), then queues it. BadRequest: can never run. Busy: queue full or shutting down.
  AdmitResult submit(const std::shared_ptr<GenRequest>& req);

  void start();
  // Stops taking requests; queued ones end with an error; running ones may finish until `grace` has passed,
  // then are cancelled. Joins the engine thread. Idempotent.
  void stop(std::chrono::milliseconds grace = std::chrono::milliseconds(0));

  EngineStats stats() const;

 private:
  struct Slot;
  void loop();
  void admit_locked();
  void decode_step();
  void prefill_step();
  // After logits for the slot's last position: sample, emit, maybe finish. Returns true if still running.
  bool consume_logits(Slot& s);
  void end_slot(Slot& s, StopReason why, const std::string& error = "");

  SlotBackend& backend_;
  const Tokenizer& tok_;
  EngineOptions opt_;
  std::vector<std::unique_ptr<Slot>> slots_;
  int64_t admit_counter_ = 0;  // admission order, so the oldest prefill goes first

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<GenRequest>> queue_;
  bool accepting_ = true;
  bool stop_ = false;
  std::chrono::steady_clock::time_point cancel_at_ = std::chrono::steady_clock::time_point::max();
  std::thread thread_;

  // Stats (engine thread writes, others read).
  std::atomic<int64_t> prompt_tokens_{0}, generated_tokens_{0}, decode_steps_{0}, decode_rows_{0};
  std::atomic<int64_t> prompt_us_{0}, decode_us_{0};
  std::atomic<int64_t> finished_{0}, cancelled_{0}, failed_{0};
  std::atomic<int32_t> running_{0};
  int32_t bit_exact_decode_rows_ = 1;
};

}  // namespace hs
