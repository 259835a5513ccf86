#include <gtest/gtest.h>

#include "engine/sampler.h"
#include "util/common.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>

namespace hs {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Temperature 1, every filter and penalty off, fixed seed.
SamplingParams plain(uint64_t seed = 42) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = seed;
  return p;
}

std::vector<float> random_logits(int n, uint64_t seed, float scale = 3.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);  // values need not be portable here, only the sampler's
  std::vector<float> l(n);
  for (float& x : l) x = dist(rng);
  return l;
}

// Logits whose softmax is exactly proportional to probs (log is fine: softmax is shift-invariant).
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(float(std::log(p)));
  return l;
}

int32_t reference_argmax(const std::vector<float>& l) {
  int32_t best = 0;
  for (int32_t i = 1; i < int32_t(l.size()); ++i)
    if (l[i] > l[best]) best = i;
  return best;
}

std::vector<int> histogram(Sampler& s, const std::vector<float>& l, int draws) {
  std::vector<int> h(l.size(), 0);
  for (int i = 0; i < draws; ++i) h[s.sample(l.data())]++;
  return h;
}

std::set<int32_t> drawn_ids(Sampler& s, const std::vector<float>& l, int draws) {
  std::set<int32_t> ids;
  for (int i = 0; i < draws; ++i) ids.insert(s.sample(l.data()));
  return ids;
}

std::set<int32_t> candidate_set(const Sampler& s) {
  return {s.last_candidates().begin(), s.last_candidates().end()};
}

// Checks that empirical frequencies match probs within 5 standard errors (fixed seed: deterministic).
void expect_frequencies(const std::vector<int>& h, const std::vector<double>& probs, int draws) {
  for (size_t i = 0; i < probs.size(); ++i) {
    const double se = std::sqrt(probs[i] * (1 - probs[i]) / draws);
    EXPECT_NEAR(double(h[i]) / draws, probs[i], 5 * se + 1e-12) << "token " << i;
  }
}

std::vector<double> softmax(const std::vector<float>& l, double temp) {
  const double m = *std::max_element(l.begin(), l.end());
  std::vector<double> p;
  for (float x : l) p.push_back(std::exp((x - m) / temp));
  const double z = std::accumulate(p.begin(), p.end(), 0.0);
  for (double& x : p) x /= z;
  return p;
}

TEST(Sampler, SameSeedSameSequence) {
  const auto l = random_logits(1000, 1, 1.0f);
  SamplingParams p;  // the defaults: top-k, top-p, min-p and temperature all active
  p.seed = 1234;
  Sampler a(p, 1000), b(p, 1000);
  std::vector<int32_t> seq;
  for (int i = 0; i < 200; ++i) {
    const int32_t t = a.sample(l.data());
    EXPECT_EQ(t, b.sample(l.data()));
    seq.push_back(t);
    a.accept(t);
    b.accept(t);
  }
  a.reset();  // replays the same draws
  EXPECT_TRUE(a.history().empty());
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(a.sample(l.data()), seq[i]);
    a.accept(seq[i]);
  }
}

TEST(Sampler, DifferentSeedsDifferOnAFlatDistribution) {
  const std::vector<float> flat(1000, 0.0f);
  Sampler a(plain(1), 1000), b(plain(2), 1000);
  int same = 0;
  for (int i = 0; i < 100; ++i) same += a.sample(flat.data()) == b.sample(flat.data());
  EXPECT_LT(same, 5);  // expected 0.1
}

TEST(Sampler, RandomSeedIsReportedAndReplays) {
  const std::vector<float> flat(1000, 0.0f);
  SamplingParams p = plain(SamplingParams::kRandomSeed);
  Sampler a(p, 1000);
  EXPECT_NE(a.seed(), SamplingParams::kRandomSeed);
  p.seed = a.seed();
  Sampler b(p, 1000);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(a.sample(flat.data()), b.sample(flat.data()));
}

TEST(Sampler, PinnedSequenceIsPortable) {
  // mt19937_64 is fully specified by the standard and the uniform is derived by hand, so a fixed seed gives
  // the same draws on every platform. The 10000th output of a default-seeded mt19937_64 is fixed by the
  // standard.
  std::mt19937_64 rng;
  rng.discard(9999);
  EXPECT_EQ(rng(), 9981545732273789042ull);
  // On a uniform 2^20 vocabulary, token = floor(u * 2^20) = the top 20 bits of the engine output.
  const int n = 1 << 20;
  const std::vector<float> flat(n, 0.0f);
  Sampler s(plain(5489), n);  // 5489: mt19937_64's default seed
  std::mt19937_64 ref(5489);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(s.sample(flat.data()), int32_t(ref() >> 44));
}

