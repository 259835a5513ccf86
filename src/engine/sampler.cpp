#include "engine/sampler.h"

#include "util/common.h"

#include <algorithm>
#include <cmath>
#include <limits>

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace hs {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Uniform double in [0, 1) from the top 53 bits of one engine output: exact and the same on every platform,
// unlike std::uniform_real_distribution / std::generate_canonical whose algorithms are
// implementation-defined.
double uniform01(std::mt19937_64& rng) {
  return double(rng() >> 11) * 0x1.0p-53;
}

uint64_t random_seed() {
  std::random_device rd;  // 32 bits per call
  return (uint64_t(rd()) << 32) ^ uint64_t(rd());
}

// max over x[n], ignoring NaN (-inf if there is nothing else). vmaxps(x, m) is exactly `x > m ? x : m`, NaN
// in x included, so the vector and scalar paths agree; the result does not depend on the summation order.
float max_value(const float* x, int32_t n) {
  float m = kNegInf;
  int32_t i = 0;
#ifdef __AVX2__  // the build baseline (x86-64-v3); GCC does not vectorize this reduction without -ffast-math
  __m256 m0 = _mm256_set1_ps(kNegInf), m1 = m0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);
    m1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), m1);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  for (const float v : lanes) m = v > m ? v : m;
#endif
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

}  // namespace

std::string SamplingParams::validate() const {
  if (std::isnan(temperature) || std::isinf(temperature))
    return strfmt("temperature must be a finite number (got %g)", temperature);
  if (std::isnan(top_p) || top_p <= 0) return strfmt("top_p must be > 0 (got %g); 1 turns it off", top_p);
  if (std::isnan(min_p) || min_p > 1) return strfmt("min_p must be <= 1 (got %g); 0 turns it off", min_p);
  if (!std::isfinite(repeat_penalty) || repeat_penalty <= 0)
    return strfmt("repeat_penalty must be a finite number > 0 (got %g); 1 turns it off", repeat_penalty);
  if (repeat_last_n < -1)
    return strfmt("repeat_last_n must be >= -1 (got %d); -1 means the whole history", repeat_last_n);
  if (!std::isfinite(presence_penalty))
    return strfmt("presence_penalty must be a finite number (got %g)", presence_penalty);
  if (!std::isfinite(frequency_penalty))
    return strfmt("frequency_penalty must be a finite number (got %g)", frequency_penalty);
  return "";
}

Sampler::Sampler(const SamplingParams& params, int32_t n_vocab) : params_(params), n_vocab_(n_vocab) {
  const std::string err = params.validate();
  HS_CHECK(err.empty(), "sampling: %s", err.c_str());
  HS_CHECK(n_vocab > 0, "sampling: n_vocab must be > 0 (got %d)", n_vocab);
  seed_ = params.seed == SamplingParams::kRandomSeed ? random_seed() : params.seed;
  rng_.seed(seed_);
  logits_.resize(n_vocab);
  candidates_.reserve(n_vocab);
  weights_.reserve(n_vocab);
  counts_.assign(n_vocab, 0);
}

void Sampler::accept(int32_t token) {
  HS_CHECK(token >= 0 && token < n_vocab_, "sampling: token %d outside the vocabulary [0, %d)", token,
           n_vocab_);
  history_.push_back(token);
}

void Sampler::reset() {
  history_.clear();
  rng_.seed(seed_);
}

void Sampler::apply_penalties(float* logits) {
  const SamplingParams& p = params_;
  if (p.repeat_last_n == 0 || history_.empty()) return;
  if (p.repeat_penalty == 1.0f && p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f) return;
  const size_t window =
      p.repeat_last_n < 0 ? history_.size() : std::min(history_.size(), size_t(p.repeat_last_n));
  distinct_.clear();
  for (size_t i = history_.size() - window; i < history_.size(); ++i) {
    const int32_t t = history_[i];
    if (counts_[t]++ == 0) distinct_.push_back(t);
  }
  for (const int32_t t : distinct_) {
    float& l = logits[t];
    l = l > 0 ? l / p.repeat_penalty : l * p.repeat_penalty;
    l -= p.frequency_penalty * float(counts_[t]) + p.presence_penalty;
    counts_[t] = 0;  // leave counts_ all zero for the next call
  }
}

int32_t Sampler::argmax(const float* logits) const {
  // The first index holding the max: ties -> lowest id; NaN never equals it; all NaN/-inf -> 0.
  const float m = max_value(logits, n_vocab_);
  if (!(m > kNegInf)) return 0;
  return int32_t(std::find(logits, logits + n_vocab_, m) - logits);
}

