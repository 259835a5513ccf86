// Which attention each layer runs: dense everywhere, or HiP with the first `dense_layers` layers kept dense
// (HIP_REFERENCE.md section 2: early layers show sliding-window patterns block-sparse masks approximate badly).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "ops/hip_attention.h"

namespace hs {

enum class AttentionKind { Dense, Hip };

struct AttentionConfig {
  AttentionKind kind = AttentionKind::Hip;
  HipConfig hip;              // paper defaults: k 512, b_q 32, b_k 2, b_sq 2, b_sk 1, sink 16, window 256, r_m 8
  int32_t dense_layers = 3;   // l_d: layers [0, l_d) run dense attention (measured for SmolLM2: docs/HIP.md)
  // More layers kept dense beyond the first l_d, ascending (default none; e.g. SmolLM2's layers 9-15 carry
  // its passkey retrieval, docs/HIP.md). Layers past the model's last are ignored.
  std::vector<int32_t> dense_also;

  bool layer_uses_hip(int32_t layer) const {
    return kind == AttentionKind::Hip && layer >= dense_layers &&
           !std::binary_search(dense_also.begin(), dense_also.end(), layer);
  }
  std::string validate() const;  // "" or a one-line reason
  std::string describe() const;  // "hip k=512 b_q=32 ... dense_layers=3" or "dense"
};

// Parses a layer list of inclusive ranges, "9-15,20" -> {9, ..., 15, 20} (sorted, unique); "" -> {}. Throws
// hs::Error naming `what` on anything else.
std::vector<int32_t> parse_layer_list(const std::string& text, const std::string& what);
// The inverse, with runs folded: {9, ..., 15, 20} -> "9-15,20".
std::string layer_list_str(const std::vector<int32_t>& layers);

// Applies a JSON object (e.g. {"attn": "hip", "k": 1024, "window": 512, "dense_layers": 4}) on top of `config`.
// "dense_also" takes a layer list string ("9-15") or an array of layer numbers.
// Unknown keys and wrong types are errors (hs::Error naming the key).
void apply_attention_json(AttentionConfig& config, const std::string& json_text, const std::string& origin);
void load_attention_config_file(AttentionConfig& config, const std::string& path);

}  // namespace hs