TEST(Sampler, GreedyIsArgmaxWithTiesToLowestId) {
  for (float temp : {0.0f, -1.0f}) {
    SamplingParams p = plain();
    p.temperature = temp;
    for (uint64_t seed = 0; seed < 20; ++seed) {
      auto l = random_logits(500, seed);
      for (float& x : l) x = std::round(x);  // many ties
      Sampler s(p, 500);
      EXPECT_EQ(s.sample(l.data()), reference_argmax(l));
    }
    const std::vector<float> tied = {1, 3, 3, 2};
    Sampler s(p, 4);
    EXPECT_EQ(s.sample(tied.data()), 1);
    EXPECT_EQ(std::vector<int32_t>(s.last_candidates().begin(), s.last_candidates().end()), std::vector{1});
  }
}

TEST(Sampler, TopK1EqualsGreedy) {
  SamplingParams p = plain();
  p.top_k = 1;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto l = random_logits(500, seed);
    for (float& x : l) x = std::round(x);
    Sampler s(p, 500);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(s.sample(l.data()), reference_argmax(l));
  }
}

TEST(Sampler, TopKKeepsExactlyK) {
  const int n = 100;
  const auto l = random_logits(n, 3, 0.3f);  // fairly flat, so every survivor gets drawn
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  for (int k : {1, 2, 5, 17}) {
    SamplingParams p = plain();
    p.top_k = k;
    Sampler s(p, n);
    const std::set<int32_t> want(order.begin(), order.begin() + k);
    EXPECT_EQ(drawn_ids(s, l, 3000), want) << "k=" << k;
    // The survivors in draw order: most likely first.
    EXPECT_EQ(std::vector<int32_t>(s.last_candidates().begin(), s.last_candidates().end()),
              std::vector<int32_t>(order.begin(), order.begin() + k));
  }
  SamplingParams p = plain();
  p.top_k = 1000;  // larger than the vocabulary: clamps (off)
  Sampler s(p, 10);
  const std::vector<float> flat(10, 0.0f);
  EXPECT_EQ(drawn_ids(s, flat, 2000).size(), 10u);
}

TEST(Sampler, TopPKeepsTheMinimalPrefix) {
  // Probabilities 0.4, 0.3, 0.2, 0.1 at shuffled ids: cumulative 0.4, 0.7, 0.9, 1.0.
  const std::vector<float> l = logits_of({0.2, 0.4, 0.1, 0.3});
  const std::vector<std::pair<float, std::set<int32_t>>> cases = {
      {0.3f, {1}}, {0.5f, {1, 3}}, {0.65f, {1, 3}}, {0.8f, {1, 3, 0}}, {0.95f, {0, 1, 2, 3}}};
  for (const auto& [top_p, want] : cases) {
    SamplingParams p = plain();
    p.top_p = top_p;
    Sampler s(p, 4);
    EXPECT_EQ(drawn_ids(s, l, 2000), want) << "top_p=" << top_p;
    EXPECT_EQ(candidate_set(s), want);
  }
  // Renormalized over the survivors: top_p 0.65 keeps 0.4 and 0.3 -> 4/7 and 3/7.
  SamplingParams p = plain();
  p.top_p = 0.65f;
  Sampler s(p, 4);
  const int draws = 20000;
  expect_frequencies(histogram(s, l, draws), {0, 4.0 / 7, 0, 3.0 / 7}, draws);
}

TEST(Sampler, TopPOnALargeVocabularyMatchesAFullSort) {
  // Exercises the lazy chunked sort: with these scales the prefix is from 1 to thousands of tokens.
  const int n = 49152;
  for (float scale : {0.5f, 2.0f, 6.0f}) {
    const auto l = random_logits(n, 11, scale);
    std::vector<int32_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    const double m = l[order[0]];
    double total = 0;
    for (int i = 0; i < n; ++i) total += std::exp(double(l[i]) - m);  // same order and formula as the sampler
    for (float top_p : {0.1f, 0.5f, 0.9f, 0.99f}) {
      double mass = 0;
      size_t keep = 0;
      while (keep < size_t(n) && mass < double(top_p) * total) mass += std::exp(double(l[order[keep++]]) - m);
      SamplingParams p = plain();
      p.top_p = top_p;
      Sampler s(p, n);
      const int32_t t = s.sample(l.data());
      EXPECT_EQ(std::vector<int32_t>(s.last_candidates().begin(), s.last_candidates().end()),
                std::vector<int32_t>(order.begin(), order.begin() + keep))
          << "scale " << scale << " top_p " << top_p;
      EXPECT_TRUE(std::find(order.begin(), order.begin() + keep, t) != order.begin() + keep);
    }
  }
}

