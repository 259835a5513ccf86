// Element-wise ops of the transformer block (SwiGLU, residual add) and the vectorized exp they and the
// attention softmax share.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace hs {

// SwiGLU: out[i] = silu(gate[i]) * up[i] with silu(x) = x / (1 + exp(-x)); n values. out may alias gate or
// up.
void swiglu(const float* gate, const float* up, float* out, int64_t n);

// Residual add: dst[i] += src[i], n values.
void add_inplace(float* dst, const float* src, int64_t n);

// exp(x) for 8 floats (AVX2 + FMA, the build's baseline).
// Method: n = round(x * log2(e)); r = x - n*ln2 with ln2 split in two (Cody-Waite, r exact to ~1 ulp, |r| <=
// 0.347); exp(r) by its degree-7 Taylor polynomial (truncation < 6e-9 relative); result = exp(r) * 2^n built
// in the exponent field. Relative error <= 3e-7 over the whole clamped range (measured in activations_test).
// x is clamped to [-87.3, 88.3] so 2^n stays a normal float: exp(-inf) and exp(x < -87.3) give ~1.2e-38 (not
// 0; callers that need an exact 0 for masked entries blend it in), exp(+inf) gives ~2e38. NaN inputs give a
// finite value.
__attribute__((always_inline)) inline __m256 exp_avx2(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));  // max/min return the constant when x is NaN
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln2 = 0.693359375 (exact in 10 bits, so n*hi is exact for |n| <= 2^14) + -2.12194440e-4.
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// Scalar version of exp_avx2 (same clamping and error bound), for loop tails.
float exp_fast(float x);

}  // namespace hs
