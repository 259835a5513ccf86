// One sequence's forward passes on one backend, the interface the generation session (`hipserve run`, `chat`)
// and the perplexity / passkey evaluations are written against, so they run the same on every device:
//   CpuSequence (below): Model + its own KvCache + a thread pool;
//   cuda::GpuSequence (backends/cuda/llama_cuda.h): a GpuModel, whose K/V cache lives on the GPU.
// Positions [0, n_past()) hold K/V; append() feeds more tokens (chunked internally) and returns logits.
// The batched server engine (engine/batch_engine.h) drives the CPU Model directly: it batches many sequences
// into one forward pass, which this one-sequence interface does not express.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "model/config.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "util/thread_pool.h"

namespace hs {

class Sequence {
 public:
  virtual ~Sequence() = default;

  virtual const ModelConfig& config() const = 0;
  virtual std::string backend_name() const = 0;  // "CPU", or the GPU's name
  virtual int32_t n_ctx() const = 0;             // positions the cache can hold
  virtual int32_t n_past() const = 0;
  virtual int32_t max_batch_tokens() const = 0;  // rows per forward chunk
  virtual void truncate(int32_t n) = 0;          // forgets positions >= n (n <= n_past())

  // Appends `tokens` at n_past(). `logits`: nullptr for none; else the last token's [n_vocab] floats, or with
  // all_logits every token's, [tokens.size()][n_vocab]. `on_chunk(done, total)` after each forward chunk.
  // Throws hs::Error when the tokens do not fit the context or an id is out of range; the cache then keeps
  // what it held before the call's first chunk (or more, never a partial chunk).
  virtual void append(std::span<const int32_t> tokens, float* logits, bool all_logits = false,
                      const std::function<void(int64_t, int64_t)>& on_chunk = {}) = 0;
};

class CpuSequence final : public Sequence {
 public:
  CpuSequence(Model& model, int32_t n_ctx, ThreadPool& pool);

  const ModelConfig& config() const override { return model_.config(); }
  std::string backend_name() const override { return "CPU"; }
  int32_t n_ctx() const override { return cache_.n_ctx_max(); }
  int32_t n_past() const override { return cache_.n_past(); }
  int32_t max_batch_tokens() const override { return model_.max_batch_tokens(); }
  void truncate(int32_t n) override { cache_.truncate(n); }
  void append(std::span<const int32_t> tokens, float* logits, bool all_logits = false,
              const std::function<void(int64_t, int64_t)>& on_chunk = {}) override;

  KvCache& cache() { return cache_; }

 private:
  Model& model_;
  ThreadPool& pool_;
  KvCache cache_;
};

}  // namespace hs