TEST(Sampler, MinPKeepsTokensAboveAFractionOfTheMax) {
  // p_max = 0.5; min_p 0.1 -> threshold 0.05: 0.04 and 0.01 go, 0.06 stays.
  const std::vector<float> l = logits_of({0.04, 0.5, 0.06, 0.39, 0.01});
  SamplingParams p = plain();
  p.min_p = 0.1f;
  Sampler s(p, 5);
  EXPECT_EQ(drawn_ids(s, l, 4000), (std::set<int32_t>{1, 2, 3}));
  EXPECT_EQ(candidate_set(s), (std::set<int32_t>{1, 2, 3}));
  const int draws = 20000;
  expect_frequencies(histogram(s, l, draws), {0, 0.5 / 0.95, 0.06 / 0.95, 0.39 / 0.95, 0}, draws);

  p.min_p = 0.9f;  // only the max survives
  Sampler only_max(p, 5);
  EXPECT_EQ(drawn_ids(only_max, l, 200), (std::set<int32_t>{1}));
  p.min_p = 1.0f;  // the max always survives, as do exact ties with it
  Sampler tie(p, 3);
  const std::vector<float> tied = {2, 1, 2};
  EXPECT_EQ(drawn_ids(tie, tied, 500), (std::set<int32_t>{0, 2}));
}

TEST(Sampler, FiltersSeeTheUntemperedDistribution) {
  // Temperature comes last (llama.cpp's order): at T=5 the distribution is nearly flat, so if top-p ran after
  // temperature it would keep 3 tokens; it keeps the 2 that reach 0.65 at T=1 and temperature reshapes them.
  const std::vector<float> l = logits_of({0.2, 0.4, 0.1, 0.3});
  SamplingParams p = plain();
  p.top_p = 0.65f;
  p.temperature = 5.0f;
  Sampler s(p, 4);
  const int draws = 20000;
  const double a = std::pow(0.4, 0.2), b = std::pow(0.3, 0.2);
  expect_frequencies(histogram(s, l, draws), {0, a / (a + b), 0, b / (a + b)}, draws);
  EXPECT_EQ(candidate_set(s), (std::set<int32_t>{1, 3}));
}

TEST(Sampler, FrequenciesMatchSoftmax) {
  const std::vector<float> l = {0.5f, -1.0f, 2.0f, 0.0f};
  const int draws = 20000;
  for (float temp : {1.0f, 0.7f, 1.5f}) {
    SamplingParams p = plain(99);
    p.temperature = temp;
    Sampler s(p, 4);
    expect_frequencies(histogram(s, l, draws), softmax(l, temp), draws);
  }
  // Top-k 3 then T=0.7: token 1 gone, the rest renormalized at the temperature.
  SamplingParams p = plain(100);
  p.top_k = 3;
  p.temperature = 0.7f;
  Sampler s(p, 4);
  std::vector<double> want = softmax({0.5f, -kInf, 2.0f, 0.0f}, 0.7);
  expect_frequencies(histogram(s, l, draws), want, draws);
}

TEST(Sampler, TemperatureLimits) {
  const std::vector<float> l = {1.0f, 0.9f, 0.5f, 0.95f};
  SamplingParams p = plain();
  p.temperature = 0.001f;  // P(not argmax) ~ exp(-50)
  Sampler cold(p, 4);
  EXPECT_EQ(drawn_ids(cold, l, 1000), (std::set<int32_t>{0}));
  p.temperature = 100.0f;
  Sampler hot(p, 4);
  const int draws = 20000;
  const std::vector<int> h = histogram(hot, l, draws);
  for (int c : h) EXPECT_NEAR(double(c) / draws, 0.25, 0.02);
  expect_frequencies(h, softmax(l, 100.0), draws);
}

