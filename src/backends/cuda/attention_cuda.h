// Attention on a CUDA GPU: dense causal prefill (FlashAttention-2 style, mma.sync bf16 tensor cores), dense
// split-K decode, and HiP attention (mask estimation with all tree iterations in one kernel, block-sparse
// prefill and split-K decode over a cached mask). bf16 inputs and outputs, fp32 accumulation, head dims 64 and
// 128, GQA (query head h reads KV head h / (n_head / n_kv_head)).
//
// The CPU implementation in src/ops (attention.h, hip_attention.h) is the specification and the oracle; the
// tests beside this file compare every kernel with it. What differs from the CPU by design:
//  - K/V are bf16 here (fp16 on the CPU), Q and outputs bf16 (fp32 on the CPU);
//  - HiP tile scores run on tensor cores (bf16 products are exact in fp32, but the accumulation order and the
//    tensor cores' internal fp32 rounding differ from the CPU's FMA chain), so a candidate whose score is within
//    ~1e-6 relative of the K_b-th best may fall on the other side; the selection rule itself (score descending,
//    then lower start block) is the CPU's. The tests measure the block recall against the CPU estimator.
//  - The mask on the GPU is a fixed-stride block list: blocks[(h * n_qblocks + m) * K_b + i] for i < counts[h *
//    n_qblocks + m], ascending (HipMask's BSR with indptr[r] = r * K_b before compaction).
//
// Every function returns the first CUDA error it met (launch configuration or cudaGetLastError after each
// launch) and never synchronizes; all work goes to `stream`. Decode functions are CUDA-graph capturable.
//
// Variants: the alternative kernels and shapes that were compared on an H100 and lost are gone (numbers and
// reasons in docs/GPU.md, bench/gpu/results/). One remains selectable, as the reference the default is
// measured against: hip_attention_prefill's variant 3, the per-head kernel. The other functions take no
// variant.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

