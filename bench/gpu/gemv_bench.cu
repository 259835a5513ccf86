// Decode GEMV bandwidth on the GPU: the engine's kernel in several shapes (rows per warp, loads in flight),
// on the matrices of a Llama-3.1-8B decode step, with the card's read and copy bandwidth measured in the same
// run as the marks.
//   hipserve_gemv_bench [--json FILE]      (built beside hipserve_gpu_bench; bench/gpu/run.sh runs it)
// Every timed call reads weights no earlier call of the loop read recently (a 15 GB pool, walked in order),
// so the L2 (50 MB) holds none of them, as in a real decode step. Rows of the output: one kernel on one shape
// (GB/s of weights), and the whole step: 32 layers x (QKV, O, gate+up, down) + the output head, launched with
// programmatic dependent launch inside a CUDA graph (ms per token, GB/s).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backends/cuda/gemv.cuh"

using namespace hs::cuda;

#define CK(x)                                                                                               \
  do {                                                                                                      \
    cudaError_t e_ = (x);                                                                                   \
    if (e_ != cudaSuccess) {                                                                                \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); \
      std::exit(1);                                                                                         \
    }                                                                                                       \
  } while (0)

namespace gemv_bench {

__global__ void read_kernel(const uint4* __restrict__ p, int64_t n, unsigned* sink) {
  uint32_t acc = 0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 7 * stride < n; i += 8 * stride) {
    uint4 v[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) v[u] = __ldcs(p + i + u * stride);
#pragma unroll
    for (int u = 0; u < 8; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n; i += stride) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) *sink = acc;  // keeps the loads
}

__global__ void fill_bf16(bf16* p, int64_t n, uint32_t seed) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16((float(h & 0xffff) / 65536.0f - 0.5f) * 0.04f);
  }
}

using GemvKernel = void (*)(const bf16*, int64_t, int, const bf16*, float*, bool);
struct Variant {
  std::string name;
  GemvKernel kernel;
  int rows_per_warp;
};

void gemv(const Variant& v, const bf16* w, int64_t rows, int cols, const bf16* x, float* y, bool acc,
          cudaStream_t s) {
  const int64_t per = int64_t(kGemvWarps) * v.rows_per_warp;
  CK(launch_kernel(true, v.kernel, dim3(unsigned((rows + per - 1) / per)), dim3(kGemvWarps * 32), 0, s, w,
                   rows, cols, x, y, acc));
}

}  // namespace gemv_bench

using namespace gemv_bench;

