// The llama/qwen2 forward pass on a CUDA GPU (see llama_cuda.h). Layout of one step of n rows at position
// pos0, as on the CPU (src/model/llama.cpp), with the shapes of the device buffers:
//   x    [n][E]  fp32   residual stream
//   xn   [n][E]  bf16   RMSNorm(x) * w, the GEMMs' input
//   qkv  [n][QD + 2 KVD] fp32 = xn W_qkv^T     (W_qkv: the q, k, v weight rows stacked, one GEMM)
//   q    [n][QD] bf16   RoPE(q); RoPE(k) and v go straight into the K/V cache [kv head][position][dim] bf16
//   att  [n][QD] bf16   attention (dense or HiP) of q over the cache
//   x   += att W_o^T    (cuBLAS with beta = 1: the residual add is the GEMM's epilogue)
//   gu   [n][2 FF] fp32 = RMSNorm(x) W_gu^T     (gate rows then up rows, one GEMM)
//   act  [n][FF] bf16   silu(gate) * up
//   x   += act W_down^T
// then RMSNorm of the last row, logits [V] fp32 = W_out xn, and the next token sampled on the GPU.
#include "backends/cuda/llama_cuda.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <type_traits>
#include <vector>

#include "backends/cpu/quants.h"
#include "backends/cuda/attention_cuda.h"
#include "backends/cuda/gemv.cuh"
#include "backends/cuda/llama_cuda_kernels.h"
#include "model/llama.h"
#include "ops/rope.h"
#include "util/common.h"

namespace hs::cuda {

namespace {

// The option, or HIPSERVE_CUDNN=1; only where libcudnn loads (HIPSERVE_CUDNN=0 keeps it from loading).
bool engine_uses_cudnn(bool option) {
  const char* env = std::getenv("HIPSERVE_CUDNN");
  return (option || (env && std::string(env) == "1")) && cudnn_attention_available();
}

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(strfmt("CUDA error in %s: %s", what, cudaGetErrorString(e)));
}
void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail(strfmt("cuBLAS error %d in %s", int(s), what));
}
#define HS_CUDA(call) check_cuda((call), #call)
#define HS_CUDA_LAUNCH(what) check_cuda(cudaGetLastError(), what)

// A device allocation (bytes), freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes) check_cuda(cudaMalloc(&p_, bytes), strfmt("cudaMalloc(%zu bytes)", bytes).c_str());
  }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

using bf16 = __nv_bfloat16;


// ---------------------------------------------------------------------------------------------------------------
// Kernels

// Block-wide sum of one float per thread (blockDim.x a multiple of 32, <= 1024).
__device__ float block_sum(float v) {
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  const int nw = blockDim.x >> 5;
  v = lane < nw ? part[lane] : 0.0f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __shared__ float total;
  if (threadIdx.x == 0) total = v;
  __syncthreads();
  const float r = total;
  __syncthreads();  // part/total reusable by the next call
  return r;
}

// x[i][e] = table[tokens[i]][e]. grid: n rows.
__global__ void embed_kernel(const int32_t* tokens, const bf16* table, int E, float* x) {
  const int64_t row = blockIdx.x;
  const bf16* src = table + int64_t(tokens[row]) * E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) x[row * E + e] = __bfloat162float(src[e]);
}

// y[r] = bf16(x[r] / sqrt(mean(x[r]^2) + eps) * w). grid: rows. Sum of squares in fp32 (the CPU sums in
// double; the difference is far below bf16's rounding of the output).
__global__ void rmsnorm_kernel(const float* x, int64_t ldx, const float* w, int E, float eps, bf16* y,
                               int64_t ldy) {
  pdl_wait();
  pdl_launch_dependents();
  const float* xr = x + blockIdx.x * ldx;
  float ss = 0.0f;
  for (int e = threadIdx.x; e < E; e += blockDim.x) ss += xr[e] * xr[e];
  const float inv = rsqrtf(block_sum(ss) / float(E) + eps);
  bf16* yr = y + blockIdx.x * ldy;
  for (int e = threadIdx.x; e < E; e += blockDim.x) yr[e] = __float2bfloat16(xr[e] * inv * w[e]);
}

struct RopeArgs {
  const float* qkv = nullptr;   // [n][ld]: q at column 0, k at QD, v at QD + KVD
  const float* bias = nullptr;  // [QD + 2 KVD] or null
  int64_t ld = 0;
  const float* inv_freq = nullptr;  // [n_rot / 2], computed on the host exactly like the CPU
  int32_t n_head = 0, n_head_kv = 0, head_dim = 0, n_rot = 0;
  bool neox = false;
  int32_t pos0 = 0;
  bf16* q = nullptr;  // [n][QD]
  bf16* k_cache = nullptr;
  bf16* v_cache = nullptr;  // element (g, p, d) at g * kv_head_stride + p * head_dim + d
  int64_t kv_head_stride = 0;
};

// RoPE of q and k (+ bias first, as on the CPU), k and v stored into the cache at pos0 + row. grid: (n rows,
// CTAs per row);
// every output element computed independently from the fp32 input, so no thread reads what another writes.
__global__ void rope_store_kernel(RopeArgs a) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  const int pos = a.pos0 + int(row);
  const int D = a.head_dim, half = a.n_rot / 2;
  const int QD = a.n_head * D, KVD = a.n_head_kv * D;
  const float* in = a.qkv + row * a.ld;
  auto val = [&](int col) { return in[col] + (a.bias ? a.bias[col] : 0.0f); };
  // grid.y CTAs share a row's columns (decode: one row, so more CTAs than one).
  for (int col = blockIdx.y * blockDim.x + threadIdx.x; col < QD + 2 * KVD; col += gridDim.y * blockDim.x) {
    if (col >= QD + KVD) {  // v
      const int c = col - QD - KVD, g = c / D, d = c % D;
      a.v_cache[g * a.kv_head_stride + int64_t(pos) * D + d] = __float2bfloat16(val(col));
      continue;
    }
    const int head_base = col < QD ? (col / D) * D : QD + ((col - QD) / D) * D;
    const int e = col - head_base;  // dim within the head
    float out;
    if (e >= a.n_rot) {
      out = val(col);
    } else {
      int i, partner;
      bool first;
      if (a.neox) {
        i = e % half;
        first = e < half;
        partner = first ? e + half : e - half;
      } else {
        i = e / 2;
        first = (e & 1) == 0;
        partner = e ^ 1;
      }
      float s, c;
      sincosf(float(pos) * a.inv_freq[i], &s, &c);
      const float x = val(col), y = val(head_base + partner);
      out = first ? x * c - y * s : y * s + x * c;
    }
    if (col < QD) {
      a.q[row * QD + col] = __float2bfloat16(out);
    } else {
      const int c = col - QD, g = c / D, d = c % D;
      a.k_cache[g * a.kv_head_stride + int64_t(pos) * D + d] = __float2bfloat16(out);
    }
  }
}

// act[r][f] = bf16(silu(g) * u), g = gu[r][f], u = gu[r][FF + f].
__global__ void swiglu_kernel(const float* gu, int64_t n_rows, int FF, bf16* act) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t total = n_rows * FF;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / FF, f = i % FF;
    const float g = gu[r * 2 * FF + f], u = gu[r * 2 * FF + FF + f];
    act[i] = __float2bfloat16(g * u / (1.0f + __expf(-g)));
  }
}

__device__ uint64_t mix64(uint64_t z) {  // splitmix64 finalizer
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// One block: the index of the largest logits[i] / temperature + Gumbel noise (temperature > 0) or of the
// largest logit (greedy); ties go to the lowest index. Writes out[0].
__global__ void sample_kernel(const float* logits, int V, float temperature, uint64_t seed, int32_t* out) {
  pdl_wait();
  pdl_launch_dependents();
  float best = -INFINITY;
  int best_i = 0x7fffffff;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    float s = logits[i];
    if (temperature > 0.0f) {
      const uint64_t h = mix64(seed ^ mix64(uint64_t(i)));
      const float u = (float(h >> 40) + 0.5f) * (1.0f / 16777216.0f);  // (0, 1)
      s = s / temperature - logf(-logf(u));
    }
    if (s > best || (s == best && i < best_i)) best = s, best_i = i;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ob > best || (ob == best && oi < best_i)) best = ob, best_i = oi;
  }
  __shared__ float wb[32];
  __shared__ int wi[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) wb[warp] = best, wi[warp] = best_i;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < int(blockDim.x >> 5); ++w)
      if (wb[w] > best || (wb[w] == best && wi[w] < best_i)) best = wb[w], best_i = wi[w];
    out[0] = best_i == 0x7fffffff ? 0 : best_i;
  }
}

// Uniform random bf16 in [-scale, scale), from (seed, index) only.
__global__ void init_uniform_kernel(bf16* w, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t h = mix64(seed ^ mix64(uint64_t(i)));
    const float u = float(h >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    w[i] = __float2bfloat16((2.0f * u - 1.0f) * scale);
  }
}

