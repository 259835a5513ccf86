#include "ops/activations.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace hs {
namespace {

TEST(ExpAvx2, RelativeErrorBound) {
  // Sweep the whole clamped range densely; exp_avx2 promises <= 3e-7 relative.
  double worst = 0;
  alignas(32) float xs[8], ys[8];
  for (int i = 0; i < 400000; i += 8) {
    for (int j = 0; j < 8; ++j) xs[j] = -87.0f + 175.0f * float(i + j) / 400000.0f;
    _mm256_store_ps(ys, exp_avx2(_mm256_load_ps(xs)));
    for (int j = 0; j < 8; ++j) {
      const double ref = std::exp(double(xs[j]));
      worst = std::max(worst, std::abs(ys[j] - ref) / ref);
    }
  }
  EXPECT_LT(worst, 3e-7);
  // Small arguments, where the softmax weights live.
  for (float x = -1.0f; x <= 0.0f; x += 1.0f / 4096) {
    const double ref = std::exp(double(x));
    EXPECT_LT(std::abs(exp_fast(x) - ref) / ref, 2e-7) << x;
  }
  EXPECT_EQ(exp_fast(0.0f), 1.0f);
  EXPECT_TRUE(std::isfinite(exp_fast(-INFINITY)));
  EXPECT_LT(exp_fast(-INFINITY), 1e-37f);
  EXPECT_TRUE(std::isfinite(exp_fast(INFINITY)));
  EXPECT_TRUE(std::isfinite(exp_fast(NAN)));
}

TEST(Swiglu, MatchesDoubleFormula) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> U(-12.0f, 12.0f);
  const int n = 1003;
  std::vector<float> g(n), u(n), out(n);
  for (int i = 0; i < n; ++i) g[i] = U(rng), u[i] = U(rng);
  g[0] = -200.0f, g[1] = 200.0f, g[2] = 0.0f;
  swiglu(g.data(), u.data(), out.data(), n);
  for (int i = 0; i < n; ++i) {
    const double ref = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
    EXPECT_NEAR(out[i], ref, 1e-6 * std::abs(ref) + 1e-30) << i << " g=" << g[i];
  }
  // Aliasing: out == gate.
  std::vector<float> g2(g);
  swiglu(g2.data(), u.data(), g2.data(), n);
  for (int i = 0; i < n; ++i) EXPECT_EQ(g2[i], out[i]);
}

TEST(AddInplace, Adds) {
  std::vector<float> a(37), b(37);
  for (int i = 0; i < 37; ++i) a[i] = float(i), b[i] = 0.5f * i;
  add_inplace(a.data(), b.data(), 37);
  for (int i = 0; i < 37; ++i) EXPECT_EQ(a[i], 1.5f * i);
}

}  // namespace
}  // namespace hs