TEST(Sampler, PenaltiesChangeExactlyTheRightLogits) {
  const std::vector<float> logits = {2, -2, 0, 1, -1, 3, 0.5f, -0.5f};
  const std::vector<int32_t> history = {0, 1, 1, 2, 5, 5, 5};  // counts: 0:1 1:2 2:1 5:3
  const auto penalized = [&](float rp, float presence, float frequency, int32_t last_n) {
    SamplingParams p = plain();
    p.repeat_penalty = rp;
    p.presence_penalty = presence;
    p.frequency_penalty = frequency;
    p.repeat_last_n = last_n;
    Sampler s(p, 8);
    for (int32_t t : history) s.accept(t);
    std::vector<float> l = logits;
    s.apply_penalties(l.data());
    return l;
  };
  // Repeat penalty, once per distinct token: positive logits divided, negative multiplied, zero stays zero.
  EXPECT_EQ(penalized(2, 0, 0, -1), (std::vector<float>{1, -4, 0, 1, -1, 1.5f, 0.5f, -0.5f}));
  // Presence: flat per distinct token.
  EXPECT_EQ(penalized(1, 0.5f, 0, -1), (std::vector<float>{1.5f, -2.5f, -0.5f, 1, -1, 2.5f, 0.5f, -0.5f}));
  // Frequency: per occurrence.
  EXPECT_EQ(penalized(1, 0, 0.25f, -1),
            (std::vector<float>{1.75f, -2.5f, -0.25f, 1, -1, 2.25f, 0.5f, -0.5f}));
  // All three: repeat first, then the OpenAI terms.
  EXPECT_EQ(penalized(2, 0.5f, 0.25f, -1),
            (std::vector<float>{0.25f, -5, -0.75f, 1, -1, 0.25f, 0.5f, -0.5f}));
  // Window of 3: only the three trailing 5s count (for every penalty).
  EXPECT_EQ(penalized(2, 0.5f, 0.25f, 3), (std::vector<float>{2, -2, 0, 1, -1, 0.25f, 0.5f, -0.5f}));
  // Window of 4: token 2 once, token 5 three times.
  EXPECT_EQ(penalized(2, 0.5f, 0.25f, 4), (std::vector<float>{2, -2, -0.75f, 1, -1, 0.25f, 0.5f, -0.5f}));
  // Window larger than the history: the whole history.
  EXPECT_EQ(penalized(2, 0.5f, 0.25f, 64), penalized(2, 0.5f, 0.25f, -1));
  // 0: off.
  EXPECT_EQ(penalized(2, 0.5f, 0.25f, 0), logits);
  // Negative penalties reward repetition.
  EXPECT_EQ(penalized(1, -1, 0, -1), (std::vector<float>{3, -1, 1, 1, -1, 4, 0.5f, -0.5f}));
}

TEST(Sampler, GreedyUsesPenalizedLogits) {
  const std::vector<float> l = {1.0f, 3.0f, 2.5f};
  SamplingParams p = plain();
  p.temperature = 0;
  p.repeat_penalty = 1.5f;  // 3 -> 2 < 2.5
  Sampler s(p, 3);
  EXPECT_EQ(s.sample(l.data()), 1);
  s.accept(1);
  EXPECT_EQ(s.sample(l.data()), 2);
  s.reset();
  EXPECT_EQ(s.sample(l.data()), 1);
}

TEST(Sampler, NonFiniteLogits) {
  const std::vector<float> l = {kNaN, 1.0f, -kInf, 0.5f, kNaN};
  SamplingParams p = plain();
  Sampler s(p, 5);
  EXPECT_EQ(drawn_ids(s, l, 2000), (std::set<int32_t>{1, 3}));  // NaN and -inf never drawn
  p.temperature = 0;
  Sampler g(p, 5);
  EXPECT_EQ(g.sample(l.data()), 1);

  // All NaN or -inf: token 0, greedy or not.
  const std::vector<float> none = {kNaN, -kInf, kNaN};
  for (float temp : {0.0f, 1.0f}) {
    SamplingParams q = plain();
    q.temperature = temp;
    Sampler z(q, 3);
    EXPECT_EQ(z.sample(none.data()), 0);
  }

  // +inf: uniform over the +inf tokens; greedy takes the lowest.
  const std::vector<float> inf = {1.0f, kInf, kNaN, kInf, 1e30f};
  Sampler u(plain(), 5);
  const int draws = 4000;
  expect_frequencies(histogram(u, inf, draws), {0, 0.5, 0, 0.5, 0}, draws);
  Sampler ug(p, 5);
  EXPECT_EQ(ug.sample(inf.data()), 1);

  // Huge finite logits: exp of differences only, no overflow.
  const std::vector<float> big = {3e38f, -3e38f, 3e38f};
  Sampler b(plain(), 3);
  EXPECT_EQ(drawn_ids(b, big, 500), (std::set<int32_t>{0, 2}));
}

