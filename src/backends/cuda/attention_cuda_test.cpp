// The CUDA attention kernels against the CPU oracle (src/ops): fresh random inputs every test, outputs poisoned
// (0xFFFF bf16 = NaN) before each run and checked to be all written, relative error ||gpu - cpu|| / ||cpu||.
//
// Bounds. Inputs are drawn in bf16 and handed to the CPU exactly (Q as fp32, K/V as fp16: a bf16 value with
// |x| in [2^-14, 65504] is exact in fp16), so the only differences are the GPU's rounding: P rounded to bf16
// before P.V (relative 2^-9 per weight, averaging out over keys), ex2.approx (2^-22), fp32 accumulation in
// another order, and the bf16 output (2^-9 relative per element). Their sum is a few 1e-3; the bound is 1e-2
// (METHOD.md: bf16 operands land between 1e-3 and 1e-2), and a wrong key, a missing row or a lost rescale
// gives errors of order 1e-1 or more.
//
// HiP masks: the GPU scores on tensor cores (fp32 accumulation in another order and rounding than the CPU's
// FMA chain), so a child whose score lies within rounding of the K_b-th best can fall on the other side and
// steer the rest of its search. On inputs whose dot products are exact in fp32 on both sides (small
// multiples of 1/4: every partial sum is exact) the selections must be identical, ties included, which
// pins the tree logic and the tie rule; on random data the recall of the CPU's blocks is measured and bounded.
#include "backends/cuda/attention_cuda.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <thread>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "ops/hip_attention.h"
#include "util/common.h"
#include "util/thread_pool.h"

namespace hs {
namespace {

#define CUDA_OK(expr)                                                                              \
  do {                                                                                             \
    const cudaError_t err_ = (expr);                                                               \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_);                     \
  } while (0)

bool gpu_present() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_GPU()                                                                   \
  do {                                                                                       \
    if (!gpu_present()) GTEST_SKIP() << "no CUDA GPU present (cudaGetDeviceCount failed or 0)"; \
  } while (0)

template <class T>
struct DevBuf {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) {
    if (cudaMalloc(&ptr, std::max<size_t>(1, n) * sizeof(T)) != cudaSuccess) ptr = nullptr;
  }
  ~DevBuf() { cudaFree(ptr); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  cudaError_t upload(const std::vector<T>& h) { return cudaMemcpy(ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice); }
  cudaError_t download(std::vector<T>& h) const {
    h.resize(n);
    return cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost);
  }
  cudaError_t poison() { return cudaMemset(ptr, 0xFF, n * sizeof(T)); }
};

enum class Fill { kNormal, kSmooth, kQuarterInts };

// One problem in bf16 (device layout: q/out [n_q][n_head * D], K/V [kv head][pos][D]) and the same values for
// the CPU (q fp32, K/V fp16).
struct Problem {
  int32_t n_q, n_kv, q_pos0, H, Hkv, D;
  std::vector<uint16_t> q_bf, k_bf, v_bf;
  std::vector<float> q_f;
  std::vector<uint16_t> k_h, v_h;

  Problem(int32_t n_q_, int32_t n_kv_, int32_t q_pos0_, int32_t H_, int32_t Hkv_, int32_t D_, uint32_t seed,
          Fill fill = Fill::kNormal)
      : n_q(n_q_), n_kv(n_kv_), q_pos0(q_pos0_), H(H_), Hkv(Hkv_), D(D_) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> N01(0.f, 1.f);
    std::uniform_int_distribution<int> small(-4, 4);
    auto draw = [&]() { return fill == Fill::kQuarterInts ? 0.25f * float(small(rng)) : N01(rng); };
    q_bf.resize(size_t(n_q) * H * D);
    for (auto& x : q_bf) x = fp32_to_bf16(fill == Fill::kQuarterInts ? draw() : 1.5f * draw());
    k_bf.resize(size_t(Hkv) * n_kv * D);
    v_bf.resize(k_bf.size());
    if (fill == Fill::kSmooth) {  // per-dim AR(1) walk over positions plus noise: attention locality
      for (int g = 0; g < Hkv; ++g)
        for (int d = 0; d < D; ++d) {
          float x = N01(rng);
          for (int p = 0; p < n_kv; ++p) {
            x = 0.98f * x + 0.2f * N01(rng);
            k_bf[(size_t(g) * n_kv + p) * D + d] = fp32_to_bf16(x + 0.3f * N01(rng));
          }
        }
    } else {
      for (auto& x : k_bf) x = fp32_to_bf16(draw());
    }
    for (auto& x : v_bf) x = fp32_to_bf16(N01(rng));
    to_cpu();
  }
  // Builds a problem from given bf16 tensors (real activations).
  Problem(int32_t n_q_, int32_t n_kv_, int32_t q_pos0_, int32_t H_, int32_t Hkv_, int32_t D_)
      : n_q(n_q_), n_kv(n_kv_), q_pos0(q_pos0_), H(H_), Hkv(Hkv_), D(D_) {}
  void to_cpu() {
    q_f.resize(q_bf.size());
    for (size_t i = 0; i < q_bf.size(); ++i) q_f[i] = bf16_to_fp32(q_bf[i]);
    k_h.resize(k_bf.size());
    v_h.resize(v_bf.size());
    for (size_t i = 0; i < k_bf.size(); ++i) k_h[i] = fp32_to_fp16(bf16_to_fp32(k_bf[i]));
    for (size_t i = 0; i < v_bf.size(); ++i) v_h[i] = fp32_to_fp16(bf16_to_fp32(v_bf[i]));
  }
  AttentionParams cpu(float* out) const {
    AttentionParams p;
    p.q = q_f.data();
    p.q_stride = int64_t(H) * D;
    p.k = k_h.data();
    p.v = v_h.data();
    p.kv_head_stride = int64_t(n_kv) * D;
    p.kv_pos_stride = D;
    p.out = out;
    p.out_stride = int64_t(H) * D;
    p.n_q = n_q, p.n_kv = n_kv, p.q_pos0 = q_pos0;
    p.n_head = H, p.n_kv_head = Hkv, p.head_dim = D;
    p.scale = 1.0f / std::sqrt(float(D));
    return p;
  }
};

