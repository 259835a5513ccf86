#include "ops/norm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace hs {
namespace {

TEST(RmsNorm, MatchesDoubleFormulaWithStridesAndInPlace) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> U(-3.0f, 3.0f);
  for (int64_t n : {1, 7, 64, 576, 1001}) {
    const int64_t n_tok = 3, ldx = n + 5, ldy = n + 3;
    const float eps = 1e-5f;
    std::vector<float> x(n_tok * ldx), w(n), y(n_tok * ldy, 0.0f);
    for (auto& v : x) v = U(rng);
    for (auto& v : w) v = U(rng);
    x[0] = 1e3f;  // one large value: a float sum of squares would lose the small ones
    rms_norm(x.data(), ldx, w.data(), y.data(), ldy, n_tok, n, eps);
    for (int64_t t = 0; t < n_tok; ++t) {
      double ss = 0;
      for (int64_t i = 0; i < n; ++i) ss += double(x[t * ldx + i]) * x[t * ldx + i];
      const double inv = 1.0 / std::sqrt(ss / n + eps);
      for (int64_t i = 0; i < n; ++i) {
        const double ref = x[t * ldx + i] * inv * w[i];
        // inv rounded to float, then two float products: <= 3 ulp
        EXPECT_NEAR(y[t * ldy + i], ref, 4e-7 * std::abs(ref) + 1e-30) << n << " " << t << " " << i;
      }
    }
    // In place gives the same bits.
    std::vector<float> xi(x);
    rms_norm(xi.data(), ldx, w.data(), xi.data(), ldx, n_tok, n, eps);
    for (int64_t t = 0; t < n_tok; ++t)
      for (int64_t i = 0; i < n; ++i) EXPECT_EQ(xi[t * ldx + i], y[t * ldy + i]);
  }
}

TEST(RmsNorm, ZeroRowGivesZeros) {
  std::vector<float> x(16, 0.0f), w(16, 1.0f), y(16, 1.0f);
  rms_norm(x.data(), 16, w.data(), y.data(), 16, 1, 16, 1e-6f);
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace hs
