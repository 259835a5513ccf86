// Decode's matrix-vector products (GEMVs) on the GPU, and the programmatic-dependent-launch helpers they use.
// A header of kernels so that the engine (llama_cuda.cu) and the GEMV benchmark (bench/gpu/gemv_bench.cu) run
// the same code.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

namespace hs::cuda {
namespace {

using bf16 = __nv_bfloat16;

// Programmatic dependent launch (sm_90): a kernel launched with the PDL attribute (launch_kernel below)
// may start while its predecessor in the stream still runs; it must call pdl_wait() before it reads anything
// the predecessor writes, or writes anything the predecessor reads. Work before the wait may touch only data
// no earlier kernel of the step writes (the GEMV streams its first weights there: the weights are constant).
// pdl_launch_dependents() lets the next PDL kernel be scheduled once every block of this one has called it.
// Both are no-ops when the kernel was launched normally.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), with programmatic dependent launch when `pdl` (the kernel
// must call pdl_wait() before touching its predecessor's data; see above).
template <class... KArgs, class... Args>
cudaError_t launch_kernel(bool pdl, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                          cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = pdl ? attr : nullptr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

// Decode's matrix-vector products: y[r] (+)= sum_c W[r][c] x[c], W [rows][cols] bf16 row-major, x bf16, y
// fp32. Bound by reading W once: each warp owns R rows and streams them with 16-byte loads, R x U loads in
// flight per lane before the first use; x (at most a few tens of KB) comes through L2. cols must be a
// multiple of 8 (16-byte rows). One token (2-4: gemv_bf16_tokens_kernel below; more rows: cuBLAS). Shapes
// (rows per warp R, 16-byte loads per lane and row per step U): <4, 4> by default; others selectable with
// HIPSERVE_CUDA_GEMV=R,U (2,4 / 4,4 / 2,8 / 1,8 / 4,2) for measurements. H100, 8B decode at depth 0, one run:
// 2,4 149.3 tok/s; 4,4 152.7; 2,8 150.8; 1,8 136.9; 4,2 152.7.
constexpr int kGemvRowsPerWarp = 4;
constexpr int kGemvWarps = 8;
template <int R, int U>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_bf16_kernel_t(const bf16* __restrict__ w, int64_t rows, int cols, const bf16* __restrict__ x,
                       float* __restrict__ y, bool accumulate) {
  constexpr int kGemvRowsPerWarp = R;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t r0 = (int64_t(blockIdx.x) * kGemvWarps + warp) * kGemvRowsPerWarp;
  if (r0 >= rows) {
    pdl_launch_dependents();
    return;
  }
  const int nvec = cols / 8;  // 16-byte vectors per row
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  float acc[kGemvRowsPerWarp] = {};
  const uint4* wv[kGemvRowsPerWarp];
#pragma unroll
  for (int j = 0; j < kGemvRowsPerWarp; ++j)
    wv[j] = reinterpret_cast<const uint4*>(w + (r0 + j < rows ? r0 + j : rows - 1) * cols);
  constexpr int kUnroll = U;
  int v = lane;
  // The first weights are loaded before waiting for the previous kernel (PDL): they are constant, and their
  // latency then overlaps the previous kernel's tail. x is read after the wait, through L2 (ld.global.cg, not
  // the non-coherent path: x is written by the previous kernel while this one may already run).
  uint4 wa[kGemvRowsPerWarp][kUnroll];
  bool loaded = false;
  if (v + 32 * (kUnroll - 1) < nvec) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int j = 0; j < kGemvRowsPerWarp; ++j) wa[j][u] = __ldcs(wv[j] + v + 32 * u);
    loaded = true;
  }
  pdl_wait();
  pdl_launch_dependents();
  for (; v + 32 * (kUnroll - 1) < nvec; v += 32 * kUnroll) {
    uint4 xa[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      xa[u] = __ldcg(xv + v + 32 * u);
      if (!loaded) {
#pragma unroll
        for (int j = 0; j < kGemvRowsPerWarp; ++j) wa[j][u] = __ldcs(wv[j] + v + 32 * u);  // streamed once
      }
    }
    loaded = false;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&xa[u]);
#pragma unroll
      for (int j = 0; j < kGemvRowsPerWarp; ++j) {
        const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&wa[j][u]);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 a = __bfloat1622float2(wp[k]), b = __bfloat1622float2(xp[k]);
          acc[j] = fmaf(a.x, b.x, fmaf(a.y, b.y, acc[j]));
        }
      }
    }
  }
  for (; v < nvec; v += 32) {
    const uint4 xa = __ldcg(xv + v);
    const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&xa);
