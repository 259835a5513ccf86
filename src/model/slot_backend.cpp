#include "model/slot_backend.h"

#include <algorithm>

#include "backends/cpu/matmul_f32act.h"
#include "model/llama.h"
#include "util/common.h"

namespace hs {

CpuSlotBackend::CpuSlotBackend(Model& model, ThreadPool& pool, int32_t n_slots, int32_t n_ctx, int32_t page_size,
                               int32_t n_pages, int32_t max_batch_tokens)
    : model_(model), pool_(pool), n_ctx_(n_ctx),
      pool_kv_(model.config(), page_size,
               n_pages > 0 ? n_pages : n_slots * int32_t((int64_t(n_ctx) + page_size - 1) / page_size)) {
  HS_CHECK(n_slots >= 1, "at least one slot is needed (got %d)", n_slots);
  HS_CHECK(n_ctx >= 2, "the context must hold at least 2 tokens (got %d)", n_ctx);
  caches_.resize(size_t(n_slots));
  reserved_.assign(size_t(n_slots), 0);
  model_.set_max_batch_tokens(std::max({model_.max_batch_tokens(), n_slots, max_batch_tokens}));
}

CpuSlotBackend::~CpuSlotBackend() = default;

const ModelConfig& CpuSlotBackend::config() const { return model_.config(); }

void CpuSlotBackend::open(int32_t slot, int32_t reserve) {
  HS_CHECK(slot >= 0 && slot < n_slots() && !caches_[size_t(slot)], "slot %d is not a free slot", slot);
  HS_CHECK(reserve >= 0 && reserve <= n_ctx_, "a slot holds at most %d positions (asked for %d)", n_ctx_, reserve);
  auto cache = std::make_unique<KvCache>(model_.config(), n_ctx_, pool_kv_);
  cache->reserve(reserve);  // throws when the pool is short; the pages taken so far go back with `cache`
  caches_[size_t(slot)] = std::move(cache);
  reserved_[size_t(slot)] = reserve;
}

void CpuSlotBackend::close(int32_t slot) {
  HS_CHECK(slot >= 0 && slot < n_slots(), "slot %d out of range", slot);
  caches_[size_t(slot)].reset();
}

int32_t CpuSlotBackend::n_past(int32_t slot) const {
  HS_CHECK(slot >= 0 && slot < n_slots() && caches_[size_t(slot)], "slot %d is not open", slot);
  return caches_[size_t(slot)]->n_past();
}

void CpuSlotBackend::forward(std::span<const Feed> feeds) {
  std::vector<SeqBatch> batch;
  batch.reserve(feeds.size());
  for (const Feed& f : feeds) {
    HS_CHECK(f.slot >= 0 && f.slot < n_slots() && caches_[size_t(f.slot)], "slot %d is not open", f.slot);
    for (const SeqBatch& b : batch)
      HS_CHECK(b.cache != caches_[size_t(f.slot)].get(), "slot %d fed twice in one forward call", f.slot);
    // Past its reservation a slot would take pages promised to the others.
    HS_CHECK(int64_t(caches_[size_t(f.slot)]->n_past()) + f.n_tokens <= reserved_[size_t(f.slot)],
             "slot %d reserved %d positions; %d more after %d do not fit", f.slot, reserved_[size_t(f.slot)],
             f.n_tokens, caches_[size_t(f.slot)]->n_past());
    SeqBatch b;
    b.cache = caches_[size_t(f.slot)].get();
    b.tokens = f.tokens;
    b.n_tokens = f.n_tokens;
    b.logits = f.logits;
    batch.push_back(b);
  }
  model_.forward(std::span<const SeqBatch>(batch), pool_);
}

int32_t CpuSlotBackend::max_batch_tokens() const { return model_.max_batch_tokens(); }

int32_t CpuSlotBackend::bit_exact_decode_rows() const {
  return int32_t(std::min<int64_t>(model_.batch_invariant_tokens(), std::max(n_slots(), 1)));
}

}  // namespace hs