namespace hs::cuda {

// One sequence. Element (token i, head h, dim d) of Q at q[i * q_stride + h * head_dim + d]; K/V element (kv head
// g, position p, dim d) at k[g * kv_head_stride + p * kv_pos_stride + d]; out like q with out_stride. All bf16
// (raw bits in uint16_t), 16-byte aligned rows (strides multiples of 8 elements).
struct AttnParams {
  const uint16_t* q = nullptr;
  const uint16_t* k = nullptr;
  const uint16_t* v = nullptr;
  uint16_t* out = nullptr;
  int64_t q_stride = 0, kv_head_stride = 0, kv_pos_stride = 0, out_stride = 0;
  // Query i sits at position q_pos0 + i and sees keys [0, q_pos0 + i]; q_pos0 + n_q <= n_kv.
  int32_t n_q = 0, n_kv = 0, q_pos0 = 0;
  int32_t n_head = 0, n_kv_head = 0, head_dim = 0;  // head_dim 64 or 128
  float scale = 0.0f;                               // softmax scale, usually 1/sqrt(head_dim)
  // Positions whose K/V memory is allocated (>= n_kv; 0 means n_kv). Only the cuDNN path reads it: its plans
  // are built for key counts rounded up within this capacity, the keys past the real ones masked as padding
  // (but loaded: they must hold finite values, e.g. zeros, since 0 * NaN is NaN in P.V).
  int32_t kv_capacity = 0;
};

// HiP parameters, the same meaning as hs::HipConfig (src/ops/hip_attention.h). GPU limits: block_q 32 or 64 for
// prefill attention (warps of 16 rows), block_q / stride_q <= 16 sampled rows (one m16 tensor-core tile),
// k / block_k <= 1024 nodes.
struct HipParams {
  int32_t k = 512, block_q = 32, block_k = 2, stride_q = 2, stride_k = 1, n_sink = 16, window = 256,
          refresh = 8;
};

// A HiP mask on the device: counts[h * n_qblocks + m] blocks at blocks[(h * n_qblocks + m) * kb_stride ...].
struct HipMaskDev {
  int32_t* blocks = nullptr;  // [n_head][n_qblocks][kb_stride]
  int32_t* counts = nullptr;  // [n_head][n_qblocks]
  int32_t n_qblocks = 0, kb_stride = 0;  // kb_stride >= k / block_k
};

// Scratch for split-K decode: partial (o, m, l) states, and at its end one arrival counter per head that the
// kernels leave at 0. Size with decode_workspace_floats(); zero it once after allocating (cudaMemset).
struct DecodeWorkspace {
  float* partial = nullptr;
  int64_t n_floats = 0;
};
int64_t decode_workspace_floats(int32_t n_head, int32_t head_dim, int32_t max_splits);
inline constexpr int32_t kMaxDecodeSplits = 256;

// Dense causal attention for any n_q (prefill chunk at q_pos0).
cudaError_t attention_prefill_dense(const AttnParams& p, cudaStream_t stream);
// The same through cuDNN's fused attention (the cuDNN frontend's SDPA graph, libcudnn opened at run time).
// Plans are cached per shape; building one takes ~0.5-1 s, so a chunk after cached keys (q_pos0 > 0) runs a
// plan for a key count rounded up to a power of two (within kv_capacity), with the real counts passed as
// padding lengths and the causal diagonal aligned to the bottom right: a long prefill in equal chunks builds
// ~log2(chunks) plans. cudaErrorNotSupported when this build has no cuDNN headers, libcudnn cannot be
// loaded, HIPSERVE_CUDNN=0 is set, or cuDNN rejects the shape; the caller then runs attention_prefill_dense.
// Not CUDA-graph capturable (the first call of a shape builds its plan). One stream at a time: the workspace
// and the padding-length buffer are shared by all calls (the engine syncs its stream after each forward).
cudaError_t attention_prefill_dense_cudnn(const AttnParams& p, cudaStream_t stream);
// The rows of an n_q-row call that go through cuDNN: the largest power of two <= n_q (so that prompts of
// every length share a few plans); attention_prefill_dense_cudnn runs the rest (fewer than half) through our
// kernel.
inline int32_t cudnn_prefill_rows(int32_t n_q) {
  int32_t rows = 1;
  while (rows <= n_q / 2) rows *= 2;
  return rows;
}
bool cudnn_attention_available();
std::string cudnn_attention_status();  // "cuDNN 9.14.0 (frontend 1.32)", or why it is not available
// Dense decode: n_q == 1 (the query at position n_kv - 1 = q_pos0), split-K over the keys, one CTA per (KV
// group, split) so the G query heads of a group share every K/V read; partials merged by a second kernel.
cudaError_t attention_decode_dense(const AttnParams& p, const DecodeWorkspace& ws, cudaStream_t stream);

// HiP mask estimation for every (head, query block) of p (query block m = rows [m*block_q, ...) of the call; a
// call with n_q == 1 is a decode refresh and shrinks the window by refresh - 1, as the CPU does). Prefill: one
// CTA per (head, query block) runs all tree iterations. Decode (n_q == 1, or so few (head, query block) pairs
// that one CTA each would fill at most half the SMs): a cluster of 8 CTAs per (head, query block) that split
// each iteration's scoring (distributed shared memory). Either falls back to a one-CTA kernel with its state
// in shared memory when k / block_k is beyond its registers (prefill > 256, decode > 512) or block_k /
// stride_k is not 1, 2, 4 or 8 (attention_cuda.cu est_dispatch). mask.n_qblocks must be ceil(n_q / block_q).
cudaError_t hip_estimate_mask(const HipParams& cfg, const AttnParams& p, const HipMaskDev& mask,
                              cudaStream_t stream);
// HiP block-sparse prefill attention over mask's blocks U sink U window (CPU: hip_attention's attend_block).
// variant:
//   0 = default: at block_q 32 and head dim 128 the GQA-shared kernel (one CTA per 2 heads of a KV group and
//       query block: sink, window and blocks in both heads' masks loaded once; the per-head kernel where the
//       mask lists do not fit in shared memory, kb_stride > 3267); elsewhere (block_q 64, head dim 64)
//       the per-head kernel;
//   3 = the per-head kernel (one CTA per (head, query block)) for every shape: the reference the GQA-shared
//       default is measured against (its number in the earlier benchmark results);
//   anything else: cudaErrorInvalidValue (the numbers 1, 2, 4..13 of removed variants included).
cudaError_t hip_attention_prefill(const HipParams& cfg, const AttnParams& p, const HipMaskDev& mask,
                                  cudaStream_t stream, int variant = 0);
// HiP decode (n_q == 1) over a cached mask of one query block per head: split-K over sink, selected blocks
// and window, partials merged.
cudaError_t hip_attention_decode(const HipParams& cfg, const AttnParams& p, const HipMaskDev& mask,
                                 const DecodeWorkspace& ws, cudaStream_t stream);

// Shared-memory bytes the fallback estimation kernel (state in shared memory) needs for cfg.
int64_t hip_estimate_smem_bytes(const HipParams& cfg, int32_t head_dim);

}  // namespace hs::cuda
