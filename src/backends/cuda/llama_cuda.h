// The llama/qwen2 forward pass on a CUDA GPU, for one sequence or several (n_seq, each with its own K/V; what
// serve's GpuSlotBackend drives): weights uploaded once as bf16 (GGUF
// tensors dequantized exactly on the CPU, rounded to bf16), cuBLAS GEMMs (bf16 operands, fp32 accumulation),
// fused kernels for RMSNorm (fp32 residual in, bf16 out), RoPE + K/V cache write, SwiGLU, embedding lookup,
// residual adds folded into the GEMMs (beta = 1), and sampling (greedy / temperature) on the GPU. Attention
// per layer as on the CPU (AttentionConfig): dense (FlashAttention-style prefill, split-K decode) or HiP (mask
// estimation + block-sparse attention, decode masks cached and refreshed every r_m steps), kernels from
// attention_cuda.h. Decode steps may run as CUDA graphs (captured each step and applied to one executable
// graph with cudaGraphExecUpdate, so the GPU runs the step without launch gaps).
//
// The CPU Model (src/model/llama.h) is the oracle: llama_cuda_test.cpp compares logits and greedy tokens.
// This header needs no CUDA headers (the apps include it).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/attention_config.h"
#include "model/config.h"
#include "model/sequence.h"
#include "model/slot_backend.h"

namespace hs {
class Model;
}

namespace hs::cuda {

// True when a CUDA device can be used; otherwise `why` (if given) says why not.
bool device_available(std::string* why = nullptr);
std::string device_name();  // "NVIDIA H100 80GB HBM3", or "" without a device
// Device-to-device copy bandwidth in GB/s (bytes read + written), measured with a 1 GiB copy: the memory
// ceiling against which decode speed is judged.
double copy_bandwidth_gbs();
// Which dense prefill attention a model with this option runs: "cuDNN fused attention (cuDNN 9.14.0, frontend
// 1.32)", or "our kernel (...)" with why not.
std::string dense_prefill_attention(bool cudnn_prefill);

// Shapes of well-known models for random-weight speed work ("llama3.1-8b", "llama3.2-1b", "qwen2.5-7b",
// "smollm2-135m"); throws hs::Error listing the names for an unknown one.
ModelConfig random_preset(const std::string& name);
std::string random_preset_names();

struct GpuModelOptions {
  int32_t n_ctx = 4096;              // K/V cache positions per sequence, allocated up front on the device
  int32_t n_seq = 1;                 // sequences with their own K/V (serve's slots); prefill/decode use sequence 0
  int32_t max_batch_tokens = 2048;   // prefill chunk (rows per forward)
  AttentionConfig attn;              // as on the CPU
  bool cuda_graphs = true;           // decode steps as graphs
  // Dense prefill attention (chunks of >= 64 rows) through cuDNN's fused attention where libcudnn loads;
  // plans are built on first use (~30-90 ms each, the first of a kind ~0.5 s) unless warm_up_cudnn() built
  // them. The environment overrides it: HIPSERVE_CUDNN=1 on, HIPSERVE_CUDNN=0 off.
  bool cudnn_prefill = false;
};

// Where the time of the last prefill / decode call went (CUDA events around each phase; only filled when
// profiling is on, since the events serialize the stream a little).
struct GpuProfile {
  double gemm_ms = 0, attn_ms = 0, hip_mask_ms = 0, other_ms = 0;
  int64_t steps = 0;
};

class GpuModel {
 public:
  // Uploads every weight of a loaded CPU model (bf16 on the device). Throws hs::Error on CUDA errors, e.g. when
  // the device memory does not suffice.
  static std::unique_ptr<GpuModel> upload(const Model& model, const GpuModelOptions& options);
  // Random bf16 weights generated on the device (uniform, scaled by 1/sqrt(fan-in); norms 1): for speed work
  // at real scale without a file. `config` from random_preset().
  static std::unique_ptr<GpuModel> random(const ModelConfig& config, uint64_t seed, const GpuModelOptions& options);
  ~GpuModel();

  const ModelConfig& config() const;
  const GpuModelOptions& options() const;
  int32_t n_past() const;
  // Forgets positions >= n (n <= n_past).
  void truncate(int32_t n);

  // Appends `tokens` (in chunks of max_batch_tokens). When `logits` is non-null, the last token's logits
  // (n_vocab floats) are copied there, or with all_logits every token's ([tokens.size()][n_vocab]).
  // on_chunk(done, total) after each chunk has finished on the GPU. Waits for the GPU.
  void prefill(std::span<const int32_t> tokens, float* logits, bool all_logits = false,
               const std::function<void(int64_t, int64_t)>& on_chunk = {});
  // Appends one token and returns the next one, sampled on the GPU: greedy (argmax, ties -> lowest id) when
  // temperature <= 0, else a draw from softmax(logits / temperature) (Gumbel-max, seeded by seed and position).
  // When logits is non-null, the step's logits are copied there too.
  int32_t decode(int32_t token, float temperature, uint64_t seed, float* logits);