// Device copies of a problem plus a poisoned output.
struct DevProblem {
  DevBuf<uint16_t> q, k, v, out;
  cuda::AttnParams p;
  explicit DevProblem(const Problem& pr)
      : q(pr.q_bf.size()), k(pr.k_bf.size()), v(pr.v_bf.size()), out(size_t(pr.n_q) * pr.H * pr.D) {
    q.upload(pr.q_bf);
    k.upload(pr.k_bf);
    v.upload(pr.v_bf);
    out.poison();
    p.q = q.ptr, p.k = k.ptr, p.v = v.ptr, p.out = out.ptr;
    p.q_stride = p.out_stride = int64_t(pr.H) * pr.D;
    p.kv_head_stride = int64_t(pr.n_kv) * pr.D;
    p.kv_pos_stride = pr.D;
    p.n_q = pr.n_q, p.n_kv = pr.n_kv, p.q_pos0 = pr.q_pos0;
    p.n_head = pr.H, p.n_kv_head = pr.Hkv, p.head_dim = pr.D;
    p.scale = 1.0f / std::sqrt(float(pr.D));
  }
};

// ||gpu - ref|| / ||ref||; every gpu value must have been written (no NaN from the poison).
double rel_error(const std::vector<uint16_t>& gpu_bf, const std::vector<float>& ref, int64_t* unwritten) {
  double num = 0, den = 0;
  *unwritten = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float g = bf16_to_fp32(gpu_bf[i]);
    if (!std::isfinite(g)) {
      ++*unwritten;
      continue;
    }
    num += (double(g) - ref[i]) * (double(g) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

constexpr double kMaxRelError = 1e-2;

ThreadPool& pool() {
  static ThreadPool tp(std::max(1, int(std::thread::hardware_concurrency())));
  return tp;
}

void check_dense_prefill(const Problem& pr, bool cudnn = false) {
  DevProblem dp(pr);
  CUDA_OK(cudnn ? cuda::attention_prefill_dense_cudnn(dp.p, nullptr)
                : cuda::attention_prefill_dense(dp.p, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint16_t> got;
  CUDA_OK(dp.out.download(got));
  std::vector<float> ref(size_t(pr.n_q) * pr.H * pr.D);
  const AttentionParams cp = pr.cpu(ref.data());
  if (int64_t(pr.n_q) * pr.n_kv <= 600 * 600)
    attention_naive(cp);
  else
    attention_dense(cp, pool());
  int64_t unwritten = 0;
  const double err = rel_error(got, ref, &unwritten);
  EXPECT_EQ(unwritten, 0);
  EXPECT_LT(err, kMaxRelError);
  std::printf("%s prefill D=%d H=%d/%d n_q=%d n_kv=%d q_pos0=%d: rel error %.2e\n", cudnn ? "cuDNN" : "dense",
              pr.D, pr.H, pr.Hkv, pr.n_q, pr.n_kv, pr.q_pos0, err);
}

TEST(CudaAttention, DensePrefillMatchesCpu) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = std::random_device{}();
  check_dense_prefill(Problem(300, 300, 0, 8, 2, 128, seed++));
  check_dense_prefill(Problem(77, 400, 323, 8, 2, 128, seed++));  // a chunk after a cached prefix
  check_dense_prefill(Problem(1, 513, 512, 4, 4, 128, seed++));   // one row
  check_dense_prefill(Problem(300, 300, 0, 9, 3, 64, seed++));
  check_dense_prefill(Problem(150, 350, 200, 9, 3, 64, seed++));  // a chunk after a cached prefix
  check_dense_prefill(Problem(1, 513, 512, 3, 3, 64, seed++));    // one row
  check_dense_prefill(Problem(2000, 2000, 0, 4, 1, 128, seed++));  // long rows: many rescales
}

// cuDNN's fused attention (attention_cudnn.cpp) on the same problems: the largest power of two of the rows
// through cuDNN, the rest through our kernel; chunks after cached keys run a plan for a power-of-two key
// count with the real lengths as padding (keys past the last query hold random data and must not count);
// repeated plans (the cache) with new data and new lengths.
TEST(CudaAttention, CudnnDensePrefillMatchesCpu) {
  SKIP_WITHOUT_GPU();
  if (!cuda::cudnn_attention_available())
    GTEST_SKIP() << "cuDNN attention: " << cuda::cudnn_attention_status();
  std::printf("%s\n", cuda::cudnn_attention_status().c_str());
  uint32_t seed = std::random_device{}();
  check_dense_prefill(Problem(300, 300, 0, 8, 2, 128, seed++), true);
  check_dense_prefill(Problem(300, 300, 0, 8, 2, 128, seed++), true);  // the cached plan, new data
  check_dense_prefill(Problem(77, 400, 323, 8, 2, 128, seed++), true);
  check_dense_prefill(Problem(64, 500, 200, 8, 2, 128, seed++), true);    // keys past the last query
  check_dense_prefill(Problem(64, 1000, 200, 8, 2, 128, seed++), true);   // a plan for 512 keys, 264 real
  check_dense_prefill(Problem(100, 1000, 300, 8, 2, 128, seed++), true);  // the same plan, other lengths
  check_dense_prefill(Problem(1, 513, 512, 4, 4, 128, seed++), true);
  check_dense_prefill(Problem(300, 300, 0, 9, 3, 64, seed++), true);
  check_dense_prefill(Problem(150, 350, 200, 9, 3, 64, seed++), true);
  check_dense_prefill(Problem(2000, 2000, 0, 4, 1, 128, seed++), true);
}

void check_dense_decode(const Problem& pr) {
  DevProblem dp(pr);
  DevBuf<float> ws(cuda::decode_workspace_floats(pr.H, pr.D, cuda::kMaxDecodeSplits));
  CUDA_OK(cudaMemset(ws.ptr, 0, ws.n * sizeof(float)));
  // Twice: the second call checks that the first left the workspace's arrival counters at 0.
  CUDA_OK(cuda::attention_decode_dense(dp.p, {ws.ptr, int64_t(ws.n)}, nullptr));
  CUDA_OK(dp.out.poison());
  CUDA_OK(cuda::attention_decode_dense(dp.p, {ws.ptr, int64_t(ws.n)}, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint16_t> got;
  CUDA_OK(dp.out.download(got));
  std::vector<float> ref(size_t(pr.H) * pr.D);
  attention_naive(pr.cpu(ref.data()));
  int64_t unwritten = 0;
  const double err = rel_error(got, ref, &unwritten);
  EXPECT_EQ(unwritten, 0);
  EXPECT_LT(err, kMaxRelError);
  std::printf("dense decode D=%d H=%d/%d n_kv=%d: rel error %.2e\n", pr.D, pr.H, pr.Hkv, pr.n_kv, err);
}

TEST(CudaAttention, DenseDecodeMatchesCpu) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = std::random_device{}();
  check_dense_decode(Problem(1, 5000, 4999, 32, 8, 128, seed++));
  check_dense_decode(Problem(1, 37, 36, 8, 2, 128, seed++));
  check_dense_decode(Problem(1, 3001, 3000, 9, 3, 64, seed++));
  check_dense_decode(Problem(1, 70000, 69999, 8, 2, 128, seed++));
}

// ---------------------------------------------------------------------------------------------------------------
// HiP

cuda::HipParams to_gpu(const HipConfig& c) {
  cuda::HipParams h;
  h.k = c.k, h.block_q = c.block_q, h.block_k = c.block_k, h.stride_q = c.stride_q, h.stride_k = c.stride_k;
  h.n_sink = c.n_sink, h.window = c.window, h.refresh = c.refresh;
  return h;
}

struct DevMask {
  int32_t n_qblocks, Kb;
  DevBuf<int32_t> blocks, counts;
  DevMask(int32_t H, int32_t nqb, int32_t Kb_) : n_qblocks(nqb), Kb(Kb_), blocks(size_t(H) * nqb * Kb_), counts(size_t(H) * nqb) {}
  cuda::HipMaskDev dev() const { return {blocks.ptr, counts.ptr, n_qblocks, Kb}; }
  // Fixed-stride lists from the GPU, or uploaded from a CPU HipMask.
  std::vector<std::vector<int32_t>> download() const {
    std::vector<int32_t> b, c;
    blocks.download(b);
    counts.download(c);
    std::vector<std::vector<int32_t>> out(c.size());
    for (size_t r = 0; r < c.size(); ++r)
      out[r].assign(b.begin() + int64_t(r) * Kb, b.begin() + int64_t(r) * Kb + std::clamp(c[r], 0, Kb));
    return out;
  }
  cudaError_t upload(const HipMask& m) {
    std::vector<int32_t> b(size_t(m.n_head) * n_qblocks * Kb, -1), c(size_t(m.n_head) * n_qblocks);
    for (int32_t r = 0; r < m.n_head * n_qblocks; ++r) {
      c[r] = m.indptr[r + 1] - m.indptr[r];
      std::copy(m.indices.begin() + m.indptr[r], m.indices.begin() + m.indptr[r + 1], b.begin() + int64_t(r) * Kb);
    }
    cudaError_t e = blocks.upload(b);
    return e != cudaSuccess ? e : counts.upload(c);
  }
};

struct MaskAgreement {
  int64_t rows = 0, exact_rows = 0, cpu_blocks = 0, found = 0;
  double min_recall = 1.0;
  double recall() const { return cpu_blocks ? double(found) / double(cpu_blocks) : 1.0; }
};

// GPU mask vs the CPU estimator for every (head, query block).
MaskAgreement compare_masks(const HipConfig& cfg, const Problem& pr, const std::vector<std::vector<int32_t>>& gpu) {
  const AttentionParams cp = pr.cpu(nullptr);
  const int32_t nqb = (pr.n_q + cfg.block_q - 1) / cfg.block_q;
  MaskAgreement a;
  std::vector<MaskAgreement> per(size_t(pr.H) * nqb);
  pool().parallel_for(int64_t(pr.H) * nqb, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int32_t h = int32_t(r / nqb), m = int32_t(r % nqb);
      const std::vector<int32_t> want = hip_estimate_blocks(cfg, cp, h, m);
      const std::vector<int32_t>& got = gpu[r];
      const std::set<int32_t> gs(got.begin(), got.end());
      int64_t f = 0;
      for (int32_t x : want) f += gs.count(x);
      MaskAgreement& s = per[r];
      s.rows = 1;
      s.exact_rows = got == want;
      s.cpu_blocks = int64_t(want.size());
      s.found = f;
      s.min_recall = want.empty() ? 1.0 : double(f) / double(want.size());
      EXPECT_TRUE(std::is_sorted(got.begin(), got.end()) && gs.size() == got.size()) << "head " << h << " block " << m;
      EXPECT_EQ(got.size(), want.size()) << "head " << h << " block " << m;
    }
  });
  for (const auto& s : per) {
    a.rows += s.rows, a.exact_rows += s.exact_rows, a.cpu_blocks += s.cpu_blocks, a.found += s.found;
    a.min_recall = std::min(a.min_recall, s.min_recall);
  }
  return a;
}

MaskAgreement check_estimate(const HipConfig& cfg, const Problem& pr, const char* what) {
  DevProblem dp(pr);
  const int32_t nqb = (pr.n_q + cfg.block_q - 1) / cfg.block_q, Kb = cfg.k / cfg.block_k;
  DevMask mask(pr.H, nqb, Kb);
  EXPECT_EQ(cudaMemset(mask.blocks.ptr, 0xFF, mask.blocks.n * 4), cudaSuccess);
  EXPECT_EQ(cudaMemset(mask.counts.ptr, 0xFF, mask.counts.n * 4), cudaSuccess);
  EXPECT_EQ(cuda::hip_estimate_mask(to_gpu(cfg), dp.p, mask.dev(), nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const MaskAgreement a = compare_masks(cfg, pr, mask.download());
  std::printf("hip estimate [%s, k %d, b_k %d] D=%d H=%d/%d n_q=%d n_kv=%d: %lld/%lld (head, block) masks identical, block "
              "recall %.5f (min %.4f)\n",
              what, cfg.k, cfg.block_k, pr.D, pr.H, pr.Hkv, pr.n_q, pr.n_kv, (long long)a.exact_rows, (long long)a.rows,
              a.recall(), a.min_recall);
  return a;
}

// Configurations past the default's candidates in registers (attention_cuda.cu est_dispatch), so that every
// estimation kernel the default runs is tested: k / block_k = 512 (prefill: hip_estimate_kernel, state in
// shared memory; decode: the cluster kernel's 4 x 256 form), 1024 (decode: hip_estimate_kernel) and 3 sampled
// keys per block (both: hip_estimate_kernel).
struct EstConfigs {
  HipConfig base;   // paper defaults: k / block_k = 256
  HipConfig small;  // a small k: deep trees at a test-sized context
  HipConfig k1024, k2048, bk3;
  EstConfigs() {
    small.k = 64, small.window = 32, small.n_sink = 4;
    k1024.k = 1024;
    k2048.k = 2048;
    bk3.block_k = 3, bk3.k = 510, bk3.n_sink = 15;
  }
};

TEST(CudaHip, EstimateIdenticalWhenScoresAreExact) {
  SKIP_WITHOUT_GPU();
  // Quarter-integer Q and K: every product and partial sum is exact in fp32 on both sides, so the scores are
  // bit-identical and so must the selections be, including the many exact ties (tie rule).
  uint32_t seed = std::random_device{}();
  const EstConfigs c;
  // Prefill, one CTA per (head, query block): the cluster kernel's selection in one CTA (k 512, small k) and
  // hip_estimate_kernel (k 1024, 3 sampled keys per block); D 128 and 64.
  for (const HipConfig* cfg : {&c.base, &c.k1024, &c.bk3}) {
    for (int D : {128, 64}) {
      const MaskAgreement a = check_estimate(*cfg, Problem(2048 + 17, 2048 + 17, 0, 4, 2, D, seed++, Fill::kQuarterInts), "exact");
      EXPECT_EQ(a.exact_rows, a.rows);
    }
  }
  {
    const MaskAgreement a = check_estimate(c.small, Problem(3000, 3100, 100, 4, 1, 128, seed++, Fill::kQuarterInts), "exact small k");
    EXPECT_EQ(a.exact_rows, a.rows);
  }
  // A prefill chunk with few (head, query block) pairs (2 heads x 8 blocks: at most half the SMs) takes the
  // decode estimators (cluster kernel, or hip_estimate_kernel with 512 threads) with n_q > 1.
  for (const HipConfig* cfg : {&c.base, &c.small, &c.k1024, &c.k2048, &c.bk3}) {
    const MaskAgreement a = check_estimate(*cfg, Problem(256, 3000, 2744, 2, 1, 128, seed++, Fill::kQuarterInts), "exact few blocks");
    EXPECT_EQ(a.exact_rows, a.rows);
  }
  {
    const MaskAgreement a = check_estimate(c.base, Problem(256, 3000, 2744, 2, 1, 64, seed++, Fill::kQuarterInts), "exact few blocks");
    EXPECT_EQ(a.exact_rows, a.rows);
  }
  // Decode (one row, window shrunk by refresh - 1): the cluster kernel (8 x 128 and 4 x 256) and
  // hip_estimate_kernel (k 2048, 3 sampled keys per block), D 128 and 64, and a deep tree (small k).
  for (const HipConfig* cfg : {&c.base, &c.k1024, &c.k2048, &c.bk3}) {
    const MaskAgreement d = check_estimate(*cfg, Problem(1, 9000, 8999, 8, 2, 128, seed++, Fill::kQuarterInts), "exact decode");
    EXPECT_EQ(d.exact_rows, d.rows);
    const MaskAgreement d64 = check_estimate(*cfg, Problem(1, 30000, 29999, 6, 2, 64, seed++, Fill::kQuarterInts), "exact decode");
    EXPECT_EQ(d64.exact_rows, d64.rows);
  }
  const MaskAgreement ds = check_estimate(c.small, Problem(1, 5000, 4999, 4, 1, 128, seed++, Fill::kQuarterInts), "exact decode small k");
  EXPECT_EQ(ds.exact_rows, ds.rows);
}

TEST(CudaHip, EstimateRecallOnRandomInputs) {
  SKIP_WITHOUT_GPU();
  // Random bf16 inputs: scores differ from the CPU's in the last bits; a different choice among near-tied
  // children changes that node's later search. Bound: 0.97 mean recall of the CPU's blocks (each flip
  // affects one node of 256, and flips need near-ties at the threshold).
  uint32_t seed = std::random_device{}();
  const EstConfigs c;
  for (Fill f : {Fill::kNormal, Fill::kSmooth}) {
    for (const HipConfig* cfg : {&c.base, &c.k1024}) {  // the one-CTA selection, hip_estimate_kernel
      const MaskAgreement a = check_estimate(*cfg, Problem(4096, 4096, 0, 8, 2, 128, seed++, f), f == Fill::kNormal ? "normal" : "smooth");
      EXPECT_GE(a.recall(), 0.97);
    }
    for (const HipConfig* cfg : {&c.base, &c.k1024, &c.k2048}) {  // the cluster kernel (8 x 128, 4 x 256), hip_estimate_kernel
      const MaskAgreement d = check_estimate(*cfg, Problem(1, 20000, 19999, 8, 2, 128, seed++, f), "decode");
      EXPECT_GE(d.recall(), 0.97);
    }
  }
}

// HiP prefill attention with the CPU's mask uploaded: isolates the sparse attention from the estimate.
// Runs hip_attention_prefill (variant) over `mask` and sets *err to the output's relative error against `ref`
// (infinity when a CUDA call failed); every output element must have been written.
void run_hip_prefill(const HipConfig& cfg, DevProblem& dp, DevMask& mask, int variant, const std::vector<float>& ref,
                     double* err) {
  *err = INFINITY;
  CUDA_OK(cuda::hip_attention_prefill(to_gpu(cfg), dp.p, mask.dev(), nullptr, variant));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint16_t> got;
  CUDA_OK(dp.out.download(got));
  int64_t unwritten = 0;
  *err = rel_error(got, ref, &unwritten);
  EXPECT_EQ(unwritten, 0);
}

void check_hip_prefill(const HipConfig& cfg, const Problem& pr, bool gpu_mask, int variant = 0) {
  DevProblem dp(pr);
  const int32_t nqb = (pr.n_q + cfg.block_q - 1) / cfg.block_q, Kb = cfg.k / cfg.block_k;
  std::vector<float> ref(size_t(pr.n_q) * pr.H * pr.D);
  HipMask cpu_mask;
  hip_attention(cfg, pr.cpu(ref.data()), cpu_mask, true, pool());
  DevMask mask(pr.H, nqb, Kb);
  if (gpu_mask)
    CUDA_OK(cuda::hip_estimate_mask(to_gpu(cfg), dp.p, mask.dev(), nullptr));
  else
    CUDA_OK(mask.upload(cpu_mask));
  double err;
  run_hip_prefill(cfg, dp, mask, variant, ref, &err);
  EXPECT_LT(err, kMaxRelError);
  std::printf("hip prefill (%s mask) b_q=%d variant %d D=%d H=%d/%d n_q=%d n_kv=%d: rel error %.2e\n",
              gpu_mask ? "GPU" : "CPU", cfg.block_q, variant, pr.D, pr.H, pr.Hkv, pr.n_q, pr.n_kv, err);
}

TEST(CudaHip, PrefillAttentionMatchesCpu) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = std::random_device{}();
  HipConfig cfg;
  HipConfig bq64;  // b_q 64 with 16 sampled rows (stride 4)
  bq64.block_q = 64, bq64.stride_q = 4;
  HipConfig dense_equiv;  // k >= T: HiP is dense attention
  dense_equiv.k = 8192;
  // Variant 0 (the default: at b_q 32 and head dim 128 the GQA-shared kernel, 2 heads per CTA; elsewhere the
  // per-head kernel) and 3 (the per-head kernel everywhere). G = 4, 3, 1 (an idle head slot), 8 (4 CTAs per
  // group), 5 (a last CTA with one head), 2 (b_q 64); partial query blocks (3000, 2500, 1500 rows), chunks
  // after a prefix, a context shorter than sink + window, k >= T (kb_stride 4096: the GQA-shared kernel's lists
  // do not fit in shared memory, so the default falls back to the per-head kernel).
  for (int variant : {0, 3}) {
    check_hip_prefill(cfg, Problem(3000, 3000, 0, 8, 2, 128, seed++), false, variant);
    check_hip_prefill(cfg, Problem(1000, 4000, 3000, 8, 2, 128, seed++), false, variant);  // chunk after a prefix
    check_hip_prefill(cfg, Problem(2500, 2500, 0, 9, 3, 64, seed++), false, variant);
    check_hip_prefill(cfg, Problem(300, 300, 0, 4, 1, 128, seed++), false, variant);  // short: sink + window only
    check_hip_prefill(cfg, Problem(1500, 1500, 0, 4, 4, 128, seed++), false, variant);
    check_hip_prefill(cfg, Problem(1500, 1500, 0, 16, 2, 128, seed++), false, variant);
    check_hip_prefill(cfg, Problem(1500, 1500, 0, 10, 2, 128, seed++), false, variant);
    check_hip_prefill(cfg, Problem(700, 2200, 1500, 10, 2, 64, seed++), false, variant);
    check_hip_prefill(cfg, Problem(4096, 4096, 0, 8, 2, 128, seed++, Fill::kSmooth), true, variant);  // whole GPU pipeline
    check_hip_prefill(cfg, Problem(1000, 4000, 3000, 8, 2, 128, seed++, Fill::kSmooth), true, variant);
    check_hip_prefill(bq64, Problem(3000, 3000, 0, 8, 2, 128, seed++), false, variant);
    check_hip_prefill(bq64, Problem(1000, 4000, 3000, 8, 2, 128, seed++, Fill::kSmooth), true, variant);
    check_hip_prefill(bq64, Problem(2500, 2500, 0, 9, 3, 64, seed++), false, variant);
    check_hip_prefill(bq64, Problem(2000, 2000, 0, 8, 4, 128, seed++), false, variant);
    check_hip_prefill(bq64, Problem(1000, 2500, 1500, 6, 3, 64, seed++), false, variant);
    check_hip_prefill(dense_equiv, Problem(2000, 2000, 0, 4, 2, 128, seed++), false, variant);
    check_hip_prefill(dense_equiv, Problem(2000, 2000, 0, 4, 1, 128, seed++), false, variant);
  }
  // Numbers of removed variants are rejected (attention_cuda.h), not run as something else.
  Problem pr(64, 64, 0, 4, 2, 128, seed++);
  DevProblem dp(pr);
  DevMask mask(pr.H, 2, cfg.k / cfg.block_k);
  for (int variant : {1, 2, 4, 13, -1})
    EXPECT_EQ(cuda::hip_attention_prefill(to_gpu(cfg), dp.p, mask.dev(), nullptr, variant), cudaErrorInvalidValue)
        << "variant " << variant;
}

// HiP prefill attention over hand-made masks, against a direct double-precision reference of the three
// disjoint key sets per row (sink keys <= t - w, the head's selected blocks' keys <= t - w, the window (t - w,
// t]): the heads of a KV group with identical, disjoint, partly overlapping masks and masks of different
// lengths (some empty), so the GQA-shared kernel's union (exclusive and shared blocks, membership masks) is
// exercised in every form.
enum class MaskMode { kIdentical, kDisjoint, kOverlap, kRagged };

HipMask make_mask(const HipConfig& cfg, const Problem& pr, MaskMode mode, uint32_t seed) {
  std::mt19937 rng(seed);
  const int32_t nqb = (pr.n_q + cfg.block_q - 1) / cfg.block_q, Kb = cfg.k / cfg.block_k, G = pr.H / pr.Hkv;
  std::vector<std::vector<int32_t>> lists(size_t(pr.H) * nqb);
  for (int32_t m = 0; m < nqb; ++m) {
    const int32_t t_max = pr.q_pos0 + std::min(pr.n_q, (m + 1) * cfg.block_q) - 1;
    const int32_t lo_b = cfg.n_sink / cfg.block_k;
    const int32_t hi_b = std::max(lo_b, (t_max + 1 - cfg.window + cfg.block_k - 1) / cfg.block_k);  // may straddle t_max - w
    std::vector<int32_t> avail;
    for (int32_t b = lo_b; b < hi_b; ++b) avail.push_back(b);
    for (int32_t kv = 0; kv < pr.Hkv; ++kv) {
      std::shuffle(avail.begin(), avail.end(), rng);
      const size_t n = std::min<size_t>(Kb, avail.size());
      for (int32_t s = 0; s < G; ++s) {
        std::vector<int32_t> l;
        switch (mode) {
          case MaskMode::kIdentical: l.assign(avail.begin(), avail.begin() + n); break;
          case MaskMode::kDisjoint: {
            const size_t per = std::min<size_t>(Kb, avail.size() / G);
            l.assign(avail.begin() + s * per, avail.begin() + (s + 1) * per);
            break;
          }
          case MaskMode::kOverlap: {  // half from a common pool, half of the head's own draw
            l.assign(avail.begin(), avail.begin() + n / 2);
            std::vector<int32_t> own(avail.begin() + n / 2, avail.end());
            std::shuffle(own.begin(), own.end(), rng);
            l.insert(l.end(), own.begin(), own.begin() + std::min(own.size(), n - n / 2));
            break;
          }
          case MaskMode::kRagged: {  // counts 0 .. n, overlapping at random
            std::vector<int32_t> own = avail;
            std::shuffle(own.begin(), own.end(), rng);
            const size_t c = s == 1 ? 0 : std::uniform_int_distribution<size_t>(0, n)(rng);
            l.assign(own.begin(), own.begin() + c);
            break;
          }
        }
        std::sort(l.begin(), l.end());
        lists[size_t(kv * G + s) * nqb + m] = std::move(l);
      }
    }
  }
  HipMask mask;
  mask.n_head = pr.H, mask.n_qblocks = nqb;
  mask.indptr.push_back(0);
  for (const auto& l : lists) {
    mask.indices.insert(mask.indices.end(), l.begin(), l.end());
    mask.indptr.push_back(int32_t(mask.indices.size()));
  }
  return mask;
}

std::vector<float> hip_prefill_reference(const HipConfig& cfg, const Problem& pr, const HipMask& mask) {
  std::vector<float> out(size_t(pr.n_q) * pr.H * pr.D);
  const int32_t G = pr.H / pr.Hkv, w = cfg.window;
  const double scale = 1.0 / std::sqrt(double(pr.D));
  pool().parallel_for(int64_t(pr.H) * pr.n_q, 16, [&](int64_t b, int64_t e) {
    std::vector<int32_t> keys;
    std::vector<double> sc, acc(pr.D);
    for (int64_t r = b; r < e; ++r) {
      const int32_t h = int32_t(r / pr.n_q), i = int32_t(r % pr.n_q), t = pr.q_pos0 + i, kv = h / G;
      const int32_t m = i / cfg.block_q, row = h * mask.n_qblocks + m;
      keys.clear();
      for (int32_t k = 0; k < cfg.n_sink && k <= t - w; ++k) keys.push_back(k);
      for (int32_t j = mask.indptr[row]; j < mask.indptr[row + 1]; ++j)
        for (int32_t k = mask.indices[j] * cfg.block_k; k < (mask.indices[j] + 1) * cfg.block_k; ++k)
          if (k <= t - w && k < pr.n_kv) keys.push_back(k);
      for (int32_t k = std::max(0, t - w + 1); k <= t; ++k) keys.push_back(k);
      sc.assign(keys.size(), 0.0);
      double mx = -1e300;
      const float* q = pr.q_f.data() + size_t(i) * pr.H * pr.D + size_t(h) * pr.D;
      for (size_t n = 0; n < keys.size(); ++n) {
        const uint16_t* k = pr.k_h.data() + (size_t(kv) * pr.n_kv + keys[n]) * pr.D;
        double d = 0;
        for (int32_t x = 0; x < pr.D; ++x) d += double(q[x]) * fp16_to_fp32(k[x]);
        sc[n] = d * scale;
        mx = std::max(mx, sc[n]);
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      double l = 0;
      for (size_t n = 0; n < keys.size(); ++n) {
        const double pw = std::exp(sc[n] - mx);
        l += pw;
        const uint16_t* v = pr.v_h.data() + (size_t(kv) * pr.n_kv + keys[n]) * pr.D;
        for (int32_t x = 0; x < pr.D; ++x) acc[x] += pw * fp16_to_fp32(v[x]);
      }
      float* o = out.data() + size_t(i) * pr.H * pr.D + size_t(h) * pr.D;
      for (int32_t x = 0; x < pr.D; ++x) o[x] = l > 0 ? float(acc[x] / l) : 0.f;
    }
  });
  return out;
}

void check_hip_prefill_mask(const HipConfig& cfg, const Problem& pr, MaskMode mode, int variant, uint32_t seed) {
  DevProblem dp(pr);
  const int32_t nqb = (pr.n_q + cfg.block_q - 1) / cfg.block_q, Kb = cfg.k / cfg.block_k;
  const HipMask m = make_mask(cfg, pr, mode, seed);
  const std::vector<float> ref = hip_prefill_reference(cfg, pr, m);
  DevMask mask(pr.H, nqb, Kb);
  CUDA_OK(mask.upload(m));
  double err;
  run_hip_prefill(cfg, dp, mask, variant, ref, &err);
  EXPECT_LT(err, kMaxRelError) << "mode " << int(mode) << " variant " << variant;
  std::printf("hip prefill (hand-made mask, mode %d) b_q=%d variant %d D=%d H=%d/%d n_q=%d n_kv=%d: rel error %.2e\n",
              int(mode), cfg.block_q, variant, pr.D, pr.H, pr.Hkv, pr.n_q, pr.n_kv, err);
}

TEST(CudaHip, PrefillAttentionSharedMasks) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = std::random_device{}();
  HipConfig cfg;
  HipConfig small;  // k 64: many query blocks with full lists and few candidates, so masks collide often
  small.k = 64, small.window = 64, small.n_sink = 8;
  HipConfig bq64;
  bq64.block_q = 64, bq64.stride_q = 4;
  for (MaskMode mode : {MaskMode::kIdentical, MaskMode::kDisjoint, MaskMode::kOverlap, MaskMode::kRagged}) {
    for (int variant : {0, 3}) {  // the default (GQA-shared at b_q 32, head dim 128) and the per-head kernel
      seed += 2;
      check_hip_prefill_mask(cfg, Problem(1000, 1000, 0, 16, 2, 128, seed), mode, variant, seed + 1);
      seed += 2;
      check_hip_prefill_mask(cfg, Problem(2000, 2000, 0, 8, 2, 128, seed), mode, variant, seed + 1);
      seed += 2;
      check_hip_prefill_mask(small, Problem(777, 1500, 723, 9, 3, 64, seed), mode, variant, seed + 1);
      seed += 2;
      check_hip_prefill_mask(bq64, Problem(1100, 1100, 0, 4, 2, 128, seed), mode, variant, seed + 1);
    }
  }
}

void check_hip_decode(const HipConfig& cfg, const Problem& pr) {
  DevProblem dp(pr);
  const int32_t Kb = cfg.k / cfg.block_k;
  std::vector<float> ref(size_t(pr.H) * pr.D);
  HipMask cpu_mask;
  hip_attention(cfg, pr.cpu(ref.data()), cpu_mask, true, pool());
  DevMask mask(pr.H, 1, Kb);
  CUDA_OK(mask.upload(cpu_mask));
  DevBuf<float> ws(cuda::decode_workspace_floats(pr.H, pr.D, cuda::kMaxDecodeSplits));
  CUDA_OK(cudaMemset(ws.ptr, 0, ws.n * sizeof(float)));
  CUDA_OK(cuda::hip_attention_decode(to_gpu(cfg), dp.p, mask.dev(), {ws.ptr, int64_t(ws.n)}, nullptr));
  CUDA_OK(dp.out.poison());
  CUDA_OK(cuda::hip_attention_decode(to_gpu(cfg), dp.p, mask.dev(), {ws.ptr, int64_t(ws.n)}, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint16_t> got;
  CUDA_OK(dp.out.download(got));
  int64_t unwritten = 0;
  const double err = rel_error(got, ref, &unwritten);
  EXPECT_EQ(unwritten, 0);
  EXPECT_LT(err, kMaxRelError);
  std::printf("hip decode D=%d H=%d/%d n_kv=%d: rel error %.2e\n", pr.D, pr.H, pr.Hkv, pr.n_kv, err);
}

TEST(CudaHip, DecodeAttentionMatchesCpu) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = std::random_device{}();
  HipConfig cfg;
  check_hip_decode(cfg, Problem(1, 20000, 19999, 32, 8, 128, seed++));
  check_hip_decode(cfg, Problem(1, 600, 599, 8, 2, 128, seed++));  // shorter than sink + k + window
  check_hip_decode(cfg, Problem(1, 5000, 4999, 9, 3, 64, seed++));
}

// ---------------------------------------------------------------------------------------------------------------
// Real SmolLM2 activations, dumped by bench/gpu/dump_activations (git-ignored folder gpu_act/ at the source
// root, or $HIPSERVE_GPU_ACT). Format per layer file: int32 header {n_q, n_kv, q_pos0, H, Hkv, D}, then q fp32
// [n_q][H*D], k fp16 [Hkv][n_kv][D], v fp16 [Hkv][n_kv][D].

std::vector<std::string> activation_files() {
  const char* env = std::getenv("HIPSERVE_GPU_ACT");
  const std::string dir = env ? env : std::string(HIPSERVE_SOURCE_DIR) + "/gpu_act";
  std::vector<std::string> files;
  for (int layer = 0; layer < 64; ++layer) {
    const std::string f = dir + "/layer" + std::to_string(layer) + ".bin";
    if (std::ifstream(f).good()) files.push_back(f);
  }
  return files;
}

bool load_activations(const std::string& path, std::unique_ptr<Problem>& out) {
  std::ifstream in(path, std::ios::binary);
  int32_t hdr[6];
  if (!in.read(reinterpret_cast<char*>(hdr), sizeof(hdr))) return false;
  auto pr = std::make_unique<Problem>(hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5]);
  std::vector<float> q(size_t(hdr[0]) * hdr[3] * hdr[5]);
  std::vector<uint16_t> k(size_t(hdr[4]) * hdr[1] * hdr[5]), v(k.size());
  if (!in.read(reinterpret_cast<char*>(q.data()), q.size() * 4) || !in.read(reinterpret_cast<char*>(k.data()), k.size() * 2) ||
      !in.read(reinterpret_cast<char*>(v.data()), v.size() * 2))
    return false;
  pr->q_bf.resize(q.size());
  for (size_t i = 0; i < q.size(); ++i) pr->q_bf[i] = fp32_to_bf16(q[i]);
  pr->k_bf.resize(k.size());
  pr->v_bf.resize(v.size());
  for (size_t i = 0; i < k.size(); ++i) pr->k_bf[i] = fp32_to_bf16(fp16_to_fp32(k[i]));
  for (size_t i = 0; i < v.size(); ++i) pr->v_bf[i] = fp32_to_bf16(fp16_to_fp32(v[i]));
  pr->to_cpu();
  out = std::move(pr);
  return true;
}

TEST(CudaRealActivations, AllKernelsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const std::vector<std::string> files = activation_files();
  if (files.empty()) GTEST_SKIP() << "no dumped activations (run bench/gpu/dump_activations; see bench/gpu/run.sh)";
  HipConfig cfg;
  for (const std::string& f : files) {
    std::unique_ptr<Problem> pr;
    ASSERT_TRUE(load_activations(f, pr)) << f;
    std::printf("%s\n", f.c_str());
    check_dense_prefill(*pr);
    const MaskAgreement a = check_estimate(cfg, *pr, "real");
    EXPECT_GE(a.recall(), 0.97);
    check_hip_prefill(cfg, *pr, false);
    check_hip_prefill(cfg, *pr, true);
    check_hip_prefill(cfg, *pr, true, 3);  // the per-head kernel
    HipConfig k1024;                        // K_b 512: the estimator with its state in shared memory
    k1024.k = 1024;
    EXPECT_GE(check_estimate(k1024, *pr, "real").recall(), 0.97);
    // Decode: the last row alone.
    Problem last(1, pr->n_kv, pr->n_kv - 1, pr->H, pr->Hkv, pr->D);
    last.q_bf.assign(pr->q_bf.end() - int64_t(pr->H) * pr->D, pr->q_bf.end());
    last.k_bf = pr->k_bf;
    last.v_bf = pr->v_bf;
    last.to_cpu();
    check_dense_decode(last);
    check_hip_decode(cfg, last);
    const MaskAgreement d = check_estimate(cfg, last, "real decode");
    EXPECT_GE(d.recall(), 0.97);
  }
}

}  // namespace
}  // namespace hs
