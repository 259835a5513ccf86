// Which attention each layer runs: dense everywhere, or HiP with the first `dense_layers` layers kept dense
// (HIP_REFERENCE.md section 2: early layers show sliding-window patterns block-sparse masks approximate badly).
#pragma once

#include <cstdint>
#include <string>

#include "ops/hip_attention.h"

namespace hs {

enum class AttentionKind { Dense, Hip };

struct AttentionConfig {
  AttentionKind kind = AttentionKind::Hip;
  HipConfig hip;              // paper defaults: k 512, b_q 32, b_k 2, b_sq 2, b_sk 1, sink 16, window 256, r_m 8
  int32_t dense_layers = 3;   // l_d: layers [0, l_d) run dense attention (measured for SmolLM2: docs/HIP.md)

  bool layer_uses_hip(int32_t layer) const { return kind == AttentionKind::Hip && layer >= dense_layers; }
  std::string validate() const;  // "" or a one-line reason
  std::string describe() const;  // "hip k=512 b_q=32 ... dense_layers=3" or "dense"
};

// Applies a JSON object (e.g. {"attn": "hip", "k": 1024, "window": 512, "dense_layers": 4}) on top of `config`.
// Unknown keys and wrong types are errors (hs::Error naming the key).
void apply_attention_json(AttentionConfig& config, const std::string& json_text, const std::string& origin);
void load_attention_config_file(AttentionConfig& config, const std::string& path);

}  // namespace hs
