// A model with K/V memory for several sequences ("slots") and forward passes over several of them at once:
// what the batch engine (`hipserve serve`, engine/batch_engine.h) runs on. Two implementations:
//   CpuSlotBackend (below): the CPU Model, one KvPagePool shared by all slots (paged K/V, memory in pages);
//   cuda::GpuSlotBackend (backends/cuda/llama_cuda.h): the GpuModel with one device K/V region per slot.
// The engine decides what runs (admission, decode rows, prefill chunks, sampling); a backend only holds the
// sequences' state and runs forward passes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/kv_cache.h"

namespace hs {

class Model;
class ThreadPool;

class SlotBackend {
 public:
  virtual ~SlotBackend() = default;

  virtual const ModelConfig& config() const = 0;
  virtual std::string name() const = 0;  // "cpu", "cuda (NVIDIA H100 80GB HBM3)"
  virtual int32_t n_slots() const = 0;
  virtual int32_t n_ctx() const = 0;  // positions one slot can hold

  // K/V memory in units of kv_unit_tokens() positions: pages on the CPU, a whole slot context on the GPU.
  virtual int32_t kv_unit_tokens() const = 0;
  virtual int32_t kv_units_total() const = 0;
  virtual int32_t kv_units_free() const = 0;  // any thread
  virtual int32_t kv_units_for(int64_t tokens) const = 0;
  virtual size_t kv_bytes() const = 0;  // memory reserved for K/V

  // Opens free slot s for a sequence of up to `reserve` positions; all the memory it can need is taken now, so
  // a running sequence never waits for memory. Throws hs::Error if the slot is open or the memory is short.
  virtual void open(int32_t slot, int32_t reserve) = 0;
  virtual void close(int32_t slot) = 0;  // frees the slot and its memory (no-op when closed)
  virtual int32_t n_past(int32_t slot) const = 0;

  // One slot's share of a forward call: tokens appended at n_past(slot); `logits` (n_vocab floats, may be null)
  // receives the last token's logits.
  struct Feed {
    int32_t slot = 0;
    const int32_t* tokens = nullptr;
    int32_t n_tokens = 0;
    float* logits = nullptr;
  };
  // Runs the feeds as one forward pass (several one-token feeds: a batched decode step; the linear layers
  // read each weight once for all of them). Each slot at most once. Throws hs::Error on misuse.
  virtual void forward(std::span<const Feed> feeds) = 0;
  // Most rows per forward call.
  virtual int32_t max_batch_tokens() const = 0;
  // Decode batches of up to this many sequences give each exactly the bits of its lone run.
  virtual int32_t bit_exact_decode_rows() const = 0;
};

// The CPU Model over one KvPagePool: slots take pages for prompt + max_tokens when opened (paged attention
// reads them through each sequence's block table, bit-for-bit what a contiguous cache gives).
class CpuSlotBackend final : public SlotBackend {
 public:
  // n_pages 0: enough for n_slots full contexts. max_batch_tokens: the most rows a forward call may carry
  // (raised in the model if needed). model and pool must outlive the backend.
  CpuSlotBackend(Model& model, ThreadPool& pool, int32_t n_slots, int32_t n_ctx, int32_t page_size,
                 int32_t n_pages, int32_t max_batch_tokens);
  ~CpuSlotBackend() override;

  const ModelConfig& config() const override;
  std::string name() const override { return "cpu"; }
  int32_t n_slots() const override { return int32_t(caches_.size()); }
  int32_t n_ctx() const override { return n_ctx_; }
  int32_t kv_unit_tokens() const override { return pool_kv_.page_size(); }
  int32_t kv_units_total() const override { return pool_kv_.n_pages(); }
  int32_t kv_units_free() const override { return pool_kv_.n_free(); }
  int32_t kv_units_for(int64_t tokens) const override {
    return int32_t((tokens + pool_kv_.page_size() - 1) / pool_kv_.page_size());
  }
  size_t kv_bytes() const override { return pool_kv_.bytes(); }
  void open(int32_t slot, int32_t reserve) override;
  void close(int32_t slot) override;
  int32_t n_past(int32_t slot) const override;
  void forward(std::span<const Feed> feeds) override;
  int32_t max_batch_tokens() const override;
  int32_t bit_exact_decode_rows() const override;

 private:
  Model& model_;
  ThreadPool& pool_;
  int32_t n_ctx_;
  KvPagePool pool_kv_;
  std::vector<std::unique_ptr<KvCache>> caches_;  // null: slot closed
  std::vector<int32_t> reserved_;                  // positions reserved at open()
};

}  // namespace hs