__global__ void fill_kernel(float* p, int64_t n, float v) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) p[i] = v;
}

// Most tokens the batched GEMV takes; more rows go to cuBLAS. H100, random 8B weights, HiP, batched decode
// tok/s (this kernel / cuBLAS, same run): 2 rows 295.6 / 284.5, 4 rows 502.4 / 504.0, 8 rows 702.6 / 835.6
// (at 32K: 4 rows 391.4 / 406.1, 8 rows 498.4 / 585.1); its x through L2 only: 4 rows 476.8, 8 rows 674.9.
// Converting each weight / x vector to fp32 once instead of per (row, token) pair changed nothing (4 rows 499.9,
// 8 rows 653.7 against cuBLAS 818.0 in one run, with the kernel then instantiated up to 8 rows).
// HIPSERVE_CUDA_GEMV_TOKENS=N (1..4) lowers the switch.
constexpr int kGemvMaxTokens = 4;
int grid_for(int64_t n, int threads) { return int(std::min<int64_t>((n + threads - 1) / threads, 65535)); }

// launch_kernel (gemv.cuh), failing with a message on a launch error.
template <class... KArgs, class... Args>
void launch(bool pdl, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            Args&&... args) {
  check_cuda(launch_kernel(pdl, kernel, grid, block, smem, stream, std::forward<Args>(args)...),
             "cudaLaunchKernelEx");
}

// ---------------------------------------------------------------------------------------------------------------
// Weights

struct LayerDev {
  DeviceBuffer w_qkv, b_qkv, w_o, w_gu, w_down, attn_norm, ffn_norm;
};

// Uploads rows [0, rows) of a GGUF matrix, dequantized exactly and rounded to bf16, into dst at row offset
// row0 (dst is [.. rows][cols] bf16).
void upload_matrix(const cpu::MatmulWeight& w, bf16* dst, int64_t row0, std::vector<float>& tmp,
                   std::vector<uint16_t>& staging) {
  const int64_t cols = w.cols;
  const int64_t rows_per_chunk = std::max<int64_t>(1, (int64_t(16) << 20) / std::max<int64_t>(cols, 1));
  tmp.resize(size_t(cols));
  for (int64_t r0 = 0; r0 < w.rows; r0 += rows_per_chunk) {
    const int64_t nr = std::min(rows_per_chunk, w.rows - r0);
    staging.resize(size_t(nr * cols));
    for (int64_t r = 0; r < nr; ++r) {
      cpu::dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + size_t(r0 + r) * w.row_bytes, tmp.data(),
                          cols);
      for (int64_t c = 0; c < cols; ++c) staging[size_t(r * cols + c)] = fp32_to_bf16(tmp[size_t(c)]);
    }
    HS_CUDA(cudaMemcpy(dst + (row0 + r0) * cols, staging.data(), staging.size() * 2, cudaMemcpyHostToDevice));
  }
}

DeviceBuffer upload_floats(const float* p, int64_t n) {
  DeviceBuffer b(size_t(n) * 4);
  HS_CUDA(cudaMemcpy(b.as<float>(), p, size_t(n) * 4, cudaMemcpyHostToDevice));
  return b;
}

// Events around the phases of a step (profiling only).
enum Phase { kGemm, kAttn, kMask, kOther, kPhases };

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

struct GpuModel::Impl {
  ModelConfig cfg;
  GpuModelOptions opt;
  HipParams hip;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  DeviceBuffer blas_workspace;

  std::vector<LayerDev> layers;
  DeviceBuffer tok_embd, output, output_norm, inv_freq;
  const bf16* output_w = nullptr;  // output or tok_embd (tied)
  size_t weight_bytes = 0;

  // One sequence's state (opt.n_seq of them; the single-sequence API uses sequence 0).
  struct SeqState {
    std::vector<DeviceBuffer> k_cache, v_cache;  // per layer [n_head_kv][n_ctx][head_dim] bf16
    std::vector<DeviceBuffer> mask_blocks;       // per layer: decode masks [n_head][1][K_b], counts [n_head]
    std::vector<DeviceBuffer> mask_counts;
    int32_t n_past = 0;
    int32_t hip_refresh_pos = -1;  // position of the last decode mask refresh (-1: none valid)
  };
  std::vector<SeqState> seqs;
  DeviceBuffer pf_mask_blocks, pf_mask_counts;  // prefill chunk masks [n_head][ceil(B / b_q)][K_b]
  DeviceBuffer decode_ws;

  // Scratch for B = max_batch_tokens rows.
  DeviceBuffer tokens, x, xn, qkv, q, att, gu, act, logits, next_token;
  DeviceBuffer logits_rows;  // [kHeadRows][n_vocab], allocated on the first all-logits prefill
  int32_t* h_token = nullptr;  // pinned: [0] input token, [1] sampled token
  float* h_logits = nullptr;   // pinned [V]

  // Decode graphs, keyed by the step's shape (refresh or not, HiP on or dense, logits copied) and parity.
  std::map<int, cudaGraphExec_t> graphs;
  cudaStream_t capture_stream = nullptr;

