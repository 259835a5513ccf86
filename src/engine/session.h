// A single-sequence generation session: one Sequence (a KV cache on some backend), the tokens it holds, and the
// generate loop used by `hipserve run` and `hipserve chat`. A chat keeps its cache between turns and re-feeds
// only what changed. Sampling runs on the CPU from the logits the sequence returns, whatever the backend.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/sampler.h"
#include <memory>

#include "model/llama.h"
#include "model/sequence.h"
#include "model/tokenizer.h"
#include "util/thread_pool.h"

namespace hs {

struct GenerateOptions {
  int32_t n_predict = -1;            // -1: until end of generation or the context is full
  SamplingParams sampling;
  std::vector<std::string> stop;     // stop strings (not emitted)
  bool ignore_eos = false;
  bool show_progress = true;         // progress bar during long prefills
};

enum class StopReason { EndOfGeneration, StopString, Length, ContextFull, Cancelled };
const char* stop_reason_name(StopReason r);

struct GenerationStats {
  int32_t n_prompt_tokens = 0;   // tokens fed this call (after reusing the cached prefix)
  int32_t n_reused_tokens = 0;   // prefix tokens already in the cache
  int32_t n_generated = 0;       // tokens sampled
  int32_t n_decoded = 0;         // single-token forward passes run while generating
  double prompt_ms = 0, decode_ms = 0, sample_ms = 0, gen_ms = 0;  // gen_ms: the whole generation loop
};

struct GenerationResult {
  std::vector<int32_t> tokens;   // sampled tokens (incl. a final end-of-generation token, if any)
  std::string text;              // emitted text (stop strings cut)
  StopReason reason = StopReason::Length;
  GenerationStats stats;
};

class Session {
 public:
  // On the CPU: a CpuSequence of n_ctx positions, owned by the session.
  Session(Model& model, int32_t n_ctx, ThreadPool& pool);
  // On any backend: `seq` (and `tok`) must outlive the session.
  Session(Sequence& seq, const Tokenizer& tok);

  // Makes the cache hold `prompt` (reusing the longest common prefix with what it holds), then samples up to
  // n_predict tokens. on_text receives each piece of complete UTF-8 text as it becomes safe to show; returning
  // false cancels. Throws hs::Error if the prompt does not fit the context.
  GenerationResult generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                            const std::function<bool(const std::string&)>& on_text = {});

  const std::vector<int32_t>& tokens_in_cache() const { return history_; }
  const Sequence& sequence() const { return seq_; }
  int32_t n_ctx() const { return seq_.n_ctx(); }

 private:
  std::unique_ptr<Sequence> owned_;  // the CpuSequence of the CPU constructor
  Sequence& seq_;
  const Tokenizer& tok_;
  std::vector<int32_t> history_;  // tokens whose K/V are in the cache, in order
  std::vector<float> logits_;
};

}  // namespace hs
