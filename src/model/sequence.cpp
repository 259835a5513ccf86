#include "model/sequence.h"

#include <algorithm>

#include "util/common.h"

namespace hs {

CpuSequence::CpuSequence(Model& model, int32_t n_ctx, ThreadPool& pool)
    : model_(model), pool_(pool), n_ctx_(n_ctx), cache_(model.config(), n_ctx) {}

void CpuSequence::append(std::span<const int32_t> tokens, float* logits, bool all_logits,
                         const std::function<void(int64_t, int64_t)>& on_chunk) {
  HS_CHECK(!tokens.empty(), "nothing to append");
  HS_CHECK(int64_t(cache_.n_past()) + int64_t(tokens.size()) <= n_ctx_,
           "context overflow: %lld positions needed but the context size is %d (raise -c)",
           (long long)(cache_.n_past() + int64_t(tokens.size())), n_ctx_);
  if (!all_logits || logits == nullptr) {
    model_.prefill(cache_, tokens, logits, pool_, on_chunk);
    return;
  }
  const int64_t V = model_.config().n_vocab, chunk = model_.max_batch_tokens();
  for (size_t done = 0; done < tokens.size();) {
    const int32_t n = int32_t(std::min<size_t>(size_t(chunk), tokens.size() - done));
    SeqBatch s{&cache_, tokens.data() + done, n, true, logits + int64_t(done) * V};
    model_.forward(std::span<const SeqBatch>(&s, 1), pool_);
    done += size_t(n);
    if (on_chunk) on_chunk(int64_t(done), int64_t(tokens.size()));
  }
}

}  // namespace hs
