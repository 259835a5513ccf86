// Token sampling: penalties, truncation (top-k, top-p, min-p), temperature and a reproducible draw.
//
// The chain is llama.cpp's default order (common/sampling.cpp):
//   penalties -> top-k -> top-p -> min-p -> temperature -> softmax -> draw
// so top-p and min-p see the temperature-1 distribution of the penalized logits, and temperature only
// reshapes the survivors. Greedy (temperature <= 0) skips everything after the penalties and returns the
// argmax.
//
// Non-finite logits (documented behaviour, tested):
//   - NaN is treated as -inf: never drawn, never the argmax.
//   - -inf tokens are never drawn.
//   - if any logit is +inf, the draw is uniform over the +inf tokens (the limit of softmax), greedy picks the
//     lowest such id.
//   - if every logit is NaN or -inf, sample() returns token 0 (the argmax with ties broken to the lowest id).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace hs {

struct SamplingParams {
  float temperature = 0.8f;  // <= 0: greedy (argmax of the penalized logits; ties -> lowest id)
  int32_t top_k = 40;        // <= 0: off; larger than the vocabulary: off
  float top_p = 0.95f;       // >= 1: off; keeps the shortest most-likely prefix whose mass >= top_p
  float min_p = 0.05f;       // <= 0: off; keeps tokens with p >= min_p * p_max
  // Penalties look at the last repeat_last_n accepted tokens (0: all penalties off, -1: the whole history);
  // the window is shared by all three, as in llama.cpp's penalties sampler.
  float repeat_penalty = 1.0f;     // CTRL style, once per distinct token: logit > 0 ? logit / rp : logit * rp
  int32_t repeat_last_n = 64;      // the penalty window, in tokens
  float presence_penalty = 0.0f;   // OpenAI style: logit -= presence * (count > 0)
  float frequency_penalty = 0.0f;  // OpenAI style: logit -= frequency * count
  // kRandomSeed: a seed from std::random_device (see Sampler::seed()); any other value: deterministic draws,
  // identical on every platform (mt19937_64 output is fixed by the standard; the uniform is derived by hand).
  static constexpr uint64_t kRandomSeed = 0xFFFFFFFFFFFFFFFFull;
  uint64_t seed = kRandomSeed;

  // "" if usable, else a one-line message naming the field, e.g. "top_p must be > 0 (got 0)".
  std::string validate() const;
};

class Sampler {
 public:
  // Throws hs::Error if params.validate() fails or n_vocab <= 0.
  Sampler(const SamplingParams& params, int32_t n_vocab);

  // Picks the next token from raw logits (n_vocab floats, not modified). Penalties use the accepted history;
  // the token is not accepted automatically (call accept()). No allocation after the first few calls.
  int32_t sample(const float* logits);

  // Appends to the history the penalties look at (prompt tokens may be accepted too). Throws on ids outside
  // [0, n_vocab).
  void accept(int32_t token);

  // Clears the history and restarts the generator from seed(), so a reset sampler replays the same draws. For
  // a fresh random seed, construct a new Sampler.
  void reset();

  uint64_t seed() const { return seed_; }  // the seed actually used (the drawn one for kRandomSeed)
  const SamplingParams& params() const { return params_; }
  int32_t n_vocab() const { return n_vocab_; }
  const std::vector<int32_t>& history() const { return history_; }

  // For tests and debugging: what sample() does first. Applies the penalties of the current history to
  // logits[n_vocab] in place (non-finite values pass through the arithmetic unchanged in kind).
  void apply_penalties(float* logits);

  // For tests and debugging: the token ids that survived truncation in the last sample() call, in the order
  // the draw walked them (most likely first, ties by id; by id when no filter needed sorting). Greedy: the
  // argmax.
  std::span<const int32_t> last_candidates() const { return candidates_; }

 private:
  int32_t argmax(const float* logits) const;

  SamplingParams params_;
  int32_t n_vocab_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  std::vector<int32_t> history_;

  // Buffers reused by every call (sized n_vocab once).
  std::vector<float> logits_;        // [n_vocab] penalized logits, NaN -> -inf
  std::vector<int32_t> candidates_;  // surviving token ids
  std::vector<double> weights_;      // [candidates] unnormalized probabilities at the sampling temperature
  std::vector<int32_t> counts_;      // [n_vocab] occurrences in the penalty window; all zero between calls
  std::vector<int32_t> distinct_;    // ids with counts_ > 0 during apply_penalties
};

}  // namespace hs
