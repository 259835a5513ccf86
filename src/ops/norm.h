// RMS normalization (Llama-family pre-norm).
#pragma once

#include <cstdint>

namespace hs {

// y[t*ldy + i] = x[t*ldx + i] / sqrt(mean_i(x[t*ldx + i]^2) + eps) * w[i] for n_tok rows of n values.
// The sum of squares is accumulated in double (4 x 4 lanes), so the result is correctly scaled to ~1 ulp
// whatever n is. In place allowed (y == x, ldy == ldx).
void rms_norm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t n_tok, int64_t n,
              float eps);

}  // namespace hs
