#include "ops/activations.h"

namespace hs {

float exp_fast(float x) {
  alignas(32) float buf[8] = {x, x, x, x, x, x, x, x};
  _mm256_store_ps(buf, exp_avx2(_mm256_load_ps(buf)));
  return buf[0];
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  // silu(g) * u = g * u / (1 + exp(-g)); exp(-g) saturates at ~2e38 for g < -88, which gives -0 like the
  // limit.
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 u = _mm256_loadu_ps(up + i);
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g));
    _mm256_storeu_ps(out + i, _mm256_div_ps(_mm256_mul_ps(g, u), _mm256_add_ps(one, e)));
  }
  for (; i < n; ++i) out[i] = gate[i] * up[i] / (1.0f + exp_fast(-gate[i]));
}

void add_inplace(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_add_ps(_mm256_loadu_ps(dst + i), _mm256_loadu_ps(src + i)));
  for (; i < n; ++i) dst[i] += src[i];
}

}  // namespace hs