TEST(Sampler, ArgmaxAtEveryPositionWithNaNsAround) {
  // 77 tokens: several 16-wide vector blocks plus a scalar tail, so every lane and the tail are exercised.
  const int n = 77;
  SamplingParams p = plain();
  p.temperature = 0;
  Sampler s(p, n);
  for (int pos = 0; pos < n; ++pos) {
    auto l = random_logits(n, pos);
    for (int i = (pos + 1) % 5; i < n; i += 5) l[i] = kNaN;
    l[pos] = 50.0f;
    EXPECT_EQ(s.sample(l.data()), pos);
    l[(pos + 13) % n] = 50.0f;  // a tie: the lower id wins
    EXPECT_EQ(s.sample(l.data()), std::min(pos, (pos + 13) % n));
    l[(pos + 29) % n] = kInf;
    EXPECT_EQ(s.sample(l.data()), (pos + 29) % n);
  }
}

TEST(Sampler, Validate) {
  EXPECT_EQ(SamplingParams().validate(), "");
  const auto message = [](auto mutate) {
    SamplingParams p;
    mutate(p);
    return p.validate();
  };
  EXPECT_EQ(message([](SamplingParams& p) { p.temperature = -1; }), "");  // greedy
  EXPECT_EQ(message([](SamplingParams& p) { p.top_k = 1 << 30; }), "");   // clamps
  EXPECT_EQ(message([](SamplingParams& p) { p.top_k = -5; }), "");        // off
  EXPECT_EQ(message([](SamplingParams& p) { p.top_p = 1.5f; }), "");      // off
  EXPECT_EQ(message([](SamplingParams& p) { p.min_p = -1; }), "");        // off
  EXPECT_EQ(message([](SamplingParams& p) { p.repeat_last_n = -1; }), "");
  EXPECT_EQ(message([](SamplingParams& p) { p.presence_penalty = -2; }), "");

  const auto expect_bad = [&](auto mutate, const std::string& field) {
    const std::string m = message(mutate);
    EXPECT_NE(m.find(field), std::string::npos) << "'" << m << "' should name " << field;
    EXPECT_EQ(m.find('\n'), std::string::npos);
    SamplingParams p;
    mutate(p);
    EXPECT_THROW(Sampler(p, 10), Error);
  };
  expect_bad([](SamplingParams& p) { p.temperature = kNaN; }, "temperature");
  expect_bad([](SamplingParams& p) { p.temperature = kInf; }, "temperature");
  expect_bad([](SamplingParams& p) { p.top_p = 0; }, "top_p");
  expect_bad([](SamplingParams& p) { p.top_p = -0.5f; }, "top_p");
  expect_bad([](SamplingParams& p) { p.top_p = kNaN; }, "top_p");
  expect_bad([](SamplingParams& p) { p.min_p = 1.5f; }, "min_p");
  expect_bad([](SamplingParams& p) { p.min_p = kNaN; }, "min_p");
  expect_bad([](SamplingParams& p) { p.repeat_penalty = 0; }, "repeat_penalty");
  expect_bad([](SamplingParams& p) { p.repeat_penalty = kInf; }, "repeat_penalty");
  expect_bad([](SamplingParams& p) { p.repeat_last_n = -2; }, "repeat_last_n");
  expect_bad([](SamplingParams& p) { p.presence_penalty = kNaN; }, "presence_penalty");
  expect_bad([](SamplingParams& p) { p.frequency_penalty = -kInf; }, "frequency_penalty");
  SamplingParams p;
  p.top_p = 0;
  EXPECT_EQ(p.validate(), "top_p must be > 0 (got 0); 1 turns it off");

  EXPECT_THROW(Sampler(SamplingParams(), 0), Error);
  Sampler s(SamplingParams(), 10);
  EXPECT_THROW(s.accept(10), Error);
  EXPECT_THROW(s.accept(-1), Error);
}

TEST(Sampler, DefaultChainOnALargeVocabulary) {
  // The production path (top-k 40, top-p, min-p, T 0.8) on a Llama-3-sized vocabulary: survivors are a subset
  // of the top 40 and the draw is one of them.
  const int n = 128256;
  const auto l = random_logits(n, 5, 2.0f);
  SamplingParams p;
  p.seed = 3;
  p.repeat_penalty = 1.1f;
  Sampler s(p, n);
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + 40, order.end(),
                    [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  const std::set<int32_t> top40(order.begin(), order.begin() + 40);
  for (int i = 0; i < 20; ++i) {
    const int32_t t = s.sample(l.data());
    EXPECT_TRUE(top40.count(t)) << t;
    EXPECT_LE(s.last_candidates().size(), 40u);
    s.accept(t);
  }
}

}  // namespace
}  // namespace hs