  // Several sequences (options().n_seq; what GpuSlotBackend drives). One forward pass over the feeds (the slot
  // backend's own struct, a sequence being a slot): feed i appends its tokens to sequence feeds[i].slot (each
  // sequence at most once; rows in all <= max_batch_tokens);
  // several one-token feeds are a batched decode step (the GEMMs read each weight once for all rows), a longer
  // feed is a prefill chunk. The logits of each feed's last token go to its `logits` (n_vocab floats) when
  // non-null. Eager launches (no graphs); sampling is the caller's. Waits for the GPU.
  using SeqFeed = SlotBackend::Feed;
  void forward(std::span<const SeqFeed> feeds);
  int32_t n_past_of(int32_t seq) const;
  // Decode batches of up to this many one-token feeds give each sequence exactly the logits of its lone decode
  // steps: the batched GEMV keeps each token's summation order, the other kernels work per row or per sequence.
  int32_t bit_exact_batch_rows() const;
  void truncate(int32_t seq, int32_t n);  // forgets sequence seq's positions >= n (n <= n_past_of(seq))

  // With cudnn_prefill: builds cuDNN's plans for the prefill shapes this model will meet (first chunks of 64,
  // 128, ... rows up to the chunk size; full chunks after 2, 4, 8, ... chunks of cached keys up to n_ctx) by
  // running them once on the scratch buffers. Returns the number of plans run; 0 without cuDNN. Waits for the
  // GPU.
  int warm_up_cudnn();
  bool uses_cudnn() const;

  size_t weight_bytes() const;  // device bytes of the weights
  size_t kv_bytes() const;      // device bytes of the K/V cache
  void set_profiling(bool on);
  GpuProfile profile() const;   // summed since set_profiling(true)

  struct Impl;

 private:
  explicit GpuModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The Sequence interface (model/sequence.h) on a GpuModel: what `hipserve run`, `chat` and `eval ppl|passkey`
// use with --device cuda. Single tokens after the first go through GpuModel::decode (graphs, cached HiP
// masks); the rest through prefill. Sampling happens on the host from the copied logits (Session).
class GpuSequence final : public Sequence {
 public:
  explicit GpuSequence(std::unique_ptr<GpuModel> model);

  const ModelConfig& config() const override { return gm_->config(); }
  std::string backend_name() const override;
  int32_t n_ctx() const override { return gm_->options().n_ctx; }
  int32_t n_past() const override { return gm_->n_past(); }
  int32_t max_batch_tokens() const override { return gm_->options().max_batch_tokens; }
  void truncate(int32_t n) override { gm_->truncate(n); }
  void append(std::span<const int32_t> tokens, float* logits, bool all_logits = false,
              const std::function<void(int64_t, int64_t)>& on_chunk = {}) override;

  GpuModel& model() { return *gm_; }

 private:
  std::unique_ptr<GpuModel> gm_;
};

// The SlotBackend interface (model/slot_backend.h) on a GpuModel of n_seq sequences: what `hipserve serve` runs
// with --device cuda. Each slot owns a whole n_ctx K/V region on the device (allocated up front), so the
// memory unit is one slot. Decode rows of several slots run as one forward pass (the linear layers' weights read
// once for all rows, attention per slot); up to GpuModel::bit_exact_batch_rows() rows (4) give each slot the
// bits of its lone run.
class GpuSlotBackend final : public SlotBackend {
 public:
  explicit GpuSlotBackend(std::unique_ptr<GpuModel> model);

  const ModelConfig& config() const override { return gm_->config(); }
  std::string name() const override;
  int32_t n_slots() const override { return int32_t(open_.size()); }
  int32_t n_ctx() const override { return gm_->options().n_ctx; }
  int32_t kv_unit_tokens() const override { return n_ctx(); }
  int32_t kv_units_total() const override { return n_slots(); }
  int32_t kv_units_free() const override { return n_free_.load(); }
  int32_t kv_units_for(int64_t tokens) const override { return int32_t((tokens + n_ctx() - 1) / n_ctx()); }
  size_t kv_bytes() const override { return gm_->kv_bytes(); }
  void open(int32_t slot, int32_t reserve) override;
  void close(int32_t slot) override;
  int32_t n_past(int32_t slot) const override;
  void forward(std::span<const Feed> feeds) override;
  int32_t max_batch_tokens() const override { return gm_->options().max_batch_tokens; }
  int32_t bit_exact_decode_rows() const override { return gm_->bit_exact_batch_rows(); }

  GpuModel& model() { return *gm_; }

 private:
  std::unique_ptr<GpuModel> gm_;
  std::vector<uint8_t> open_;
  std::atomic<int32_t> n_free_{0};
};

}  // namespace hs::cuda