  bool use_gemv = getenv("HIPSERVE_CUDA_NO_GEMV") == nullptr;  // decode GEMVs (env: cuBLAS instead, to compare)
  // The batched GEMV reads the tokens' activations through L2 only, as the single-token one (env, to compare).
  bool tokens_x_l2 = getenv("HIPSERVE_CUDA_TOKENS_X_L2") != nullptr;
  // Most rows the batched GEMV takes (env HIPSERVE_CUDA_GEMV_TOKENS=N, 1..4: fewer, to compare with cuBLAS).
  int gemv_max_tokens = [] {
    const char* e = getenv("HIPSERVE_CUDA_GEMV_TOKENS");
    const int n = e ? std::atoi(e) : kGemvMaxTokens;
    return n >= 1 && n <= kGemvMaxTokens ? n : kGemvMaxTokens;
  }();
  // Dense prefill attention (the dense layers, and HiP layers whose keys all lie in sink + window) through
  // cuDNN's fused attention for chunks of at least kCudnnMinRows rows when asked (opt.cudnn_prefill or
  // HIPSERVE_CUDNN) and libcudnn loads; our kernel where cuDNN declines a shape. Not the default for one-shot
  // commands: each new plan costs ~30-90 ms to build and the first of a kind ~0.5 s (docs/GPU.md), more than
  // the 3 dense layers of a single long prompt save; `serve` turns it on and warms the plans up at start.
  static constexpr int32_t kCudnnMinRows = 64;
  bool use_cudnn = false;  // from opt, in the constructor
  void dense_prefill(const AttnParams& p) {
    if (use_cudnn && p.n_q >= kCudnnMinRows) {
      cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(stream, &cs) == cudaSuccess && cs == cudaStreamCaptureStatusNone) {
        const cudaError_t e = attention_prefill_dense_cudnn(p, stream);
        if (e != cudaErrorNotSupported) return check_cuda(e, "attention_prefill_dense_cudnn");
      }
    }
    check_cuda(attention_prefill_dense(p, stream), "attention_prefill_dense");
  }
  // Programmatic dependent launch of our small kernels and GEMVs (env HIPSERVE_CUDA_NO_PDL=1: plain launches).
  bool use_pdl = getenv("HIPSERVE_CUDA_NO_PDL") == nullptr;
  // Decode's one-row RMSNorm and RoPE on more threads / CTAs (1024 threads; 8 CTAs per row): a single 256-thread
  // CTA per kernel left them latency-bound at several µs each (env HIPSERVE_CUDA_NARROW_SMALL=1: the old shape).
  bool wide_small = getenv("HIPSERVE_CUDA_NARROW_SMALL") == nullptr;
  // Rows of a decode step (one sequence, or a batch of up to kGemvMaxTokens) all take the wide shape, so a
  // batched step normalizes each row exactly as a lone step does.
  int norm_threads(int32_t n) const { return n <= gemv_max_tokens && wide_small ? 1024 : 256; }
  int gemv_shape = [] {  // HIPSERVE_CUDA_GEMV=R,U -> 10 R + U (measurements only)
    const char* e = getenv("HIPSERVE_CUDA_GEMV");
    int r = 0, u = 0;
    return e && std::sscanf(e, "%d,%d", &r, &u) == 2 ? 10 * r + u : 0;
  }();
  bool profiling = false;
  GpuProfile prof;
  std::vector<std::pair<int, std::pair<cudaEvent_t, cudaEvent_t>>> marks;  // phase, (start, end)
  std::vector<cudaEvent_t> event_pool;
  size_t events_used = 0;

  ~Impl() {
    for (auto& [k, g] : graphs)
      if (g) cudaGraphExecDestroy(g);
    for (cudaEvent_t e : event_pool) cudaEventDestroy(e);
    if (h_token) cudaFreeHost(h_token);
    if (h_logits) cudaFreeHost(h_logits);
    if (blas) cublasDestroy(blas);
    if (capture_stream) cudaStreamDestroy(capture_stream);
    if (stream) cudaStreamDestroy(stream);
  }

  int32_t E() const { return cfg.n_embd; }
  int32_t QD() const { return cfg.q_dim(); }
  int32_t KVD() const { return cfg.kv_dim(); }
  int32_t FF() const { return cfg.n_ff; }
  int32_t QKV() const { return QD() + 2 * KVD(); }
  int32_t Kb() const { return opt.attn.hip.k / opt.attn.hip.block_k; }

  void init_common() {
    HS_CHECK(cfg.head_dim == 64 || cfg.head_dim == 128, "CUDA backend: head_dim %d (supported: 64, 128)",
             cfg.head_dim);
    HS_CHECK(opt.n_ctx >= 1 && opt.max_batch_tokens >= 1 && opt.n_seq >= 1 && opt.n_seq <= opt.max_batch_tokens,
             "CUDA backend: bad n_ctx / max_batch_tokens / n_seq (%d / %d / %d)", opt.n_ctx, opt.max_batch_tokens,
             opt.n_seq);
    const std::string why = opt.attn.validate();
    HS_CHECK(why.empty(), "invalid attention config: %s", why.c_str());
    const HipConfig& h = opt.attn.hip;
    hip = HipParams{h.k, h.block_q, h.block_k, h.stride_q, h.stride_k, h.n_sink, h.window, h.refresh};
    use_cudnn = engine_uses_cudnn(opt.cudnn_prefill);
    if (opt.attn.kind == AttentionKind::Hip)
      HS_CHECK(h.block_q == 32 && h.block_q / h.stride_q <= 16 && Kb() <= 1024,
               "CUDA HiP needs block_q 32, block_q / stride_q <= 16 and k / block_k <= 1024");
    HS_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    check_blas(cublasCreate(&blas), "cublasCreate");
    check_blas(cublasSetStream(blas, stream), "cublasSetStream");
    blas_workspace = DeviceBuffer(size_t(32) << 20);  // a fixed workspace: cuBLAS then never allocates (graphs)
    check_blas(cublasSetWorkspace(blas, blas_workspace.as<void>(), blas_workspace.bytes()), "cublasSetWorkspace");

    const int64_t B = opt.max_batch_tokens, V = cfg.n_vocab;
    tokens = DeviceBuffer(size_t(B) * 4);
    x = DeviceBuffer(size_t(B) * E() * 4);
    xn = DeviceBuffer(size_t(B) * E() * 2);
    qkv = DeviceBuffer(size_t(B) * QKV() * 4);
    q = DeviceBuffer(size_t(B) * QD() * 2);
    att = DeviceBuffer(size_t(B) * QD() * 2);
    gu = DeviceBuffer(size_t(B) * 2 * FF() * 4);
    act = DeviceBuffer(size_t(B) * FF() * 2);
    logits = DeviceBuffer(size_t(V) * 4);
    next_token = DeviceBuffer(4);
    HS_CUDA(cudaMallocHost(&h_token, 8));
    HS_CUDA(cudaMallocHost(&h_logits, size_t(V) * 4));

    const int64_t kv_elems = int64_t(cfg.n_head_kv) * opt.n_ctx * cfg.head_dim;
    {  // Everything is allocated up front: say plainly when it cannot fit, before a CUDA out-of-memory error.
      const double kv = 4.0 * double(kv_elems) * cfg.n_layer * opt.n_seq;  // K and V, bf16
      const double wts = 2.0 * (double(cfg.n_vocab) * E() * (cfg.tied_embeddings ? 1 : 2) +
                                double(cfg.n_layer) * (double(QKV()) * E() + double(E()) * QD() + 3.0 * FF() * E()));
      size_t free_b = 0, total_b = 0;
      if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
        HS_CHECK(kv + wts < 0.97 * double(free_b),
                 "the GPU has %.1f GiB free, but the weights (%.1f GiB bf16) and the K/V cache of %d sequence(s) x %d "
                 "positions (%.1f GiB) need more: lower -c (context) or, for serve, -np (slots)",
                 double(free_b) / (1 << 30), wts / (1 << 30), opt.n_seq, opt.n_ctx, kv / (1 << 30));
    }
    seqs.resize(size_t(opt.n_seq));
    for (SeqState& sq : seqs)
      for (int il = 0; il < cfg.n_layer; ++il) {
        sq.k_cache.emplace_back(size_t(kv_elems) * 2);
        sq.v_cache.emplace_back(size_t(kv_elems) * 2);
        // Zeros, not whatever the allocation held: cuDNN's padded plans load (masked) positions past the
        // sequence, and a masked NaN would still poison P.V (0 * NaN).
        HS_CUDA(cudaMemset(sq.k_cache.back().as<void>(), 0, sq.k_cache.back().bytes()));
        HS_CUDA(cudaMemset(sq.v_cache.back().as<void>(), 0, sq.v_cache.back().bytes()));
        if (opt.attn.layer_uses_hip(il)) {
          sq.mask_blocks.emplace_back(size_t(cfg.n_head) * Kb() * 4);
          sq.mask_counts.emplace_back(size_t(cfg.n_head) * 4);
        } else {
          sq.mask_blocks.emplace_back();
          sq.mask_counts.emplace_back();
        }
      }
    if (opt.attn.kind == AttentionKind::Hip) {
      const int64_t nqb = (B + hip.block_q - 1) / hip.block_q;
      pf_mask_blocks = DeviceBuffer(size_t(cfg.n_head) * nqb * Kb() * 4);
      pf_mask_counts = DeviceBuffer(size_t(cfg.n_head) * nqb * 4);
    }
    decode_ws = DeviceBuffer(size_t(decode_workspace_floats(cfg.n_head, cfg.head_dim, kMaxDecodeSplits)) * 4);
    // The decode kernels' arrival counters live at its end and must start at 0 (the kernels leave them at 0).
    HS_CUDA(cudaMemset(decode_ws.as<void>(), 0, decode_ws.bytes()));
    std::vector<float> f = rope_inv_freq(cfg.rope);  // the CPU's values (ops/rope.h)
    if (f.empty()) f.push_back(0.0f);                 // n_rot 0: nothing rotates, but keep a valid pointer
    inv_freq = upload_floats(f.data(), int64_t(f.size()));
  }

  // ---- profiling marks ----
  cudaEvent_t event() {
    if (events_used == event_pool.size()) {
      cudaEvent_t e;
      HS_CUDA(cudaEventCreate(&e));
      event_pool.push_back(e);
    }
    return event_pool[events_used++];
  }
  template <class Fn>
  void phase(int which, const Fn& fn) {
    if (!profiling) {
      fn();
      return;
    }
    cudaEvent_t a = event(), b = event();
    HS_CUDA(cudaEventRecord(a, stream));
    fn();
    HS_CUDA(cudaEventRecord(b, stream));
    marks.push_back({which, {a, b}});
  }
  void collect_profile() {
    if (!profiling) return;
    HS_CUDA(cudaStreamSynchronize(stream));
    for (auto& [which, ev] : marks) {
      float ms = 0;
      HS_CUDA(cudaEventElapsedTime(&ms, ev.first, ev.second));
      (which == kGemm ? prof.gemm_ms : which == kAttn ? prof.attn_ms : which == kMask ? prof.hip_mask_ms : prof.other_ms) += ms;
    }
    marks.clear();
    events_used = 0;
    ++prof.steps;
  }

  // y[n][out] (fp32, ld out) = x[n][in] (bf16) W[out][in]^T (+ y when accumulate).
  void gemm(const bf16* w, int64_t out, int64_t in, const bf16* xin, int64_t n, float* y, bool accumulate) {
    if (n == 1 && in % 8 == 0 && use_gemv) {
      auto go = [&](auto kernel, int r) {
        const int64_t rows_per_block = int64_t(kGemvWarps) * r;
        launch(use_pdl, kernel, dim3(unsigned((out + rows_per_block - 1) / rows_per_block)), dim3(kGemvWarps * 32), 0,
               stream, w, out, int(in), xin, y, accumulate);
      };
      switch (gemv_shape) {
        case 24: go(gemv_bf16_kernel_t<2, 4>, 2); break;
        case 28: go(gemv_bf16_kernel_t<2, 8>, 2); break;
        case 18: go(gemv_bf16_kernel_t<1, 8>, 1); break;
        case 42: go(gemv_bf16_kernel_t<4, 2>, 4); break;
        default: go(gemv_bf16_kernel, kGemvRowsPerWarp); break;
      }
      return;
    }
    if (n > 1 && n <= gemv_max_tokens && in % 8 == 0 && use_gemv) {  // a batched decode step: one weight read
      constexpr int R = 4;
      auto go = [&](auto kernel) {
        launch(use_pdl, kernel, dim3(unsigned((out + kGemvWarps * R - 1) / (kGemvWarps * R))), dim3(kGemvWarps * 32),
               0, stream, w, out, int(in), xin, y, accumulate);
      };
      auto go_t = [&](auto t) {
        constexpr int T = decltype(t)::value;
        if (tokens_x_l2) go(gemv_bf16_tokens_kernel<R, 2, T, false>);
        else go(gemv_bf16_tokens_kernel<R, 2, T, true>);
      };
      static_assert(kGemvMaxTokens == 4);
      switch (n) {
        case 2: go_t(std::integral_constant<int, 2>()); break;
        case 3: go_t(std::integral_constant<int, 3>()); break;
        default: go_t(std::integral_constant<int, 4>()); break;
      }
      return;
    }
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    // Column-major view: Y^T (out x n) = W (row-major [out][in] = col-major in x out, transposed) * X^T.
    check_blas(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(out), int(n), int(in), &alpha, w, CUDA_R_16BF,
                            int(in), xin, CUDA_R_16BF, int(in), &beta, y, CUDA_R_32F, int(out),
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
  }

  // Rows [row0, row0 + n) of the activations, at positions [pos0, pos0 + n) of one sequence: a prefill chunk,
  // or one row of a (batched) decode step.
  struct Segment {
    int32_t seq = 0;
    int32_t row0 = 0, n = 0;
    int32_t pos0 = 0;
    bool estimate = true;  // decode (n == 1): refresh the sequence's cached HiP masks
  };

  AttnParams attn_params(int il, const Segment& sg) {
    const int32_t n = sg.n, pos0 = sg.pos0;
    SeqState& sq = seqs[size_t(sg.seq)];
    AttnParams p;
    p.q = reinterpret_cast<const uint16_t*>(q.as<bf16>() + int64_t(sg.row0) * QD());
    p.k = sq.k_cache[il].as<uint16_t>();
    p.v = sq.v_cache[il].as<uint16_t>();
    p.out = reinterpret_cast<uint16_t*>(att.as<bf16>() + int64_t(sg.row0) * QD());
    p.q_stride = QD();
    p.out_stride = QD();
    p.kv_head_stride = int64_t(opt.n_ctx) * cfg.head_dim;
    p.kv_pos_stride = cfg.head_dim;
    p.n_q = n;
    p.n_kv = pos0 + n;
    p.kv_capacity = opt.n_ctx;
    p.q_pos0 = pos0;
    p.n_head = cfg.n_head;
    p.n_kv_head = cfg.n_head_kv;
    p.head_dim = cfg.head_dim;
    p.scale = 1.0f / std::sqrt(float(cfg.head_dim));
    return p;
  }

  // Runs cuDNN's plans for the prefill shapes (GpuModel::warm_up_cudnn) on the scratch buffers and sequence
  // 0's layer-0 K/V (the results are garbage and overwritten by the next forward). Returns the shapes run.
  int warm_up_cudnn() {
    if (!use_cudnn) return 0;
    const int32_t top = cudnn_prefill_rows(opt.max_batch_tokens);  // the rows a full chunk sends to cuDNN
    if (top < kCudnnMinRows) return 0;
    const AttnParams base = attn_params(0, Segment{});
    int shapes = 0;
    auto run = [&](int32_t n_q, int32_t q_pos0) {
      AttnParams p = base;
      p.n_q = n_q;
      p.q_pos0 = q_pos0;
      p.n_kv = q_pos0 + n_q;
      if (p.n_kv > opt.n_ctx) return;
      const cudaError_t e = attention_prefill_dense_cudnn(p, stream);
      if (e == cudaErrorNotSupported) return;
      check_cuda(e, "attention_prefill_dense_cudnn (warm-up)");
      ++shapes;
    };
    for (int32_t n = kCudnnMinRows; n <= top; n *= 2) run(n, 0);  // first chunks of any prompt length
    // Full chunks after cached keys: their plans cover key counts up to each power of two (and n_ctx).
    for (int64_t s_kv = 2 * int64_t(top); s_kv < 2 * int64_t(opt.n_ctx); s_kv *= 2)
      run(top, int32_t(std::min<int64_t>(s_kv, opt.n_ctx)) - top);
    HS_CUDA(cudaStreamSynchronize(stream));
    return shapes;
  }

  // Enqueues the layers for one sequence's rows tokens[0, n) (already in `tokens`) at positions [pos0, pos0 + n).
  // For a decode step (n == 1), `estimate` says whether the HiP layers refresh their cached masks.
  void enqueue_layers(int32_t n, int32_t pos0, bool estimate) {
    const Segment sg{0, 0, n, pos0, estimate};
    enqueue_layers(std::span<const Segment>(&sg, 1));
  }
  // The layers over segments of rows (ascending, contiguous from row 0): the norms, GEMMs and SwiGLU run once
  // over all rows; RoPE + K/V store and attention per segment, on its sequence's cache.
  void enqueue_layers(std::span<const Segment> segs) {
    const int32_t n = segs.back().row0 + segs.back().n;
    const int E_ = E(), QD_ = QD(), FF_ = FF();
    const int threads = 256;
    phase(kOther, [&] {
      embed_kernel<<<n, threads, 0, stream>>>(tokens.as<int32_t>(), tok_embd.as<bf16>(), E_, x.as<float>());
      HS_CUDA_LAUNCH("embed_kernel");
    });
    for (int il = 0; il < cfg.n_layer; ++il) {
      LayerDev& L = layers[size_t(il)];
      phase(kOther, [&] {
        launch(use_pdl, rmsnorm_kernel, dim3(n), dim3(norm_threads(n)), 0, stream, (const float*)x.as<float>(),
               int64_t(E_), (const float*)L.attn_norm.as<float>(), E_, cfg.norm_eps, xn.as<bf16>(), int64_t(E_));
      });
      phase(kGemm, [&] { gemm(L.w_qkv.as<bf16>(), QKV(), E_, xn.as<bf16>(), n, qkv.as<float>(), false); });
      for (const Segment& sg : segs) {
        SeqState& sq = seqs[size_t(sg.seq)];
        phase(kOther, [&] {
          RopeArgs a;
          a.qkv = qkv.as<float>() + int64_t(sg.row0) * QKV();
          a.bias = L.b_qkv.bytes() ? L.b_qkv.as<float>() : nullptr;
          a.ld = QKV();
          a.inv_freq = inv_freq.as<float>();
          a.n_head = cfg.n_head;
          a.n_head_kv = cfg.n_head_kv;
          a.head_dim = cfg.head_dim;
          a.n_rot = cfg.rope.n_rot;
          a.neox = cfg.rope.type == RopeType::NeoX;
          a.pos0 = sg.pos0;
          a.q = q.as<bf16>() + int64_t(sg.row0) * QD_;
          a.k_cache = sq.k_cache[size_t(il)].as<bf16>();
          a.v_cache = sq.v_cache[size_t(il)].as<bf16>();
          a.kv_head_stride = int64_t(opt.n_ctx) * cfg.head_dim;
          launch(use_pdl, rope_store_kernel, dim3(sg.n, sg.n == 1 && wide_small ? 8 : 1), dim3(threads), 0, stream, a);
        });
      }
      for (const Segment& sg : segs) {
        SeqState& sq = seqs[size_t(sg.seq)];
        const AttnParams p = attn_params(il, sg);
        const bool hip_dense = sg.pos0 + sg.n <= hip.n_sink + hip.window;  // sink + window cover every key
        if (opt.attn.layer_uses_hip(il) && !hip_dense) {
          if (sg.n == 1) {
            HipMaskDev m{sq.mask_blocks[size_t(il)].as<int32_t>(), sq.mask_counts[size_t(il)].as<int32_t>(), 1, Kb()};
            if (sg.estimate)
              phase(kMask, [&] { check_cuda(hip_estimate_mask(hip, p, m, stream), "hip_estimate_mask"); });
            phase(kAttn, [&] {
              DecodeWorkspace ws{decode_ws.as<float>(), int64_t(decode_ws.bytes() / 4)};
              check_cuda(hip_attention_decode(hip, p, m, ws, stream), "hip_attention_decode");
            });
          } else {
            HipMaskDev m{pf_mask_blocks.as<int32_t>(), pf_mask_counts.as<int32_t>(),
                         (sg.n + hip.block_q - 1) / hip.block_q, Kb()};
            phase(kMask, [&] { check_cuda(hip_estimate_mask(hip, p, m, stream), "hip_estimate_mask"); });
            phase(kAttn, [&] { check_cuda(hip_attention_prefill(hip, p, m, stream), "hip_attention_prefill"); });
          }
        } else {
          phase(kAttn, [&] {
            if (sg.n == 1) {
              DecodeWorkspace ws{decode_ws.as<float>(), int64_t(decode_ws.bytes() / 4)};
              check_cuda(attention_decode_dense(p, ws, stream), "attention_decode_dense");
            } else {
              dense_prefill(p);
            }
          });
        }
      }
      phase(kGemm, [&] { gemm(L.w_o.as<bf16>(), E_, QD_, att.as<bf16>(), n, x.as<float>(), true); });
      phase(kOther, [&] {
        launch(use_pdl, rmsnorm_kernel, dim3(n), dim3(norm_threads(n)), 0, stream, (const float*)x.as<float>(),
               int64_t(E_), (const float*)L.ffn_norm.as<float>(), E_, cfg.norm_eps, xn.as<bf16>(), int64_t(E_));
      });
      phase(kGemm, [&] { gemm(L.w_gu.as<bf16>(), 2 * FF_, E_, xn.as<bf16>(), n, gu.as<float>(), false); });
      phase(kOther, [&] {
        launch(use_pdl, swiglu_kernel, dim3(grid_for(int64_t(n) * FF_, threads)), dim3(threads), 0, stream,
               (const float*)gu.as<float>(), int64_t(n), FF_, act.as<bf16>());
      });
      phase(kGemm, [&] { gemm(L.w_down.as<bf16>(), E_, FF_, act.as<bf16>(), n, x.as<float>(), true); });
    }
  }

  // Final norm of row `row`, logits, and the sampled token into next_token.
  void enqueue_head(int32_t row, float temperature, uint64_t seed) {
    enqueue_logits(&row, 1, logits.as<float>());
    phase(kOther, [&] {
      launch(use_pdl, sample_kernel, dim3(1), dim3(1024), 0, stream, (const float*)logits.as<float>(), cfg.n_vocab,
             temperature, seed, next_token.as<int32_t>());
    });
  }

  // The final norm of activation rows rows[0, m) into xn rows [0, m), each row normalized as a lone decode row
  // is (so a batch's logits equal its lone runs'), then the output GEMM into dst ([m][n_vocab]).
  void enqueue_logits(const int32_t* rows, int32_t m, float* dst) {
    const int E_ = E();
    phase(kOther, [&] {
      for (int32_t i = 0; i < m; ++i)
        launch(use_pdl, rmsnorm_kernel, dim3(1), dim3(norm_threads(1)), 0, stream,
               (const float*)(x.as<float>() + int64_t(rows[i]) * E_), int64_t(E_),
               (const float*)output_norm.as<float>(), E_, cfg.norm_eps, xn.as<bf16>() + int64_t(i) * E_, int64_t(E_));
    });
    phase(kGemm, [&] { gemm(output_w, cfg.n_vocab, E_, xn.as<bf16>(), m, dst, false); });
  }

  void check_tokens(std::span<const int32_t> toks) const {
    for (int32_t t : toks)
      HS_CHECK(t >= 0 && t < cfg.n_vocab, "token id %d is out of range [0, %d)", t, cfg.n_vocab);
  }

  // Logits of rows [0, n) of the chunk just run (x holds their residual stream) into host `out` ([n][n_vocab]),
  // through copy_row_logits (kHeadRows rows at a time).
  static constexpr int32_t kHeadRows = 64;
  void copy_all_logits(int32_t n, float* out) {
    std::vector<int32_t> rows(static_cast<size_t>(n));
    std::vector<float*> outs(static_cast<size_t>(n));
    for (int32_t r = 0; r < n; ++r) {
      rows[size_t(r)] = r;
      outs[size_t(r)] = out + int64_t(r) * cfg.n_vocab;
    }
    copy_row_logits(rows, outs);
  }

  void prefill(std::span<const int32_t> toks, float* out_logits, bool all_logits,
               const std::function<void(int64_t, int64_t)>& on_chunk) {
    HS_CHECK(!toks.empty(), "empty prompt");
    check_tokens(toks);
    int32_t& n_past = seqs[0].n_past;
    HS_CHECK(int64_t(n_past) + int64_t(toks.size()) <= opt.n_ctx,
             "context overflow: %lld positions needed but the context size is %d (raise -c)",
             (long long)(n_past + int64_t(toks.size())), opt.n_ctx);
    seqs[0].hip_refresh_pos = -1;  // as on the CPU: a prefill invalidates the cached decode masks
    for (size_t done = 0; done < toks.size();) {
      const int32_t n = int32_t(std::min<size_t>(size_t(opt.max_batch_tokens), toks.size() - done));
      HS_CUDA(cudaMemcpyAsync(tokens.as<int32_t>(), toks.data() + done, size_t(n) * 4, cudaMemcpyHostToDevice,
                              stream));
      enqueue_layers(n, n_past, true);
      if (out_logits && all_logits) copy_all_logits(n, out_logits + int64_t(done) * cfg.n_vocab);
      done += size_t(n);
      n_past += n;
      if (done == toks.size() && out_logits && !all_logits) {
        enqueue_head(n - 1, 0.0f, 0);
        HS_CUDA(cudaMemcpyAsync(h_logits, logits.as<float>(), size_t(cfg.n_vocab) * 4, cudaMemcpyDeviceToHost,
                                stream));
      }
      collect_profile();
      if (on_chunk) {
        HS_CUDA(cudaStreamSynchronize(stream));
        on_chunk(int64_t(done), int64_t(toks.size()));
      }
    }
    HS_CUDA(cudaStreamSynchronize(stream));
    if (out_logits && !all_logits) std::memcpy(out_logits, h_logits, size_t(cfg.n_vocab) * 4);
  }

  // Logits of the given activation rows into the host buffers outs[i] (n_vocab floats each), kHeadRows rows at
  // a time: each row's final norm into xn row i, one output GEMM, copies back.
  void copy_row_logits(const std::vector<int32_t>& rows, const std::vector<float*>& outs) {
    const int64_t V = cfg.n_vocab;
    if (!logits_rows.bytes()) logits_rows = DeviceBuffer(size_t(kHeadRows) * size_t(V) * 4);
    for (size_t r0 = 0; r0 < rows.size(); r0 += kHeadRows) {
      const int32_t m = int32_t(std::min<size_t>(kHeadRows, rows.size() - r0));
      enqueue_logits(rows.data() + r0, m, logits_rows.as<float>());
      for (int32_t i = 0; i < m; ++i)
        HS_CUDA(cudaMemcpyAsync(outs[r0 + size_t(i)], logits_rows.as<float>() + int64_t(i) * V, size_t(V) * 4,
                                cudaMemcpyDeviceToHost, stream));
      HS_CUDA(cudaStreamSynchronize(stream));
    }
  }

  // Several sequences in one forward pass (GpuModel::forward): one segment of rows per feed, eager (no
  // graphs), the logits of each feed's last token copied to the host.
  void forward(std::span<const GpuModel::SeqFeed> feeds) {
    HS_CHECK(!feeds.empty(), "forward: nothing to feed");
    std::vector<Segment> segs;
    std::vector<int32_t> host_tokens;
    std::vector<int32_t> logit_rows;
    std::vector<float*> logit_outs;
    int32_t rows = 0;
    for (const GpuModel::SeqFeed& f : feeds) {
      HS_CHECK(f.slot >= 0 && f.slot < opt.n_seq, "forward: sequence %d out of range [0, %d)", f.slot, opt.n_seq);
      HS_CHECK(f.n_tokens >= 1 && f.tokens, "forward: sequence %d is fed no tokens", f.slot);
      for (const Segment& sg : segs) HS_CHECK(sg.seq != f.slot, "forward: sequence %d fed twice in one call", f.slot);
      const SeqState& sq = seqs[size_t(f.slot)];
      HS_CHECK(int64_t(sq.n_past) + f.n_tokens <= opt.n_ctx,
               "context overflow: %lld positions needed but the context size is %d",
               (long long)(sq.n_past + int64_t(f.n_tokens)), opt.n_ctx);
      HS_CHECK(int64_t(rows) + f.n_tokens <= opt.max_batch_tokens, "forward: more than %d rows in one call",
               opt.max_batch_tokens);
      check_tokens(std::span<const int32_t>(f.tokens, size_t(f.n_tokens)));
      Segment sg;
      sg.seq = f.slot;
      sg.row0 = rows;
      sg.n = f.n_tokens;
      sg.pos0 = sq.n_past;
      sg.estimate = sq.hip_refresh_pos < 0 || sq.n_past - sq.hip_refresh_pos >= hip.refresh;
      segs.push_back(sg);
      host_tokens.insert(host_tokens.end(), f.tokens, f.tokens + f.n_tokens);
      rows += f.n_tokens;
      if (f.logits) {
        logit_rows.push_back(sg.row0 + sg.n - 1);
        logit_outs.push_back(f.logits);
      }
    }
    HS_CUDA(cudaMemcpyAsync(tokens.as<int32_t>(), host_tokens.data(), size_t(rows) * 4, cudaMemcpyHostToDevice,
                            stream));
    enqueue_layers(segs);
    copy_row_logits(logit_rows, logit_outs);
    collect_profile();
    HS_CUDA(cudaStreamSynchronize(stream));
    for (const Segment& sg : segs) {  // the mask bookkeeping of prefill() and decode()
      SeqState& sq = seqs[size_t(sg.seq)];
      if (sg.n > 1)
        sq.hip_refresh_pos = -1;
      else if (opt.attn.kind == AttentionKind::Hip)
        sq.hip_refresh_pos = sg.pos0 + 1 <= hip.n_sink + hip.window ? -1 : sg.estimate ? sg.pos0 : sq.hip_refresh_pos;
      sq.n_past += sg.n;
    }
  }

  // What a decode step's graph depends on besides the data: positions, which phases run, the sampling.
  struct StepShape {
    int32_t n_past = -1;
    bool estimate = false, hip_dense = false, logits = false;
    float temperature = 0;
    uint64_t seed = 0;  // the step's seed (the caller's seed mixed with the position)
    bool operator==(const StepShape&) const = default;
    int key() const { return (estimate ? 1 : 0) | (hip_dense ? 2 : 0) | (logits ? 4 : 0); }
  };
  StepShape precaptured;  // the step whose graph is ready (captured while the previous step ran)
  StepShape shape_for(int32_t np, int32_t refresh_pos, bool logits_wanted, float temperature, uint64_t seed) const {
    StepShape s;
    s.n_past = np;
    s.hip_dense = np + 1 <= hip.n_sink + hip.window;
    s.estimate = refresh_pos < 0 || np - refresh_pos >= hip.refresh;
    s.logits = logits_wanted;
    s.temperature = temperature;
    s.seed = seed ^ (uint64_t(np) * 0x9e3779b97f4a7c15ull);
    return s;
  }
  int32_t refresh_pos_after(const StepShape& s, int32_t refresh_pos) const {
    if (opt.attn.kind != AttentionKind::Hip) return refresh_pos;
    return s.hip_dense ? -1 : s.estimate ? s.n_past : refresh_pos;
  }
  void enqueue_step(const StepShape& s) {
    HS_CUDA(cudaMemcpyAsync(tokens.as<int32_t>(), h_token, 4, cudaMemcpyHostToDevice, stream));
    enqueue_layers(1, s.n_past, s.estimate);
    enqueue_head(0, s.temperature, s.seed);
    HS_CUDA(cudaMemcpyAsync(h_token + 1, next_token.as<int32_t>(), 4, cudaMemcpyDeviceToHost, stream));
    if (s.logits)
      HS_CUDA(cudaMemcpyAsync(h_logits, logits.as<float>(), size_t(cfg.n_vocab) * 4, cudaMemcpyDeviceToHost, stream));
  }

  // Records step s on the capture stream and applies it to the executable graph of its shape and parity (two
  // per shape: one may be running while the other is updated). Only kernel parameters such as positions
  // differ between steps of one shape, so cudaGraphExecUpdate applies; if not, the graph is instantiated anew.
  cudaGraphExec_t& exec_slot(const StepShape& s) { return graphs[s.key() * 2 + (s.n_past & 1)]; }
  void capture(const StepShape& s) {
    if (!capture_stream) HS_CUDA(cudaStreamCreateWithFlags(&capture_stream, cudaStreamNonBlocking));
    cudaStream_t main_stream = stream;
    stream = capture_stream;  // every enqueue_* call uses `stream`
    check_blas(cublasSetStream(blas, stream), "cublasSetStream");
    cudaGraph_t graph = nullptr;
    cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
    if (err == cudaSuccess) {
      try {
        enqueue_step(s);
      } catch (...) {
        cudaStreamEndCapture(stream, &graph);
        if (graph) cudaGraphDestroy(graph);
        stream = main_stream;
        cublasSetStream(blas, stream);
        throw;
      }
      err = cudaStreamEndCapture(stream, &graph);
    }
    stream = main_stream;
    check_blas(cublasSetStream(blas, stream), "cublasSetStream");
    check_cuda(err, "decode step capture");
    cudaGraphExec_t& exec = exec_slot(s);
    bool updated = false;
    if (exec) {
      cudaGraphExecUpdateResultInfo info;
      updated = cudaGraphExecUpdate(exec, graph, &info) == cudaSuccess;
      if (!updated) {
        cudaGetLastError();  // clear the update failure
        cudaGraphExecDestroy(exec);
        exec = nullptr;
      }
    }
    if (!updated) err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    check_cuda(err, "cudaGraphInstantiate");
  }

  int32_t decode(int32_t token, float temperature, uint64_t seed, float* out_logits) {
    check_tokens(std::span<const int32_t>(&token, 1));
    int32_t& n_past = seqs[0].n_past;
    int32_t& hip_refresh_pos = seqs[0].hip_refresh_pos;
    HS_CHECK(n_past + 1 <= opt.n_ctx, "context overflow: %d positions needed but the context size is %d (raise -c)",
             n_past + 1, opt.n_ctx);
    const StepShape s = shape_for(n_past, hip_refresh_pos, out_logits != nullptr, temperature, seed);
    const int32_t next_refresh = refresh_pos_after(s, hip_refresh_pos);
    h_token[0] = token;
    if (opt.cuda_graphs && !profiling) {
      // The graph of this step was usually captured while the previous step ran (below); the GPU then runs
      // step after step with only the host's launch and synchronization between them.
      if (!(precaptured == s)) capture(s);
      HS_CUDA(cudaGraphLaunch(exec_slot(s), stream));
      precaptured = StepShape();
      if (n_past + 2 <= opt.n_ctx) {
        const StepShape next = shape_for(n_past + 1, next_refresh, s.logits, temperature, seed);
        capture(next);  // the other parity's graph: idle since the last synchronization
        precaptured = next;
      }
    } else {
      enqueue_step(s);
    }
    collect_profile();
    HS_CUDA(cudaStreamSynchronize(stream));
    if (out_logits) std::memcpy(out_logits, h_logits, size_t(cfg.n_vocab) * 4);
    hip_refresh_pos = next_refresh;
    n_past += 1;
    return h_token[1];
  }
};

