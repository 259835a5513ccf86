// The small kernels of the CUDA model one by one against the CPU ops (llama_cuda_kernels.h): embedding,
// RMSNorm, RoPE + K/V store, SwiGLU, sampling and the decode GEMV, on fresh random inputs and on real SmolLM2
// weights and activations (taps of the CPU forward pass). Skipped without a GPU.
//
// Bounds: the kernels round their outputs to bf16 (8 significant bits), the CPU keeps fp32; an output is
// correct when it is the CPU's value rounded to bf16, up to one bf16 step (2^-8 relative) where the fp32
// results straddle a rounding boundary, plus what the GPU's own fp32 arithmetic (sincosf, __expf, fp32 sum
// of squares) adds: far below that step.
#include "backends/cuda/llama_cuda_kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "backends/cpu/matmul.h"
#include "backends/cuda/llama_cuda.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/test_model.h"
#include "ops/activations.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "util/common.h"
#include "util/thread_pool.h"

namespace hs {
namespace {

namespace kt = cuda::kernel_test;

#define HS_REQUIRE_GPU()                                    \
  do {                                                      \
    std::string why;                                        \
    if (!cuda::device_available(&why)) GTEST_SKIP() << why; \
  } while (0)

std::vector<float> randn(size_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n, 0.0f);
  for (auto& x : v) x = d(rng);
  return v;
}

// Worst |gpu - cpu| in units of the bf16 step at |cpu| (2^-8 |cpu|, floored at `floor_abs` for values near 0).
double worst_bf16_steps(const std::vector<float>& gpu, const std::vector<float>& cpu, double floor_abs) {
  EXPECT_EQ(gpu.size(), cpu.size());
  double worst = 0;
  for (size_t i = 0; i < cpu.size() && i < gpu.size(); ++i) {
    const double step = std::max(std::ldexp(std::fabs(double(cpu[i])), -8), floor_abs);
    worst = std::max(worst, std::fabs(double(gpu[i]) - cpu[i]) / step);
  }
  return worst;
}

// CPU RMSNorm of x with w; the GPU result must be within one bf16 step.
void check_rmsnorm(const std::vector<float>& x, int rows, int E, const std::vector<float>& w, float eps,
                   const char* what) {
  std::vector<float> ref(x.size(), 0.0f);
  rms_norm(x.data(), E, w.data(), ref.data(), E, rows, E, eps);
  for (const int threads : {256, 1024}) {  // prefill rows, decode row
    const std::vector<float> got = kt::rmsnorm(x, rows, E, w, eps, threads);
    const double steps = worst_bf16_steps(got, ref, 1e-6);
    std::printf("  rmsnorm %s (%d x %d, %d threads): worst %.2f bf16 steps\n", what, rows, E, threads, steps);
    EXPECT_LE(steps, 1.01) << what << ", " << threads << " threads";
  }
}

TEST(CudaKernels, EmbedCopiesTheBf16RowsExactly) {
  HS_REQUIRE_GPU();
  const int V = 1000, E = 576;
  std::vector<uint16_t> table(size_t(V) * E);
  const std::vector<float> vals = randn(table.size(), 0.05f, 1);
  for (size_t i = 0; i < table.size(); ++i) table[i] = fp32_to_bf16(vals[i]);
  const std::vector<int32_t> toks = {0, 999, 17, 17, 512};
  const std::vector<float> got = kt::embed(toks, table, E);
  for (size_t r = 0; r < toks.size(); ++r)
    for (int e = 0; e < E; ++e)
      ASSERT_EQ(got[r * E + e], bf16_to_fp32(table[size_t(toks[r]) * E + e])) << "row " << r << " col " << e;
}

TEST(CudaKernels, RmsNormMatchesCpuOnRandomInputs) {
  HS_REQUIRE_GPU();
  for (const int E : {64, 576, 4096}) {
    const int rows = 7;
    std::vector<float> x = randn(size_t(rows) * E, 3.0f, uint32_t(E));
    x[5] = 200.0f;  // an outlier channel, as real residual streams have
    const std::vector<float> w = randn(size_t(E), 1.0f, uint32_t(E) + 1);
    check_rmsnorm(x, rows, E, w, 1e-5f, "random");
  }
}

TEST(CudaKernels, RopeStoreMatchesCpuRope) {
  HS_REQUIRE_GPU();
  struct Case {
    int n_head, n_head_kv, head_dim, n_rot;
    RopeType type;
    float base;
    bool bias;
    int pos0;
  };
  const Case cases[] = {{9, 3, 64, 64, RopeType::Norm, 100000.0f, false, 0},      // SmolLM2
                        {8, 2, 128, 128, RopeType::NeoX, 1000000.0f, true, 3000},  // qwen2-like, with biases
                        {4, 4, 128, 64, RopeType::Norm, 10000.0f, false, 70000}};  // partial rotation, far position
  for (const Case& c : cases) {
    const int rows = 5, QD = c.n_head * c.head_dim, KVD = c.n_head_kv * c.head_dim, ld = QD + 2 * KVD;
    const int n_ctx = c.pos0 + rows + 3;
    RopeParams rp;
    rp.type = c.type;
    rp.n_rot = c.n_rot;
    rp.freq_base = c.base;
    const std::vector<float> qkv = randn(size_t(rows) * ld, 2.0f, uint32_t(c.head_dim + c.pos0));
    const std::vector<float> bias = c.bias ? randn(size_t(ld), 0.5f, 9) : std::vector<float>();
    const kt::RopeOut got = kt::rope_store(qkv, bias, rows, c.n_head, c.n_head_kv, c.head_dim, rp, c.pos0, n_ctx);
    // A decode row's shape (8 CTAs share the columns) writes exactly the same values.
    const kt::RopeOut wide = kt::rope_store(qkv, bias, rows, c.n_head, c.n_head_kv, c.head_dim, rp, c.pos0, n_ctx, 8);
    EXPECT_EQ(wide.q, got.q);
    EXPECT_EQ(wide.k, got.k);
    EXPECT_EQ(wide.v, got.v);

    // CPU: bias, then rope_inplace on the q and k parts (as Model::forward), v as is.
    std::vector<float> q(size_t(rows) * QD, 0.0f), k(size_t(rows) * KVD, 0.0f), v(size_t(rows) * KVD, 0.0f);
    std::vector<int32_t> pos(size_t(rows), 0);
    for (int r = 0; r < rows; ++r) {
      pos[size_t(r)] = c.pos0 + r;
      for (int i = 0; i < ld; ++i) {
        const float x = qkv[size_t(r) * ld + i] + (c.bias ? bias[size_t(i)] : 0.0f);
        if (i < QD) q[size_t(r) * QD + i] = x;
        else if (i < QD + KVD) k[size_t(r) * KVD + i - QD] = x;
        else v[size_t(r) * KVD + i - QD - KVD] = x;
      }
    }
    rope_inplace(q.data(), rows, QD, c.n_head, c.head_dim, pos.data(), rp);
    rope_inplace(k.data(), rows, KVD, c.n_head_kv, c.head_dim, pos.data(), rp);
    // Cache layout [kv_head][position][head_dim]; only the written positions compared, the rest must be 0.
    std::vector<float> k_ref(got.k.size(), 0.0f), v_ref(got.v.size(), 0.0f);
    for (int r = 0; r < rows; ++r)
      for (int g = 0; g < c.n_head_kv; ++g)
        for (int d = 0; d < c.head_dim; ++d) {
          const size_t at = (size_t(g) * n_ctx + size_t(c.pos0 + r)) * c.head_dim + d;
          k_ref[at] = k[size_t(r) * KVD + g * c.head_dim + d];
          v_ref[at] = v[size_t(r) * KVD + g * c.head_dim + d];
        }
    // sincosf of a large angle on the GPU and in glibc may differ by an ulp of the angle's reduction: allow a
    // small absolute term (1e-4 of the inputs' scale) besides the bf16 step.
    const double sq = worst_bf16_steps(got.q, q, 2e-4), sk = worst_bf16_steps(got.k, k_ref, 2e-4),
                 sv = worst_bf16_steps(got.v, v_ref, 1e-6);
    std::printf("  rope %s D=%d n_rot=%d pos0=%d%s: worst bf16 steps q %.2f k %.2f v %.2f\n",
                c.type == RopeType::NeoX ? "neox" : "norm", c.head_dim, c.n_rot, c.pos0, c.bias ? " +bias" : "", sq,
                sk, sv);
    EXPECT_LE(sq, 1.01);
    EXPECT_LE(sk, 1.01);
    EXPECT_LE(sv, 1.01);
  }
}

TEST(CudaKernels, SwigluMatchesCpu) {
  HS_REQUIRE_GPU();
  const int rows = 3, FF = 1536;
  std::vector<float> gu = randn(size_t(rows) * 2 * FF, 4.0f, 5);
  gu[0] = 40.0f, gu[1] = -40.0f, gu[2] = 0.0f;  // saturated and zero gates
  std::vector<float> ref(size_t(rows) * FF, 0.0f);
  for (int r = 0; r < rows; ++r)
    swiglu(gu.data() + size_t(r) * 2 * FF, gu.data() + size_t(r) * 2 * FF + FF, ref.data() + size_t(r) * FF, FF);
  const std::vector<float> got = kt::swiglu(gu, rows, FF);
  const double steps = worst_bf16_steps(got, ref, 1e-6);
  std::printf("  swiglu: worst %.2f bf16 steps\n", steps);
  EXPECT_LE(steps, 1.01);
}

TEST(CudaKernels, GreedySamplingIsArgmaxWithLowestIndexOnTies) {
  HS_REQUIRE_GPU();
  std::vector<float> l = randn(49152, 3.0f, 11);
  const int32_t best = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
  EXPECT_EQ(kt::sample(l, 0.0f, 0), best);
  l[100] = l[40000] = l[30000] = 1000.0f;  // a three-way tie
  EXPECT_EQ(kt::sample(l, 0.0f, 0), 100);
  l.assign(5, -INFINITY);  // all masked: token 0, never out of range
  EXPECT_EQ(kt::sample(l, 0.0f, 0), 0);
  // Temperature: equal logits are drawn uniformly; a 30-nat lead always wins.
  std::vector<float> flat(4, 1.0f);
  int counts[4] = {};
  const int n = 4000;
  for (int s = 0; s < n; ++s) counts[kt::sample(flat, 0.7f, uint64_t(s) * 0x9e37 + 5)]++;
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(counts[i] / double(n), 0.25, 5 * std::sqrt(0.25 * 0.75 / n)) << i;
  std::vector<float> lead(1000, 0.0f);
  lead[321] = 30.0f;
  for (int s = 0; s < 50; ++s) EXPECT_EQ(kt::sample(lead, 1.0f, uint64_t(s)), 321);
}

// y = W x on bf16 inputs: the GPU sums fp32 products of exact bf16 values; the reference sums them in double.
// Bound: fp32 accumulation over `cols` terms, |err| <= cols * 2^-24 * sum|w x| (far looser than observed).
void check_gemv(const std::vector<float>& wf, int rows, int cols, const std::vector<float>& xf, const char* what) {
  std::vector<uint16_t> w(wf.size()), x(xf.size());
  for (size_t i = 0; i < wf.size(); ++i) w[i] = fp32_to_bf16(wf[i]);
  for (size_t i = 0; i < xf.size(); ++i) x[i] = fp32_to_bf16(xf[i]);
  const std::vector<float> y0 = randn(size_t(rows), 1.0f, 77);
  for (const bool acc : {false, true}) {
    const std::vector<float> got = kt::gemv(w, rows, cols, x, y0, acc);
    double worst = 0;
    for (int r = 0; r < rows; ++r) {
      double s = acc ? y0[size_t(r)] : 0.0, mag = std::fabs(s);
      for (int c = 0; c < cols; ++c) {
        const double p = double(bf16_to_fp32(w[size_t(r) * cols + c])) * bf16_to_fp32(x[size_t(c)]);
        s += p;
        mag += std::fabs(p);
      }
      worst = std::max(worst, std::fabs(got[size_t(r)] - s) / std::max(mag, 1e-30));
    }
    std::printf("  gemv %s %d x %d%s: worst error %.2e of sum|w x|\n", what, rows, cols, acc ? " (accumulate)" : "",
                worst);
    EXPECT_LE(worst, cols * std::ldexp(1.0, -24)) << what;
  }
}

TEST(CudaKernels, GemvMatchesDoubleReference) {
  HS_REQUIRE_GPU();
  check_gemv(randn(size_t(1000) * 576, 0.05f, 21), 1000, 576, randn(576, 1.0f, 22), "random");    // tail rows/cols
  check_gemv(randn(size_t(77) * 4096, 0.02f, 23), 77, 4096, randn(4096, 1.0f, 24), "random");     // unrolled body
  check_gemv(randn(size_t(33) * 8, 1.0f, 25), 33, 8, randn(8, 1.0f, 26), "random");               // one vector
}

// Real SmolLM2: its norm weights on its own residual stream (CPU taps), its FFN down weights on its own
// activations, its embedding rows.
TEST(CudaKernels, RealSmolLM2WeightsAndActivations) {
  HS_REQUIRE_GPU();
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  const ModelConfig& c = m.config();
  const int E = c.n_embd, layer = std::min(7, c.n_layer - 1);  // the GPU machine carries a 4-layer SmolLM2
  std::vector<float> ffn_inp, attn_norm_out, embd;
  int rows = 0;
  m.set_debug_tap([&](const char* name, int il, const float* data, int64_t r, int64_t cols) {
    const std::string n = name;
    if (il == layer && n == "ffn_inp") ffn_inp.assign(data, data + r * cols), rows = int(r);
    if (il == layer && n == "attn_norm") attn_norm_out.assign(data, data + r * cols);
    if (n == "inp_embd") embd.assign(data, data + r * cols);
  });
  ThreadPool pool(2);
  KvCache cache(c, 256);
  const std::vector<int32_t> toks =
      m.tokenizer().encode("The quick brown fox jumps over the lazy dog, and then it rests in the shade.", true, false);
  m.prefill(cache, toks, nullptr, pool);
  m.set_debug_tap({});
  ASSERT_EQ(rows, int(toks.size()));

  // RMSNorm: the layer's ffn_norm weights on its real residual stream.
  const std::vector<float> w(m.layer(layer).ffn_norm, m.layer(layer).ffn_norm + E);
  check_rmsnorm(ffn_inp, rows, E, w, c.norm_eps, "SmolLM2 ffn_norm");

  // Embedding: the model's table (Q8_0 on the CPU) rounded to bf16 as the upload does; rows of real tokens.
  std::vector<uint16_t> table(size_t(c.n_vocab) * E);
  std::vector<float> row(size_t(E), 0.0f);
  for (int t = 0; t < c.n_vocab; ++t) {
    cpu::get_row(m.tok_embd(), t, row.data());
    for (int e = 0; e < E; ++e) table[size_t(t) * E + e] = fp32_to_bf16(row[size_t(e)]);
  }
  const std::vector<float> got = kt::embed(toks, table, E);
  ASSERT_EQ(embd.size(), got.size());
  EXPECT_LE(worst_bf16_steps(got, embd, 1e-8), 1.01);  // the CPU's fp32 rows, rounded to bf16

  // GEMV: the layer's w_q (Q4_1) dequantized, on the real normed activation of the last token.
  const cpu::MatmulWeight& wq = m.layer(layer).wq;
  std::vector<float> wf(size_t(wq.rows) * size_t(wq.cols), 0.0f);
  for (int64_t r = 0; r < wq.rows; ++r) cpu::get_row(wq, r, wf.data() + r * wq.cols);
  const std::vector<float> x(attn_norm_out.end() - E, attn_norm_out.end());
  check_gemv(wf, int(wq.rows), int(wq.cols), x, "SmolLM2 attn_q");
}

}  // namespace
}  // namespace hs
