#include "ops/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace hs {
namespace {

struct Shape {
  int64_t n_tok = 4, ld = 0;
  int32_t n_head = 3, head_dim = 64;
};

std::vector<float> random_rows(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> U(-2.0f, 2.0f);
  std::vector<float> x(s.n_tok * s.ld);
  for (auto& v : x) v = U(rng);
  return x;
}

// Direct formula in double: theta_i = pos * scale * base^(-2i/n_rot) / factor_i.
void rope_reference(std::vector<double>& x, const Shape& s, const int32_t* pos, const RopeParams& p) {
  const int32_t half = p.n_rot / 2;
  for (int64_t t = 0; t < s.n_tok; ++t)
    for (int32_t h = 0; h < s.n_head; ++h) {
      double* v = x.data() + t * s.ld + h * s.head_dim;
      for (int32_t i = 0; i < half; ++i) {
        double theta = pos[t] * double(p.freq_scale) * std::pow(double(p.freq_base), -2.0 * i / p.n_rot);
        if (p.freq_factors) theta /= p.freq_factors[i];
        const int a = p.type == RopeType::Norm ? 2 * i : i,
                  b = p.type == RopeType::Norm ? 2 * i + 1 : i + half;
        const double x0 = v[a], x1 = v[b];
        v[a] = x0 * std::cos(theta) - x1 * std::sin(theta);
        v[b] = x0 * std::sin(theta) + x1 * std::cos(theta);
      }
    }
}

TEST(Rope, MatchesDirectFormulaNormAndNeoX) {
  Shape s;
  s.ld = s.n_head * s.head_dim + 8;  // padded rows: the padding must stay untouched
  const int32_t pos[4] = {0, 1, 37, 4095};
  std::vector<float> factors(32);
  for (int i = 0; i < 32; ++i) factors[i] = 1.0f + 0.25f * (i % 5);
  for (RopeType type : {RopeType::Norm, RopeType::NeoX})
    for (int32_t n_rot : {64, 32})
      for (bool use_factors : {false, true}) {
        RopeParams p;
        p.type = type;
        p.n_rot = n_rot;
        p.freq_base = 100000.0f;
        p.freq_factors = use_factors ? factors.data() : nullptr;
        std::vector<float> x = random_rows(s, 3);
        std::vector<double> ref(x.begin(), x.end());
        rope_inplace(x.data(), s.n_tok, s.ld, s.n_head, s.head_dim, pos, p);
        rope_reference(ref, s, pos, p);
        // theta is formed in float32 like HF: |dtheta| <= ~2 ulp(theta) ~ 2.4e-7 * 4095 rad = 1e-3 at pos
        // 4095, so compare with an error that grows with the position.
        for (int64_t t = 0; t < s.n_tok; ++t)
          for (int64_t i = 0; i < s.ld; ++i) {
            const double tol = 1e-6 + 4.0 * 2.4e-7 * pos[t];
            EXPECT_NEAR(x[t * s.ld + i], ref[t * s.ld + i], tol)
                << int(type) << " rot " << n_rot << " t " << t;
          }
      }
}

TEST(Rope, PositionZeroIsIdentityAndTailPassesThrough) {
  Shape s;
  s.ld = s.n_head * s.head_dim;
  const int32_t pos[4] = {0, 0, 5, 9};
  for (RopeType type : {RopeType::Norm, RopeType::NeoX}) {
    RopeParams p;
    p.type = type;
    p.n_rot = 16;
    std::vector<float> x = random_rows(s, 4), x0 = x;
    rope_inplace(x.data(), s.n_tok, s.ld, s.n_head, s.head_dim, pos, p);
    for (int64_t i = 0; i < 2 * s.ld; ++i) EXPECT_EQ(x[i], x0[i]);  // rows at position 0
    for (int64_t t = 2; t < 4; ++t)
      for (int32_t h = 0; h < s.n_head; ++h)
        for (int32_t d = p.n_rot; d < s.head_dim; ++d) {
          const int64_t at = t * s.ld + h * s.head_dim + d;
          EXPECT_EQ(x[at], x0[at]);
        }
  }
}

TEST(Rope, RotationPreservesPairNorms) {
  Shape s;
  s.ld = s.n_head * s.head_dim;
  const int32_t pos[4] = {3, 100, 1000, 30000};
  for (RopeType type : {RopeType::Norm, RopeType::NeoX}) {
    RopeParams p;
    p.type = type;
    p.n_rot = s.head_dim;
    std::vector<float> x = random_rows(s, 5), x0 = x;
    rope_inplace(x.data(), s.n_tok, s.ld, s.n_head, s.head_dim, pos, p);
    const int32_t half = p.n_rot / 2;
    for (int64_t t = 0; t < s.n_tok; ++t)
      for (int32_t h = 0; h < s.n_head; ++h)
        for (int32_t i = 0; i < half; ++i) {
          const int64_t base = t * s.ld + h * s.head_dim;
          const int a = type == RopeType::Norm ? 2 * i : i, b = type == RopeType::Norm ? 2 * i + 1 : i + half;
          const double n0 = std::hypot(double(x0[base + a]), double(x0[base + b]));
          const double n1 = std::hypot(double(x[base + a]), double(x[base + b]));
          EXPECT_NEAR(n1, n0, 1e-6 * (1 + n0));
        }
  }
}

TEST(Rope, HalfScaleAtDoublePositionEqualsFullScale) {
  Shape s;
  s.ld = s.n_head * s.head_dim;
  const int32_t pos1[4] = {1, 7, 100, 2000}, pos2[4] = {2, 14, 200, 4000};
  for (RopeType type : {RopeType::Norm, RopeType::NeoX}) {
    RopeParams p1, p2;
    p1.type = p2.type = type;
    p1.n_rot = p2.n_rot = s.head_dim;
    p2.freq_scale = 0.5f;
    std::vector<float> a = random_rows(s, 6), b = a;
    rope_inplace(a.data(), s.n_tok, s.ld, s.n_head, s.head_dim, pos1, p1);
    rope_inplace(b.data(), s.n_tok, s.ld, s.n_head, s.head_dim, pos2, p2);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]);  // scaling by 2 and 0.5 is exact in float
  }
}

TEST(Rope, FreqFactorsDivideTheFrequency) {
  // A factor of 2 on every pair at position 2p equals no factor at position p.
  Shape s;
  s.ld = s.n_head * s.head_dim;
  std::vector<float> two(s.head_dim / 2, 2.0f);
  const int32_t pos1[4] = {1, 9, 300, 5000}, pos2[4] = {2, 18, 600, 10000};
  RopeParams p1, p2;
  p1.n_rot = p2.n_rot = s.head_dim;
  p2.freq_factors = two.data();
  std::vector<float> a = random_rows(s, 7), b = a;
  rope_inplace(a.data(), s.n_tok, s.ld, s.n_head, s.head_dim, pos1, p1);
  rope_inplace(b.data(), s.n_tok, s.ld, s.n_head, s.head_dim, pos2, p2);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]);
}

}  // namespace
}  // namespace hs
