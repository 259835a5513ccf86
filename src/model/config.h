// Hyperparameters of a llama-family model, read from GGUF metadata.
#pragma once

#include <cstdint>
#include <string>

#include "ops/rope.h"

namespace hs {
namespace gguf {
class File;
}

enum class Arch { Llama, Qwen2 };

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string arch_name;  // general.architecture
  std::string name;       // general.name
  int32_t n_ctx_train = 0;
  int32_t n_embd = 0;
  int32_t n_layer = 0;
  int32_t n_ff = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;  // n_embd / n_head
  int32_t n_vocab = 0;
  float norm_eps = 1e-5f;
  RopeParams rope;        // type, n_rot, freq_base, freq_scale (freq_factors bound by the weights)
  bool qkv_bias = false;  // qwen2
  bool tied_embeddings = false;

  int32_t n_gqa() const { return n_head / n_head_kv; }
  int32_t q_dim() const { return n_head * head_dim; }
  int32_t kv_dim() const { return n_head_kv * head_dim; }
  std::string summary() const;  // one line for the load log
};

// Reads and validates `<arch>.*` keys; throws hs::Error naming the key on missing/invalid values.
ModelConfig config_from_gguf(const gguf::File& f);

}  // namespace hs