// ---------------------------------------------------------------------------------------------------------------

bool device_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    if (why) *why = e != cudaSuccess ? std::string("no usable CUDA device: ") + cudaGetErrorString(e) : "no CUDA device";
    cudaGetLastError();
    return false;
  }
  return true;
}

std::string dense_prefill_attention(bool cudnn_prefill) {
  if (engine_uses_cudnn(cudnn_prefill)) return "cuDNN fused attention (" + cudnn_attention_status() + ")";
  if (cudnn_attention_available())
    return "our kernel (" + cudnn_attention_status() + " available: HIPSERVE_CUDNN=1 uses it)";
  return "our kernel (cuDNN: " + cudnn_attention_status() + ")";
}

std::string device_name() {
  if (!device_available()) return "";
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "";
  return prop.name;
}

double copy_bandwidth_gbs() {
  const size_t bytes = size_t(1) << 30;
  DeviceBuffer a(bytes), b(bytes);
  HS_CUDA(cudaMemset(a.as<void>(), 1, bytes));
  cudaEvent_t e0, e1;
  HS_CUDA(cudaEventCreate(&e0));
  HS_CUDA(cudaEventCreate(&e1));
  float best = 1e30f;
  for (int rep = 0; rep < 6; ++rep) {
    HS_CUDA(cudaEventRecord(e0));
    HS_CUDA(cudaMemcpy(b.as<void>(), a.as<void>(), bytes, cudaMemcpyDeviceToDevice));
    HS_CUDA(cudaEventRecord(e1));
    HS_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    HS_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    if (rep > 0) best = std::min(best, ms);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * double(bytes) / (double(best) * 1e6);
}

namespace {
struct Preset {
  const char* name;
  int32_t n_embd, n_layer, n_ff, n_head, n_head_kv, n_vocab;
  float rope_base;
  bool qkv_bias;
};
constexpr Preset kPresets[] = {
    {"llama3.1-8b", 4096, 32, 14336, 32, 8, 128256, 500000.0f, false},
    {"llama3.2-1b", 2048, 16, 8192, 32, 8, 128256, 500000.0f, false},
    {"qwen2.5-7b", 3584, 28, 18944, 28, 4, 152064, 1000000.0f, true},
    {"smollm2-135m", 576, 30, 1536, 9, 3, 49152, 100000.0f, false},
};
}  // namespace

std::string random_preset_names() {
  std::string s;
  for (const Preset& p : kPresets) s += (s.empty() ? "" : ", ") + std::string(p.name);
  return s;
}

ModelConfig random_preset(const std::string& name) {
  for (const Preset& p : kPresets) {
    if (name != p.name) continue;
    ModelConfig c;
    c.arch = p.qkv_bias ? Arch::Qwen2 : Arch::Llama;
    c.arch_name = p.qkv_bias ? "qwen2" : "llama";
    c.name = std::string(p.name) + " (random weights)";
    c.n_ctx_train = 131072;
    c.n_embd = p.n_embd;
    c.n_layer = p.n_layer;
    c.n_ff = p.n_ff;
    c.n_head = p.n_head;
    c.n_head_kv = p.n_head_kv;
    c.head_dim = p.n_embd / p.n_head;
    c.n_vocab = p.n_vocab;
    c.norm_eps = 1e-5f;
    c.rope.type = p.qkv_bias ? RopeType::NeoX : RopeType::Norm;
    c.rope.n_rot = c.head_dim;
    c.rope.freq_base = p.rope_base;
    c.qkv_bias = p.qkv_bias;
    return c;
  }
  fail(strfmt("unknown random-weights preset '%s' (known: %s)", name.c_str(), random_preset_names().c_str()));
}

GpuModel::GpuModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuModel::~GpuModel() = default;

std::unique_ptr<GpuModel> GpuModel::upload(const Model& model, const GpuModelOptions& options) {
  std::string why;
  HS_CHECK(device_available(&why), "%s", why.c_str());
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.cfg = model.config();
  m.opt = options;
  m.init_common();
  const ModelConfig& c = m.cfg;
  std::vector<float> tmp;
  std::vector<uint16_t> staging;
  auto matrix = [&](const cpu::MatmulWeight& w, DeviceBuffer& dst, int64_t row0) {
    upload_matrix(w, dst.as<bf16>(), row0, tmp, staging);
  };
  m.tok_embd = DeviceBuffer(size_t(c.n_vocab) * c.n_embd * 2);
  matrix(model.tok_embd(), m.tok_embd, 0);
  if (c.tied_embeddings) {
    m.output_w = m.tok_embd.as<bf16>();
  } else {
    m.output = DeviceBuffer(size_t(c.n_vocab) * c.n_embd * 2);
    matrix(model.output(), m.output, 0);
    m.output_w = m.output.as<bf16>();
  }
  m.output_norm = upload_floats(model.output_norm(), c.n_embd);
  m.layers.resize(size_t(c.n_layer));
  for (int il = 0; il < c.n_layer; ++il) {
    const LayerWeights& W = model.layer(il);
    LayerDev& L = m.layers[size_t(il)];
    L.w_qkv = DeviceBuffer(size_t(m.QKV()) * c.n_embd * 2);
    matrix(W.wq, L.w_qkv, 0);
    matrix(W.wk, L.w_qkv, m.QD());
    matrix(W.wv, L.w_qkv, m.QD() + m.KVD());
    if (W.bq) {
      std::vector<float> b(size_t(m.QKV()));
      std::copy(W.bq, W.bq + m.QD(), b.begin());
      std::copy(W.bk, W.bk + m.KVD(), b.begin() + m.QD());
      std::copy(W.bv, W.bv + m.KVD(), b.begin() + m.QD() + m.KVD());
      L.b_qkv = upload_floats(b.data(), m.QKV());
    }
    L.w_o = DeviceBuffer(size_t(c.n_embd) * m.QD() * 2);
    matrix(W.wo, L.w_o, 0);
    L.w_gu = DeviceBuffer(size_t(2) * c.n_ff * c.n_embd * 2);
    matrix(W.w_gate, L.w_gu, 0);
    matrix(W.w_up, L.w_gu, c.n_ff);
    L.w_down = DeviceBuffer(size_t(c.n_embd) * c.n_ff * 2);
    matrix(W.w_down, L.w_down, 0);
    L.attn_norm = upload_floats(W.attn_norm, c.n_embd);
    L.ffn_norm = upload_floats(W.ffn_norm, c.n_embd);
    m.weight_bytes += L.w_qkv.bytes() + L.w_o.bytes() + L.w_gu.bytes() + L.w_down.bytes();
  }
  m.weight_bytes += m.tok_embd.bytes() + m.output.bytes();
  return std::unique_ptr<GpuModel>(new GpuModel(std::move(impl)));
}

std::unique_ptr<GpuModel> GpuModel::random(const ModelConfig& config, uint64_t seed, const GpuModelOptions& options) {
  std::string why;
  HS_CHECK(device_available(&why), "%s", why.c_str());
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.cfg = config;
  m.opt = options;
  m.init_common();
  const ModelConfig& c = m.cfg;
  uint64_t s = seed;
  auto rand_matrix = [&](int64_t rows, int64_t cols) {
    DeviceBuffer b(size_t(rows) * cols * 2);
    const int64_t n = rows * cols;
    init_uniform_kernel<<<grid_for(n, 256), 256, 0, m.stream>>>(b.as<bf16>(), n, ++s * 0x2545f4914f6cdd1dull,
                                                                 1.0f / std::sqrt(float(cols)));
    HS_CUDA_LAUNCH("init_uniform_kernel");
    m.weight_bytes += b.bytes();
    return b;
  };
  auto ones = [&](int64_t n) {
    DeviceBuffer b(size_t(n) * 4);
    fill_kernel<<<grid_for(n, 256), 256, 0, m.stream>>>(b.as<float>(), n, 1.0f);
    HS_CUDA_LAUNCH("fill_kernel");
    return b;
  };
  m.tok_embd = rand_matrix(c.n_vocab, c.n_embd);
  m.output = rand_matrix(c.n_vocab, c.n_embd);
  m.output_w = m.output.as<bf16>();
  m.output_norm = ones(c.n_embd);
  m.layers.resize(size_t(c.n_layer));
  for (int il = 0; il < c.n_layer; ++il) {
    LayerDev& L = m.layers[size_t(il)];
    L.w_qkv = rand_matrix(m.QKV(), c.n_embd);
    if (c.qkv_bias) {
      L.b_qkv = DeviceBuffer(size_t(m.QKV()) * 4);
      fill_kernel<<<grid_for(m.QKV(), 256), 256, 0, m.stream>>>(L.b_qkv.as<float>(), m.QKV(), 0.01f);
      HS_CUDA_LAUNCH("fill_kernel");
    }
    L.w_o = rand_matrix(c.n_embd, m.QD());
    L.w_gu = rand_matrix(2 * int64_t(c.n_ff), c.n_embd);
    L.w_down = rand_matrix(c.n_embd, c.n_ff);
    L.attn_norm = ones(c.n_embd);
    L.ffn_norm = ones(c.n_embd);
  }
  HS_CUDA(cudaStreamSynchronize(m.stream));
  return std::unique_ptr<GpuModel>(new GpuModel(std::move(impl)));
}

const ModelConfig& GpuModel::config() const { return impl_->cfg; }
const GpuModelOptions& GpuModel::options() const { return impl_->opt; }
int32_t GpuModel::n_past() const { return impl_->seqs[0].n_past; }
int32_t GpuModel::n_past_of(int32_t seq) const {
  HS_CHECK(seq >= 0 && seq < impl_->opt.n_seq, "sequence %d out of range [0, %d)", seq, impl_->opt.n_seq);
  return impl_->seqs[size_t(seq)].n_past;
}
void GpuModel::truncate(int32_t seq, int32_t n) {
  HS_CHECK(seq >= 0 && seq < impl_->opt.n_seq, "sequence %d out of range [0, %d)", seq, impl_->opt.n_seq);
  Impl::SeqState& sq = impl_->seqs[size_t(seq)];
  HS_CHECK(n >= 0 && n <= sq.n_past, "truncate to %d beyond %d", n, sq.n_past);
  sq.n_past = n;
  if (sq.hip_refresh_pos >= n) sq.hip_refresh_pos = -1;
}
void GpuModel::forward(std::span<const SeqFeed> feeds) { impl_->forward(feeds); }
int32_t GpuModel::bit_exact_batch_rows() const {
  return impl_->use_gemv && impl_->wide_small ? impl_->gemv_max_tokens : 1;
}
void GpuModel::truncate(int32_t n) { truncate(0, n); }
void GpuModel::prefill(std::span<const int32_t> tokens, float* logits, bool all_logits,
                       const std::function<void(int64_t, int64_t)>& on_chunk) {
  impl_->prefill(tokens, logits, all_logits, on_chunk);
}
int32_t GpuModel::decode(int32_t token, float temperature, uint64_t seed, float* logits) {
  return impl_->decode(token, temperature, seed, logits);
}
size_t GpuModel::weight_bytes() const { return impl_->weight_bytes; }
size_t GpuModel::kv_bytes() const {
  size_t b = 0;
  for (const auto& sq : impl_->seqs) {
    for (auto& k : sq.k_cache) b += k.bytes();
    for (auto& v : sq.v_cache) b += v.bytes();
  }
  return b;
}
int GpuModel::warm_up_cudnn() {
  return impl_->warm_up_cudnn();
}
bool GpuModel::uses_cudnn() const {
  return impl_->use_cudnn;
}

void GpuModel::set_profiling(bool on) {
  impl_->profiling = on;
  impl_->prof = GpuProfile();
}
GpuProfile GpuModel::profile() const { return impl_->prof; }

GpuSequence::GpuSequence(std::unique_ptr<GpuModel> model) : gm_(std::move(model)) {
  HS_CHECK(gm_ != nullptr, "GpuSequence needs a model");
}
std::string GpuSequence::backend_name() const { return device_name(); }

GpuSlotBackend::GpuSlotBackend(std::unique_ptr<GpuModel> model)
    : gm_(std::move(model)), open_(size_t(gm_ ? gm_->options().n_seq : 0), 0) {
  HS_CHECK(gm_ != nullptr, "GpuSlotBackend needs a model");
  n_free_ = int32_t(open_.size());
}
std::string GpuSlotBackend::name() const { return "cuda (" + device_name() + ")"; }
void GpuSlotBackend::open(int32_t slot, int32_t reserve) {
  HS_CHECK(slot >= 0 && slot < n_slots() && !open_[size_t(slot)], "slot %d is not a free slot", slot);
  HS_CHECK(reserve >= 0 && reserve <= n_ctx(), "a slot holds at most %d positions (asked for %d)", n_ctx(), reserve);
  gm_->truncate(slot, 0);
  open_[size_t(slot)] = 1;
  n_free_.fetch_sub(1);
}
void GpuSlotBackend::close(int32_t slot) {
  HS_CHECK(slot >= 0 && slot < n_slots(), "slot %d out of range", slot);
  if (!open_[size_t(slot)]) return;
  open_[size_t(slot)] = 0;
  n_free_.fetch_add(1);
}
int32_t GpuSlotBackend::n_past(int32_t slot) const {
  HS_CHECK(slot >= 0 && slot < n_slots() && open_[size_t(slot)], "slot %d is not open", slot);
  return gm_->n_past_of(slot);
}
void GpuSlotBackend::forward(std::span<const Feed> feeds) {
  for (const Feed& x : feeds)
    HS_CHECK(x.slot >= 0 && x.slot < n_slots() && open_[size_t(x.slot)], "slot %d is not open", x.slot);
  gm_->forward(feeds);
}
void GpuSequence::append(std::span<const int32_t> tokens, float* logits, bool all_logits,
                         const std::function<void(int64_t, int64_t)>& on_chunk) {
  // One token after a prompt: the decode step (CUDA graphs, cached HiP masks), as `hipserve bench` runs it.
  if (tokens.size() == 1 && !all_logits && gm_->n_past() > 0) {
    HS_CHECK(gm_->n_past() < gm_->options().n_ctx, "context overflow: the context of %d tokens is full",
             gm_->options().n_ctx);
    gm_->decode(tokens[0], 0.0f, 0, logits);
    if (on_chunk) on_chunk(1, 1);
    return;
  }
  gm_->prefill(tokens, logits, all_logits, on_chunk);
}

}  // namespace hs::cuda

