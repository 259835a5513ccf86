#include "model/sequence.h"

#include "util/common.h"

namespace hs {

CpuSequence::CpuSequence(Model& model, int32_t n_ctx, ThreadPool& pool)
    : model_(model), pool_(pool), cache_(model.config(), n_ctx) {}

void CpuSequence::append(std::span<const int32_t> tokens, float* logits, bool all_logits,
                         const std::function<void(int64_t, int64_t)>& on_chunk) {
  // Checked up front (the cache checks each chunk): an overflowing call appends nothing.
  HS_CHECK(int64_t(cache_.n_past()) + int64_t(tokens.size()) <= n_ctx(),
           "context overflow: %lld positions needed but the context size is %d (raise -c)",
           (long long)(cache_.n_past() + int64_t(tokens.size())), n_ctx());
  model_.prefill(cache_, tokens, logits, pool_, on_chunk, all_logits);
}

}  // namespace hs
