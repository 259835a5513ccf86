// The llama-family transformer (architectures `llama` and `qwen2`) on the CPU: weights used in place from the
// memory-mapped GGUF, a forward pass over a batch of sequences that reads like the paper:
//   x = embed(tokens); per layer: x += Wo·Attn(RoPE(Wq·norm(x)), RoPE(Wk·norm(x)), Wv·norm(x));
//                                   x += Wdown·(silu(Wgate·norm(x)) * Wup·norm(x));
//   logits = Wout·norm(x)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backends/cpu/matmul.h"
#include "backends/cpu/matmul_f32act.h"
#include "backends/cpu/quants.h"
#include "model/attention_config.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/kv_cache.h"
#include "model/tokenizer.h"
#include "util/huge_buffer.h"
#include "util/thread_pool.h"

namespace hs {

struct LayerWeights {
  const float* attn_norm = nullptr;  // [n_embd]
  cpu::MatmulWeight wq, wk, wv, wo;  // [q_dim x n_embd], [kv_dim x n_embd] x2, [n_embd x q_dim]
  const float* bq = nullptr;         // qwen2 biases: [q_dim], [kv_dim], [kv_dim]
  const float* bk = nullptr;
  const float* bv = nullptr;
  const float* ffn_norm = nullptr;         // [n_embd]
  cpu::MatmulWeight w_gate, w_up, w_down;  // [n_ff x n_embd] x2, [n_embd x n_ff]
};

// One sequence's share of a forward batch: its new tokens are appended at cache->n_past().
struct SeqBatch {
  KvCache* cache = nullptr;
  const int32_t* tokens = nullptr;
  int32_t n_tokens = 0;
  bool all_logits = false;  // logits for every new token (perplexity, tests); otherwise for the last one only
  float* logits = nullptr;  // [all_logits ? n_tokens : 1][n_vocab], may be null when no logits are wanted
};

// Called with every named intermediate when set (debug dumps, tests): name, layer (-1 outside layers), rows x
// cols.
using DebugTap =
    std::function<void(const char* name, int layer, const float* data, int64_t rows, int64_t cols)>;

// How the linear layers treat activations: exact fp32 (the default: matches the Hugging Face reference to
// ~1e-2 in the logits), or llama.cpp-style int8 blocks (faster, but moves logits by up to ~2 on SmolLM2).
enum class MatmulMode { F32, Int8 };

struct LoadOptions {
  bool show_progress = true;
  bool prefault =
      true;  // touch every weight page at load (progress bar), so the first prompt isn't slowed by faults
};

class Model {
 public:
  static std::unique_ptr<Model> load(const std::string& path, const LoadOptions& options = {});

  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const gguf::File& file() const { return *file_; }
  size_t weight_bytes() const { return weight_bytes_; }
  // The bound weights (views into the mapped file or small owned copies), for backends that upload them.
  const LayerWeights& layer(int32_t il) const { return layers_[size_t(il)]; }
  const cpu::MatmulWeight& tok_embd() const { return tok_embd_; }
  const cpu::MatmulWeight& output() const { return output_; }
  const float* output_norm() const { return output_norm_; }

  // Rows per forward call (sum of n_tokens over the batch); longer prompts are fed in chunks of this size.
  int32_t max_batch_tokens() const { return max_batch_tokens_; }
  void set_max_batch_tokens(int32_t n) { max_batch_tokens_ = n > 0 ? n : 1; }

  // Runs one forward pass over the batch. Not reentrant: one caller at a time (scratch lives in the model).
  void forward(std::span<const SeqBatch> batch, ThreadPool& pool);

  // Feeds a whole prompt to one sequence in chunks of max_batch_tokens(); when `logits` is non-null, the last
  // token's logits go there (n_vocab floats), or with all_logits every token's ([tokens.size()][n_vocab]).
  // `on_chunk(done, total)` reports progress.
  void prefill(KvCache& cache, std::span<const int32_t> tokens, float* logits, ThreadPool& pool,
               const std::function<void(int64_t, int64_t)>& on_chunk = {}, bool all_logits = false);

  void set_debug_tap(DebugTap tap) { tap_ = std::move(tap); }
  // Int8 also packs every Q4_0 / Q4_1 / Q8_0 matrix once for this CPU's AVX-512 kernels (cpu::pack_weight:
  // as many bytes again as those weights, in huge pages), so decode batches and prefill chunks share one
  // register-tiled kernel. Not thread-safe: call before forward passes.
  void set_matmul_mode(MatmulMode mode);
  MatmulMode matmul_mode() const { return matmul_mode_; }
  size_t packed_weight_bytes() const { return packed_bytes_; }
  // Tokens one linear-layer call may carry while giving each token the bits it gets alone (INT64_MAX: any
  // number, with packed int8 weights).
  int64_t batch_invariant_tokens() const;

  // Attention per layer (default: HiP with the first layers dense). Throws hs::Error on an invalid config.
  void set_attention(const AttentionConfig& config);
  const AttentionConfig& attention() const { return attn_; }
  // HiP counters summed over every forward since the last reset (mask / attention time, keys scored...).
  const HipStats& hip_stats() const { return hip_stats_; }
  void reset_hip_stats() { hip_stats_ = HipStats(); }

 private:
  Model() = default;
  void bind_weights();
  void ensure_scratch(int32_t n_rows, int32_t n_out);
  // y[n x w.rows] = x[n x w.cols] W^T with the configured activation precision.
  void linear(const cpu::MatmulWeight& w, const float* x, int64_t n, int64_t ldx, float* y, int64_t ldy,
              ThreadPool& pool) const;

  std::unique_ptr<gguf::File> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ModelConfig config_;
  std::vector<LayerWeights> layers_;
  cpu::MatmulWeight tok_embd_, output_;
  const float* output_norm_ = nullptr;
  std::vector<std::vector<float>>
      owned_;  // small vectors converted to f32 at load (norms stored as f16, rope factors)
  size_t weight_bytes_ = 0;
  int32_t max_batch_tokens_ = 512;
  DebugTap tap_;
  AttentionConfig attn_;
  MatmulMode matmul_mode_ = MatmulMode::F32;
  HugeBuffer packed_;  // set_matmul_mode(Int8): the packed matrices, referenced by their MatmulWeight::packed
  size_t packed_bytes_ = 0;
  bool all_packed_ = false;  // every matrix of the forward pass has a packed copy
  HipStats hip_stats_;
  HipMask prefill_mask_;  // scratch: masks of a prefill chunk's query blocks (not kept after the chunk)

  // Scratch, [rows x width] row-major; sized for max_batch_tokens rows.
  std::vector<float> x_, xn_, q_, k_, v_, attn_out_, gate_, up_, out_rows_, logits_;
  std::vector<int32_t> pos_;
};

}  // namespace hs