// ---- per-kernel test entry points (llama_cuda_kernels.h) ---------------------------------------------------
namespace hs::cuda::kernel_test {
namespace {
template <class T>
DeviceBuffer to_device(const std::vector<T>& v) {
  DeviceBuffer b(v.size() * sizeof(T));
  if (!v.empty()) HS_CUDA(cudaMemcpy(b.as<void>(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return b;
}
std::vector<float> f32_from_device(const DeviceBuffer& b, size_t n) {
  std::vector<float> v(n);
  HS_CUDA(cudaDeviceSynchronize());
  HS_CUDA(cudaMemcpy(v.data(), b.as<void>(), n * 4, cudaMemcpyDeviceToHost));
  return v;
}
std::vector<float> bf16_from_device(const DeviceBuffer& b, size_t n) {
  std::vector<uint16_t> h(n);
  HS_CUDA(cudaDeviceSynchronize());
  HS_CUDA(cudaMemcpy(h.data(), b.as<void>(), n * 2, cudaMemcpyDeviceToHost));
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = bf16_to_fp32(h[i]);
  return v;
}
}  // namespace

std::vector<float> embed(const std::vector<int32_t>& tokens, const std::vector<uint16_t>& table, int E) {
  DeviceBuffer t = to_device(tokens), tab = to_device(table), x(tokens.size() * size_t(E) * 4);
  embed_kernel<<<unsigned(tokens.size()), 256>>>(t.as<int32_t>(), tab.as<bf16>(), E, x.as<float>());
  HS_CUDA_LAUNCH("embed_kernel");
  return f32_from_device(x, tokens.size() * size_t(E));
}

std::vector<float> rmsnorm(const std::vector<float>& x, int rows, int E, const std::vector<float>& w, float eps,
                           int threads) {
  DeviceBuffer dx = to_device(x), dw = to_device(w), y(size_t(rows) * E * 2);
  rmsnorm_kernel<<<rows, threads>>>(dx.as<float>(), E, dw.as<float>(), E, eps, y.as<bf16>(), E);
  HS_CUDA_LAUNCH("rmsnorm_kernel");
  return bf16_from_device(y, size_t(rows) * E);
}

RopeOut rope_store(const std::vector<float>& qkv, const std::vector<float>& bias, int rows, int n_head,
                   int n_head_kv, int head_dim, const RopeParams& rope, int pos0, int n_ctx, int ctas_per_row) {
  const int QD = n_head * head_dim, KVD = n_head_kv * head_dim;
  const size_t cache = size_t(n_head_kv) * n_ctx * head_dim;
  DeviceBuffer dqkv = to_device(qkv), db = to_device(bias), inv = to_device(rope_inv_freq(rope));
  DeviceBuffer q(size_t(rows) * QD * 2), k(cache * 2), v(cache * 2);
  HS_CUDA(cudaMemset(k.as<void>(), 0, cache * 2));
  HS_CUDA(cudaMemset(v.as<void>(), 0, cache * 2));
  RopeArgs a;
  a.qkv = dqkv.as<float>();
  a.bias = bias.empty() ? nullptr : db.as<float>();
  a.ld = QD + 2 * KVD;
  a.inv_freq = inv.as<float>();
  a.n_head = n_head;
  a.n_head_kv = n_head_kv;
  a.head_dim = head_dim;
  a.n_rot = rope.n_rot;
  a.neox = rope.type == RopeType::NeoX;
  a.pos0 = pos0;
  a.q = q.as<bf16>();
  a.k_cache = k.as<bf16>();
  a.v_cache = v.as<bf16>();
  a.kv_head_stride = int64_t(n_ctx) * head_dim;
  rope_store_kernel<<<dim3(rows, ctas_per_row), 256>>>(a);
  HS_CUDA_LAUNCH("rope_store_kernel");
  return RopeOut{bf16_from_device(q, size_t(rows) * QD), bf16_from_device(k, cache), bf16_from_device(v, cache)};
}

std::vector<float> swiglu(const std::vector<float>& gu, int rows, int FF) {
  DeviceBuffer dgu = to_device(gu), act(size_t(rows) * FF * 2);
  swiglu_kernel<<<grid_for(int64_t(rows) * FF, 256), 256>>>(dgu.as<float>(), rows, FF, act.as<bf16>());
  HS_CUDA_LAUNCH("swiglu_kernel");
  return bf16_from_device(act, size_t(rows) * FF);
}

int32_t sample(const std::vector<float>& logits, float temperature, uint64_t seed) {
  DeviceBuffer dl = to_device(logits), out(4);
  sample_kernel<<<1, 1024>>>(dl.as<float>(), int(logits.size()), temperature, seed, out.as<int32_t>());
  HS_CUDA_LAUNCH("sample_kernel");
  int32_t t = -1;
  HS_CUDA(cudaMemcpy(&t, out.as<void>(), 4, cudaMemcpyDeviceToHost));
  return t;
}

std::vector<float> gemv(const std::vector<uint16_t>& w, int rows, int cols, const std::vector<uint16_t>& x,
                        const std::vector<float>& y0, bool accumulate) {
  HS_CHECK(cols % 8 == 0, "gemv needs cols %% 8 == 0 (got %d)", cols);
  DeviceBuffer dw = to_device(w), dx = to_device(x);
  DeviceBuffer y = accumulate ? to_device(y0) : DeviceBuffer(size_t(rows) * 4);
  const int64_t per_block = int64_t(kGemvWarps) * kGemvRowsPerWarp;
  gemv_bf16_kernel<<<unsigned((rows + per_block - 1) / per_block), kGemvWarps * 32>>>(dw.as<bf16>(), rows, cols,
                                                                                     dx.as<bf16>(), y.as<float>(),
                                                                                     accumulate);
  HS_CUDA_LAUNCH("gemv_bf16_kernel");
  return f32_from_device(y, size_t(rows));
}

}  // namespace hs::cuda::kernel_test
