#include "model/config.h"

#include "model/gguf.h"
#include "util/common.h"

namespace hs {

std::string ModelConfig::summary() const {
  return strfmt("arch=%s layers=%d embd=%d ff=%d heads=%d kv_heads=%d head_dim=%d vocab=%d ctx_train=%d "
                "rope=%s base=%.0f scale=%.3g eps=%.1e%s",
                arch_name.c_str(), n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab, n_ctx_train,
                rope.type == RopeType::Norm ? "norm" : "neox", rope.freq_base, rope.freq_scale, norm_eps,
                tied_embeddings ? " tied-embeddings" : "");
}

ModelConfig config_from_gguf(const gguf::File& f) {
  ModelConfig c;
  c.arch_name = f.require_string("general.architecture");
  if (c.arch_name == "llama") {
    c.arch = Arch::Llama;
    c.rope.type = RopeType::Norm;  // GGUF llama q/k rows are permuted for adjacent-pair rotation
  } else if (c.arch_name == "qwen2") {
    c.arch = Arch::Qwen2;
    c.rope.type = RopeType::NeoX;
    c.qkv_bias = true;
  } else {
    fail(strfmt("unsupported model architecture '%s' (supported: llama, qwen2)", c.arch_name.c_str()));
  }
  c.name = f.get_string("general.name", "");
  const std::string a = c.arch_name + ".";
  auto req_int = [&](const char* key, int64_t lo, int64_t hi) {
    const int64_t v = f.require_int(a + key);
    HS_CHECK(v >= lo && v <= hi, "metadata %s%s = %lld is out of range [%lld, %lld]", a.c_str(), key, (long long)v,
             (long long)lo, (long long)hi);
    return int32_t(v);
  };
  c.n_ctx_train = req_int("context_length", 1, 1 << 24);
  c.n_embd = req_int("embedding_length", 1, 1 << 16);
  c.n_layer = req_int("block_count", 1, 1024);
  c.n_ff = req_int("feed_forward_length", 1, 1 << 20);
  c.n_head = req_int("attention.head_count", 1, 1024);
  c.n_head_kv = int32_t(f.get_int(a + "attention.head_count_kv", c.n_head));
  HS_CHECK(c.n_head_kv >= 1 && c.n_head % c.n_head_kv == 0,
           "attention.head_count_kv = %d must divide attention.head_count = %d", c.n_head_kv, c.n_head);
  HS_CHECK(c.n_embd % c.n_head == 0, "embedding_length %d is not a multiple of head_count %d", c.n_embd, c.n_head);
  c.head_dim = c.n_embd / c.n_head;
  HS_CHECK(c.head_dim % 16 == 0 && c.head_dim <= 256, "head dim %d is not supported (multiple of 16, <= 256)",
           c.head_dim);
  c.norm_eps = float(f.require_float(a + "attention.layer_norm_rms_epsilon"));
  HS_CHECK(c.norm_eps > 0 && c.norm_eps < 1, "layer_norm_rms_epsilon %g is not in (0, 1)", c.norm_eps);
  c.rope.n_rot = int32_t(f.get_int(a + "rope.dimension_count", c.head_dim));
  HS_CHECK(c.rope.n_rot > 0 && c.rope.n_rot <= c.head_dim && c.rope.n_rot % 2 == 0,
           "rope.dimension_count %d is invalid for head dim %d", c.rope.n_rot, c.head_dim);
  c.rope.freq_base = float(f.get_float(a + "rope.freq_base", 10000.0));
  HS_CHECK(c.rope.freq_base > 1, "rope.freq_base %g must be > 1", c.rope.freq_base);
  // Linear RoPE scaling: rope.scaling.type = linear with .factor, or the legacy rope.scale_linear key.
  const std::string scaling = f.get_string(a + "rope.scaling.type", "none");
  double factor = 1.0;
  if (scaling == "linear") {
    factor = f.get_float(a + "rope.scaling.factor", 1.0);
  } else if (scaling != "none" && !scaling.empty()) {
    fail(strfmt("rope scaling type '%s' is not supported (supported: none, linear)", scaling.c_str()));
  }
  if (f.find(a + "rope.scale_linear")) factor = f.get_float(a + "rope.scale_linear", 1.0);
  HS_CHECK(factor > 0 && factor <= 1024, "rope scaling factor %g is invalid", factor);
  c.rope.freq_scale = float(1.0 / factor);
  c.n_vocab = int32_t(f.get_int(a + "vocab_size", 0));  // cross-checked against the tokenizer and token_embd
  return c;
}

}  // namespace hs