#pragma unroll
    for (int j = 0; j < kGemvRowsPerWarp; ++j) {
      const uint4 wa = __ldcs(wv[j] + v);
      const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&wa);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 a = __bfloat1622float2(wp[k]), b = __bfloat1622float2(xp[k]);
        acc[j] = fmaf(a.x, b.x, fmaf(a.y, b.y, acc[j]));
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kGemvRowsPerWarp; ++j) {
    float a = acc[j];
    for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
    if (lane == 0 && r0 + j < rows) y[r0 + j] = accumulate ? y[r0 + j] + a : a;
  }
}

constexpr auto gemv_bf16_kernel = gemv_bf16_kernel_t<kGemvRowsPerWarp, 4>;

// The same for T tokens at once (a batched decode step of T sequences): Y[t][r] (+)= sum_c W[r][c] X[t][c],
// X [T][cols], Y [T][rows] (ld rows). Each weight is read once for all T tokens. Every lane adds its products
// in the single-token kernel's order (vectors lane, lane + 32, lane + 64, ... whatever U is) and the warp
// reduces them the same way, so each token's result is bit-identical to the single-token kernel's: a batched
// decode gives every sequence the bits of its lone run (tested). X is read after the PDL wait (so the
// previous kernel's writes are complete and visible); L1X: through L1 (ld.ca), so the CTA's 8 warps, which
// read the same X for different rows, share it; else through L2 only (ld.cg), as the single-token kernel
// does.
template <int R, int U, int T, bool L1X = true>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_bf16_tokens_kernel(const bf16* __restrict__ w, int64_t rows, int cols, const bf16* __restrict__ x,
                            float* __restrict__ y, bool accumulate) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t r0 = (int64_t(blockIdx.x) * kGemvWarps + warp) * R;
  if (r0 >= rows) {
    pdl_launch_dependents();
    return;
  }
  const int nvec = cols / 8;
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  float acc[T][R] = {};
  const uint4* wv[R];
#pragma unroll
  for (int j = 0; j < R; ++j)
    wv[j] = reinterpret_cast<const uint4*>(w + (r0 + j < rows ? r0 + j : rows - 1) * cols);
  pdl_wait();
  pdl_launch_dependents();
  int v = lane;
  // Each weight vector and each token's x vector is converted to fp32 once (not once per (row, token) pair);
  // the FMAs, and so the results, are those of the single-token kernel.
  auto step = [&](const uint4(&wa)[R], int vv) {
    float2 wf[R][4];
#pragma unroll
    for (int j = 0; j < R; ++j)
#pragma unroll
      for (int k = 0; k < 4; ++k)
        wf[j][k] = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(&wa[j])[k]);
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const uint4 xa = L1X ? __ldca(xv + int64_t(t) * nvec + vv) : __ldcg(xv + int64_t(t) * nvec + vv);
      float2 xf[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) xf[k] = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(&xa)[k]);
#pragma unroll
      for (int j = 0; j < R; ++j)
#pragma unroll
        for (int k = 0; k < 4; ++k)
          acc[t][j] = fmaf(wf[j][k].x, xf[k].x, fmaf(wf[j][k].y, xf[k].y, acc[t][j]));
    }
  };
  for (; v + 32 * (U - 1) < nvec; v += 32 * U) {
    uint4 wa[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int j = 0; j < R; ++j) wa[u][j] = __ldcs(wv[j] + v + 32 * u);  // streamed once
#pragma unroll
    for (int u = 0; u < U; ++u) step(wa[u], v + 32 * u);
  }
  for (; v < nvec; v += 32) {
    uint4 wa[R];
#pragma unroll
    for (int j = 0; j < R; ++j) wa[j] = __ldcs(wv[j] + v);
    step(wa, v);
  }
#pragma unroll
  for (int t = 0; t < T; ++t)
#pragma unroll
    for (int j = 0; j < R; ++j) {
      float a = acc[t][j];
      for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
      float* yt = y + int64_t(t) * rows;
      if (lane == 0 && r0 + j < rows) yt[r0 + j] = accumulate ? yt[r0 + j] + a : a;
    }
}

}  // namespace
}  // namespace hs::cuda
