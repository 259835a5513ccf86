// Rotary position embedding, applied in place to Q or K rows.
#pragma once

#include <cstdint>
#include <vector>

namespace hs {

// Norm: rotate adjacent pairs (x[2i], x[2i+1]) (GGUF llama, whose converter permutes Q/K weights to this
// order); NeoX: rotate pairs (x[i], x[i + n_rot/2]) (qwen2, HF rotate_half order).
enum class RopeType { Norm, NeoX };

struct RopeParams {
  RopeType type = RopeType::Norm;
  int32_t n_rot = 0;  // leading dims rotated (even, <= head_dim); the rest pass through
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;              // linear scaling: effective position = pos * freq_scale (= 1/factor)
  const float* freq_factors = nullptr;  // optional n_rot/2 divisors of the frequencies (Llama-3.1 rope_freqs)
};

// x: n_tok rows; row t holds n_head heads of head_dim floats at x + t*ld + h*head_dim; pos[t] is row t's
// position. Pair i (i < n_rot/2) turns by theta_i = pos * inv_freq_i, evaluated like Hugging Face in float32:
//   inv_freq_i = 1 / base^(float(2i)/n_rot) * freq_scale / factor_i, theta_i = float(pos) * inv_freq_i,
// then cos/sin of that float theta (glibc sincosf, < 1 ulp), so logits track the HF reference.
// (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos).
// inv_freq_i for i < n_rot/2 as rope_inplace uses them (also uploaded by the CUDA backend, so both agree).
std::vector<float> rope_inv_freq(const RopeParams& p);

void rope_inplace(float* x, int64_t n_tok, int64_t ld, int32_t n_head, int32_t head_dim, const int32_t* pos,
                  const RopeParams& p);

}  // namespace hs