int32_t Sampler::sample(const float* logits) {
  const int32_t n = n_vocab_;
  float* l = logits_.data();
  std::copy(logits, logits + n, l);
  apply_penalties(l);  // NaN stays NaN; everything below skips it like -inf

  candidates_.clear();
  if (params_.temperature <= 0) {
    candidates_.push_back(argmax(l));
    return candidates_[0];
  }

  float max_logit = max_value(l, n);
  if (!(max_logit > kNegInf)) {  // every logit NaN or -inf: the argmax rule (ties -> lowest id)
    candidates_.push_back(0);
    return 0;
  }

  // A total order (logit descending, then id) so heaps and sorts give the same result on every library.
  const auto before = [l](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
  const size_t top_k = params_.top_k > 0 ? size_t(params_.top_k) : size_t(n);
  bool sorted = false;  // candidates_ ordered by `before` (else by id)

  if (std::isinf(max_logit)) {
    // The softmax limit: all mass on the +inf tokens, shared equally. Logit 0 for each keeps the code below
    // finite; in id order they are sorted (all tied).
    for (int32_t i = 0; i < n; ++i) {
      if (l[i] != max_logit) continue;
      candidates_.push_back(i);
      l[i] = 0;
    }
    max_logit = 0;
    if (candidates_.size() > top_k) candidates_.resize(top_k);
    sorted = true;
  } else if (top_k < size_t(n)) {
    // top-k in one pass over the logits: a k-entry heap whose front is the worst kept token. Most logits fail
    // the single compare against it, so this costs about one read per token (vs an indirect partial_sort).
    int32_t i = 0;
    for (; i < n && candidates_.size() < top_k; ++i) {
      if (l[i] > kNegInf) candidates_.push_back(i);
    }
    std::make_heap(candidates_.begin(), candidates_.end(), before);
    float worst = candidates_.empty() ? kNegInf : l[candidates_.front()];
    for (; i < n; ++i) {
      if (!(l[i] > worst)) continue;  // a tie with the worst loses: its id is larger
      std::pop_heap(candidates_.begin(), candidates_.end(), before);
      candidates_.back() = i;
      std::push_heap(candidates_.begin(), candidates_.end(), before);
      worst = l[candidates_.front()];
    }
    std::sort(candidates_.begin(), candidates_.end(), before);
    sorted = true;
  } else {
    candidates_.resize(n);  // capacity n: no allocation
    size_t count = 0;
    for (int32_t i = 0; i < n; ++i) {
      candidates_[count] = i;
      count += l[i] > kNegInf;  // drops -inf and NaN
    }
    candidates_.resize(count);
  }
  auto first = candidates_.begin();

  // top-p: sort lazily, a growing chunk at a time, until the prefix mass reaches top_p (usually a few hundred
  // tokens of a 100k vocabulary). [0, n_sorted) is sorted and precedes everything after it.
  if (params_.top_p < 1) {
    double total = 0;
    for (const int32_t t : candidates_) total += std::exp(double(l[t]) - max_logit);
    const double target = double(params_.top_p) * total;
    // Exact pre-cut: token x is kept only if the mass at or below it exceeds (1 - top_p) * total, and that
    // mass is at most count * p_x; so x with count * p_x < (1 - top_p) * total is certainly out (2x slack for
    // rounding). On real (peaked) logits this leaves a few hundred of 100k tokens for the sort below.
    const double cut =
        double(max_logit) + std::log(0.5 * (1 - double(params_.top_p)) * total / double(candidates_.size()));
    std::erase_if(candidates_, [&](int32_t t) { return double(l[t]) < cut; });  // keeps the order
    const size_t count = candidates_.size();
    size_t n_sorted = sorted ? count : 0, keep = count, i = 0, chunk = 64;
    double mass = 0;
    bool reached = false;
    while (!reached && i < count) {
      if (i == n_sorted) {
        const size_t end = std::min(count, n_sorted + chunk);
        if (end < count) std::nth_element(first + n_sorted, first + end, candidates_.end(), before);
        std::sort(first + n_sorted, first + end, before);
        n_sorted = end;
        chunk *= 4;
      }
      for (; i < n_sorted; ++i) {
        mass += std::exp(double(l[candidates_[i]]) - max_logit);
        if (mass >= target) {
          keep = i + 1;
          reached = true;
          break;
        }
      }
    }
    candidates_.resize(keep);
    sorted = true;
  }

  // min-p: p_i >= min_p * p_max  <=>  l_i >= l_max + log(min_p), independent of the normalization (and no exp
  // per token).
  if (params_.min_p > 0) {
    const double threshold = double(max_logit) + std::log(double(params_.min_p));
    const auto below = [&](int32_t t) { return double(l[t]) < threshold; };
    if (sorted) {
      candidates_.resize(std::find_if(candidates_.begin(), candidates_.end(), below) - candidates_.begin());
    } else {
      std::erase_if(candidates_, below);
    }
  }
  // The max always survives every filter above (it sorts first, and log(min_p) <= 0), so the candidate list
  // is not empty and its weights sum to >= 1.

  const double inv_temp = 1.0 / double(params_.temperature);
  weights_.resize(candidates_.size());
  double total = 0;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    weights_[i] = std::exp((double(l[candidates_[i]]) - max_logit) * inv_temp);
    total += weights_[i];
  }
  const double u = uniform01(rng_) * total;
  double cum = 0;
  int32_t last_positive = candidates_[0];
  for (size_t i = 0; i < candidates_.size(); ++i) {
    if (weights_[i] <= 0) continue;
    cum += weights_[i];
    last_positive = candidates_[i];
    if (u < cum) return candidates_[i];
  }
  return last_positive;  // u rounded up to total
}

}  // namespace hs
