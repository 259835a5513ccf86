#include "engine/session.h"

#include <algorithm>
#include <chrono>

#include "engine/stop_strings.h"
#include "util/common.h"
#include "util/progress.h"

namespace hs {

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::EndOfGeneration: return "eog";
    case StopReason::StopString: return "stop";
    case StopReason::Length: return "length";
    case StopReason::ContextFull: return "context";
    case StopReason::Cancelled: return "cancelled";
  }
  return "?";
}

Session::Session(Model& model, int32_t n_ctx, ThreadPool& pool)
    : owned_(std::make_unique<CpuSequence>(model, n_ctx, pool)), seq_(*owned_), tok_(model.tokenizer()),
      logits_(size_t(model.config().n_vocab)) {}

Session::Session(Sequence& seq, const Tokenizer& tok)
    : seq_(seq), tok_(tok), logits_(size_t(seq.config().n_vocab)) {}

GenerationResult Session::generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                                   const std::function<bool(const std::string&)>& on_text) {
  HS_CHECK(!prompt.empty(), "the prompt is empty (nothing to condition on)");
  const int32_t n_ctx = seq_.n_ctx();
  HS_CHECK(int64_t(prompt.size()) < n_ctx,
           "the prompt is %zu tokens, which does not fit the context of %d tokens (raise -c or shorten it)",
           prompt.size(), n_ctx);
  const std::string why = options.sampling.validate();
  HS_CHECK(why.empty(), "%s", why.c_str());

  GenerationResult res;
  // Reuse the longest common prefix; always re-feed at least the last prompt token to get its logits.
  size_t common = 0;
  while (common < history_.size() && common < prompt.size() && history_[common] == prompt[common]) ++common;
  common = std::min(common, prompt.size() - 1);
  seq_.truncate(int32_t(common));
  history_.resize(common);
  res.stats.n_reused_tokens = int32_t(common);

  const auto t_prompt = std::chrono::steady_clock::now();
  const std::span<const int32_t> todo(prompt.data() + common, prompt.size() - common);
  {
    const bool bar_on =
        options.show_progress && ProgressBar::default_enabled() && int64_t(todo.size()) > seq_.max_batch_tokens();
    ProgressBar bar("prefill", int64_t(todo.size()), bar_on);
    seq_.append(todo, logits_.data(), false, [&](int64_t done, int64_t) { bar.update(done); });
    bar.finish();
  }
  history_.insert(history_.end(), todo.begin(), todo.end());
  res.stats.n_prompt_tokens = int32_t(todo.size());
  res.stats.prompt_ms = ms_since(t_prompt);

  Sampler sampler(options.sampling, seq_.config().n_vocab);
  for (int32_t t : prompt) sampler.accept(t);
  StopStringMatcher stops(options.stop);
  StreamDecoder detok(tok_);
  const Tokenizer& tok = tok_;
  auto emit = [&](const std::string& s) {
    if (s.empty()) return true;
    res.text += s;
    return on_text ? on_text(s) : true;
  };

  const auto t_gen = std::chrono::steady_clock::now();
  res.reason = StopReason::Length;
  for (int32_t i = 0; options.n_predict < 0 || i < options.n_predict; ++i) {
    const auto t_s = std::chrono::steady_clock::now();
    const int32_t next = sampler.sample(logits_.data());
    sampler.accept(next);
    res.stats.sample_ms += ms_since(t_s);
    res.tokens.push_back(next);
    res.stats.n_generated++;
    if (!options.ignore_eos && tok.is_end_of_generation(next)) {
      res.reason = StopReason::EndOfGeneration;
      break;
    }
    if (!emit(stops.push(detok.push(next)))) {
      res.reason = StopReason::Cancelled;
      break;
    }
    if (stops.stopped()) {
      res.reason = StopReason::StopString;
      break;
    }
    if (options.n_predict >= 0 && i + 1 >= options.n_predict) break;  // no need to feed the last token
    if (seq_.n_past() + 1 >= n_ctx) {
      res.reason = StopReason::ContextFull;
      break;
    }
    const auto t_d = std::chrono::steady_clock::now();
    seq_.append(std::span<const int32_t>(&next, 1), logits_.data());
    res.stats.decode_ms += ms_since(t_d);
    res.stats.n_decoded++;
    history_.push_back(next);
  }
  if (res.reason != StopReason::StopString && res.reason != StopReason::Cancelled) emit(stops.push(detok.flush()) + stops.flush());
  res.stats.gen_ms = ms_since(t_gen);
  return res;
}

}  // namespace hs
