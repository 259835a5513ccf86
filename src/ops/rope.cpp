#include "ops/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "util/common.h"

namespace hs {

std::vector<float> rope_inv_freq(const RopeParams& p) {
  // As HF computes it: base ** (arange(0, n_rot, 2).float() / n_rot) in float32, then 1 / that.
  const int32_t half = p.n_rot / 2;
  std::vector<float> inv_freq(size_t(std::max(half, 0)));
  for (int32_t i = 0; i < half; ++i) {
    const float expo = float(2 * i) / float(p.n_rot);
    float f = 1.0f / ::powf(p.freq_base, expo);  // float32 pow, like torch
    if (p.freq_scale != 1.0f) f *= p.freq_scale;
    if (p.freq_factors) f /= p.freq_factors[i];
    inv_freq[size_t(i)] = f;
  }
  return inv_freq;
}

void rope_inplace(float* x, int64_t n_tok, int64_t ld, int32_t n_head, int32_t head_dim, const int32_t* pos,
                  const RopeParams& p) {
  HS_CHECK(p.n_rot >= 0 && p.n_rot % 2 == 0 && p.n_rot <= head_dim,
           "rope: n_rot %d must be even and <= head_dim %d", p.n_rot, head_dim);
  const int32_t half = p.n_rot / 2;
  if (half == 0 || n_tok == 0) return;

  const std::vector<float> inv_freq = rope_inv_freq(p);

  std::vector<float> cs(2 *
                        size_t(half));  // (cos, sin) of pair i at cs[2i], cs[2i+1]; shared by the row's heads
  for (int64_t t = 0; t < n_tok; ++t) {
    const float fpos = float(pos[t]);
    for (int32_t i = 0; i < half; ++i) ::sincosf(fpos * inv_freq[i], &cs[2 * i + 1], &cs[2 * i]);
    float* row = x + t * ld;
    for (int32_t h = 0; h < n_head; ++h) {
      float* v = row + int64_t(h) * head_dim;
      if (p.type == RopeType::Norm) {
        for (int32_t i = 0; i < half; ++i) {
          const float c = cs[2 * i], s = cs[2 * i + 1];
          const float x0 = v[2 * i], x1 = v[2 * i + 1];
          v[2 * i] = x0 * c - x1 * s;
          v[2 * i + 1] = x0 * s + x1 * c;
        }
      } else {
        for (int32_t i = 0; i < half; ++i) {
          const float c = cs[2 * i], s = cs[2 * i + 1];
          const float x0 = v[i], x1 = v[i + half];
          v[i] = x0 * c - x1 * s;
          v[i + half] = x0 * s + x1 * c;
        }
      }
    }
  }
}

}  // namespace hs
