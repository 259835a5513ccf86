#include "ops/norm.h"

#include <immintrin.h>

#include <cmath>

namespace hs {

namespace {

// Sum of x[i]^2 in double: each 8-float load widens to two 4-double vectors.
double sum_squares(const float* x, int64_t n) {
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    acc0 = _mm256_fmadd_pd(lo, lo, acc0);
    acc1 = _mm256_fmadd_pd(hi, hi, acc1);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(acc0, acc1));
  double s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) s += double(x[i]) * double(x[i]);
  return s;
}

}  // namespace

void rms_norm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t n_tok, int64_t n,
              float eps) {
  for (int64_t t = 0; t < n_tok; ++t) {
    const float* xr = x + t * ldx;
    float* yr = y + t * ldy;
    const float inv = float(1.0 / std::sqrt(sum_squares(xr, n) / double(n) + double(eps)));
    const __m256 vinv = _mm256_set1_ps(inv);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(yr + i,
                       _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vinv), _mm256_loadu_ps(w + i)));
    for (; i < n; ++i) yr[i] = xr[i] * inv * w[i];
  }
}

}  // namespace hs