int main(int argc, char** argv) {
  const char* json = nullptr;
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
  FILE* jf = json ? std::fopen(json, "w") : nullptr;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int g_sms = prop.multiProcessorCount;
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, g_sms, prop.l2CacheSize >> 20);
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  auto time_ms = [&](auto&& fn, int reps) {
    fn();
    CK(cudaStreamSynchronize(s));
    CK(cudaEventRecord(e0, s));
    for (int r = 0; r < reps; ++r) fn();
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    return double(ms) / reps;
  };

  // The 8B step: 32 x (QKV 6144x4096, O 4096x4096, gate+up 28672x4096, down 4096x14336) + output 128256x4096.
  struct Mat {
    const char* name;
    int64_t rows;
    int cols;
    bool acc;
  };
  const Mat layer[4] = {{"qkv", 6144, 4096, false},
                        {"o", 4096, 4096, true},
                        {"gate_up", 28672, 4096, false},
                        {"down", 4096, 14336, true}};
  const Mat head = {"output", 128256, 4096, false};
  int64_t layer_elems = 0;
  for (const Mat& m : layer) layer_elems += m.rows * m.cols;
  const int64_t total_elems = 32 * layer_elems + head.rows * head.cols;
  size_t free_b = 0, total_b = 0;
  CK(cudaMemGetInfo(&free_b, &total_b));
  if (free_b < size_t(total_elems) * 2 + (size_t(1) << 30)) {
    std::fprintf(stderr, "gemv_bench needs %.1f GB of free GPU memory for the 8B weights; %.1f GB free\n",
                 double(total_elems) * 2 / 1e9, double(free_b) / 1e9);
    return 1;
  }
  bf16* pool = nullptr;
  CK(cudaMalloc(&pool, size_t(total_elems) * 2));
  fill_bf16<<<4096, 256>>>(pool, total_elems, 1234u);
  bf16* x = nullptr;
  float* y = nullptr;
  unsigned* sink = nullptr;
  CK(cudaMalloc(&x, 14336 * 2));
  CK(cudaMalloc(&y, size_t(128256) * 4));
  CK(cudaMalloc(&sink, 4));
  fill_bf16<<<16, 256>>>(x, 14336, 99u);
  CK(cudaDeviceSynchronize());
  const double pool_gb = double(total_elems) * 2 / 1e9;
  std::printf("weights: %.2f GB\n", pool_gb);

  // The card's marks: a pure streaming read of the pool, and a device-to-device copy of 4 GB.
  for (int ctas : {g_sms * 4, g_sms * 8}) {
    const double ms = time_ms(
        [&] {
          read_kernel<<<ctas, 512, 0, s>>>(reinterpret_cast<const uint4*>(pool), total_elems / 8, sink);
        },
        3);
    std::printf("read %d CTAs x 512: %.3f ms, %.1f GB/s\n", ctas, ms, pool_gb / ms * 1e3);
    if (jf)
      std::fprintf(jf, "{\"row\":\"read\",\"ctas\":%d,\"ms\":%.4f,\"gbps\":%.1f}\n", ctas, ms,
                   pool_gb / ms * 1e3);
  }
  {
    const size_t bytes = size_t(4) << 30;
    const double ms = time_ms(
        [&] {
          CK(cudaMemcpyAsync(pool, reinterpret_cast<char*>(pool) + bytes, bytes, cudaMemcpyDeviceToDevice,
                             s));
        },
        3);
    std::printf("copy 4 GiB: %.3f ms, %.1f GB/s (read + written)\n", ms, 2.0 * bytes / 1e9 / ms * 1e3);
    if (jf)
      std::fprintf(jf, "{\"row\":\"copy\",\"ms\":%.4f,\"gbps\":%.1f}\n", ms, 2.0 * bytes / 1e9 / ms * 1e3);
    fill_bf16<<<4096, 256>>>(pool, total_elems, 1234u);
  }

  // Rows per warp R and 16-byte loads per lane and row in flight U (the engine runs <4, 4>).
  const std::vector<Variant> variants = {
      {"R4 U4 (engine)", gemv_bf16_kernel_t<4, 4>, 4}, {"R2 U4", gemv_bf16_kernel_t<2, 4>, 2},
      {"R2 U8", gemv_bf16_kernel_t<2, 8>, 2},          {"R1 U8", gemv_bf16_kernel_t<1, 8>, 1},
      {"R1 U16", gemv_bf16_kernel_t<1, 16>, 1},        {"R4 U2", gemv_bf16_kernel_t<4, 2>, 4},
      {"R8 U2", gemv_bf16_kernel_t<8, 2>, 8}};
  std::vector<std::vector<double>> shape_us(5, std::vector<double>(variants.size()));

  // One shape at a time: consecutive calls walk through copies of it laid end to end over the pool.
  const Mat mats[5] = {layer[0], layer[1], layer[2], layer[3], head};
  for (int mi = 0; mi < 5; ++mi) {
    const Mat& m = mats[mi];
    const int64_t elems = m.rows * m.cols;
    const int64_t copies = total_elems / elems;
    for (size_t vi = 0; vi < variants.size(); ++vi) {
      const Variant& v = variants[vi];
      int64_t i = 0;
      const int reps = int(std::min<int64_t>(copies, 200));
      const double ms =
          time_ms([&] { gemv(v, pool + (i++ % copies) * elems, m.rows, m.cols, x, y, m.acc, s); }, reps);
      const double gbps = double(elems) * 2 / 1e9 / ms * 1e3;
      shape_us[size_t(mi)][vi] = ms * 1e3;
      std::printf("%-8s %6lld x %5d  %-18s %8.2f us  %7.1f GB/s\n", m.name, (long long)m.rows, m.cols,
                  v.name.c_str(), ms * 1e3, gbps);
      if (jf)
        std::fprintf(jf, "{\"row\":\"shape\",\"mat\":\"%s\",\"variant\":\"%s\",\"us\":%.3f,\"gbps\":%.1f}\n",
                     m.name, v.name.c_str(), ms * 1e3, gbps);
    }
  }

  // The whole step as a graph of PDL launches: each variant on every matrix, then each matrix on its fastest.
  std::vector<int> best(5, 0);
  for (int mi = 0; mi < 5; ++mi)
    for (size_t vi = 0; vi < variants.size(); ++vi)
      if (shape_us[size_t(mi)][vi] < shape_us[size_t(mi)][size_t(best[size_t(mi)])])
        best[size_t(mi)] = int(vi);
  for (size_t vi = 0; vi <= variants.size(); ++vi) {
    auto pick = [&](int mi) -> const Variant& {
      return variants[vi < variants.size() ? vi : size_t(best[size_t(mi)])];
    };
    const std::string name = vi < variants.size() ? variants[vi].name : "fastest per matrix";
    auto step = [&] {
      const bf16* p = pool;
      for (int l = 0; l < 32; ++l)
        for (int mi = 0; mi < 4; ++mi) {
          gemv(pick(mi), p, layer[mi].rows, layer[mi].cols, x, y, layer[mi].acc, s);
          p += layer[mi].rows * layer[mi].cols;
        }
      gemv(pick(4), p, head.rows, head.cols, x, y, false, s);
    };
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    step();
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    const double ms = time_ms([&] { CK(cudaGraphLaunch(ge, s)); }, 10);
    std::printf("step %-18s %.3f ms/token  %.1f GB/s  (%.1f tok/s of GEMVs alone)\n", name.c_str(), ms,
                pool_gb / ms * 1e3, 1e3 / ms);
    if (jf)
      std::fprintf(jf, "{\"row\":\"step\",\"variant\":\"%s\",\"ms\":%.4f,\"gbps\":%.1f}\n", name.c_str(), ms,
                   pool_gb / ms * 1e3);
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
  }
  for (int mi = 0; mi < 5; ++mi)
    std::printf("fastest on %s: %s\n", mats[mi].name, variants[size_t(best[size_t(mi)])].name.c_str());
  if (jf) std::fclose(jf);
  return 0;
}
