#include "backends/cpu/matmul_f32act.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/cpu_features.h"
#include "backends/cpu/matmul.h"
#include "backends/cpu/quants.h"
#include "backends/cpu/quants_testutil.h"
#include "model/gguf.h"
#include "util/common.h"

namespace hs::cpu {
namespace {

namespace fd = f32act_detail;

// Restores the SIMD path and the GEMV / GEMM threshold on scope exit.
struct Guard {
  SimdPath saved_path = simd_path();
  int64_t saved_min = fd::gemm_min_tokens();
  ~Guard() {
    set_simd_path(saved_path);
    fd::set_gemm_min_tokens(saved_min);
  }
};

// Error bound for y[t][r] against matmul_ref.
//
// matmul_f32act multiplies the exact dequantized weights with x in fused multiply-adds (each product enters
// the sum unrounded) and adds the K = cols products in fp32 along a summation tree whose depth is at most K
// (the GEMM microkernel: K FMAs per output, in up to 4 interleaved chains; the row-streaming kernels: at most
// K / 16 FMAs per lane, then a few levels of adds). Each addition on the path of a term rounds once (relative
// error <= u = 2^-24), so
//     |y - exact| <= gamma_K * S,   gamma_K = K u / (1 - K u),   S = sum_c |W[r][c] x[t][c]|.
// matmul_ref sums in double and rounds once to fp32: |ref - exact| <= u |exact| + K 2^-53 S <= (u + K 2^-53)
// S. Hence  |y - ref| <= (gamma_K + u + K 2^-53) S <= (K + 1) u S (1 + 1e-3)  for K u < 1e-3 (K < 16000).
// Relative to S that is (K + 1) u, 3.4e-5 for K = 576, in the worst case; rounding errors of random sign
// grow like sqrt(K), so the observed err / bound ratios are ~1e-3 to 5e-2.
double bound_factor(int64_t K) {
  return double(K + 1) * std::ldexp(1.0, -24) * 1.001;
}

// S[t][r] = sum_c |W[r][c] x[t][c]| (double).
std::vector<double> abs_sums(const MatmulWeight& w, const float* x, int64_t n_tokens, int64_t ldx) {
  std::vector<double> s(size_t(n_tokens * w.rows));
  std::vector<float> row(size_t(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row_ref(w.type, static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes, row.data(),
                       w.cols);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * ldx;
      double a = 0;
      for (int64_t c = 0; c < w.cols; ++c) a += std::fabs(double(row[size_t(c)]) * double(xt[c]));
      s[size_t(t * w.rows + r)] = a;
    }
  }
  return s;
}

struct Case {
  GgmlType type;
  int64_t rows, cols, n_tokens;
};

std::vector<float> random_x(std::mt19937& rng, int64_t n_tokens, int64_t ldx, int64_t cols) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t(n_tokens * ldx), NAN);  // padding columns are NaN: must never be read
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t c = 0; c < cols; ++c) x[size_t(t * ldx + c)] = nd(rng) * (c % 7 == 0 ? 4.0f : 1.0f);
  return x;
}

std::vector<uint8_t> random_weights(GgmlType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::vector<uint8_t> wb;
  for (int64_t r = 0; r < rows; ++r) {
    auto row = testutil::random_row(t, cols, rng);
    wb.insert(wb.end(), row.begin(), row.end());
  }
  return wb;
}

// One test case: random weights and activations (padded strides), the reference result and the sums S.
struct Prepared {
  Case cs;
  int64_t ldx = 0, ldy = 0;
  std::vector<uint8_t> wbytes;
  std::vector<float> x, yref;
  std::vector<double> abs_sum;
};

Prepared prepare(const Case& cs, std::mt19937& rng) {
  Prepared p;
  p.cs = cs;
  p.ldx = cs.cols + 3;
  p.ldy = cs.rows + 5;
  p.wbytes = random_weights(cs.type, cs.rows, cs.cols, rng);
  const MatmulWeight w = make_weight(cs.type, p.wbytes.data(), cs.rows, cs.cols);
  p.x = random_x(rng, cs.n_tokens, p.ldx, cs.cols);
  p.yref.assign(size_t(cs.n_tokens * p.ldy), 0.0f);
  matmul_ref(w, p.x.data(), cs.n_tokens, p.ldx, p.yref.data(), p.ldy);
  p.abs_sum = abs_sums(w, p.x.data(), cs.n_tokens, p.ldx);
  return p;
}

// Worst err / bound seen by the synthetic cases (printed by the last test of the sweep).
double g_worst_ratio = 0;

void run_case(const Prepared& p, ThreadPool& pool) {
  const Case& cs = p.cs;
  const MatmulWeight w = make_weight(cs.type, p.wbytes.data(), cs.rows, cs.cols);
  std::vector<float> y(size_t(cs.n_tokens * p.ldy), -7.0f);
  matmul_f32act(w, p.x.data(), cs.n_tokens, p.ldx, y.data(), p.ldy, pool);
  const double f = bound_factor(cs.cols);
  for (int64_t t = 0; t < cs.n_tokens; ++t) {
    for (int64_t r = 0; r < cs.rows; ++r) {
      const double got = y[size_t(t * p.ldy + r)], want = p.yref[size_t(t * p.ldy + r)];
      const double tol = f * p.abs_sum[size_t(t * cs.rows + r)];
      const double err = std::fabs(got - want);
      ASSERT_LE(err, tol) << ggml_traits(cs.type).name << " rows=" << cs.rows << " cols=" << cs.cols
                          << " n_tokens=" << cs.n_tokens << " path=" << simd_path_name(simd_path())
                          << " threads=" << pool.size() << " gemm_min_tokens=" << fd::gemm_min_tokens()
                          << " t=" << t << " r=" << r << " got " << got << " want " << want;
      if (tol > 0) g_worst_ratio = std::max(g_worst_ratio, err / tol);
    }
    for (int64_t r = cs.rows; r < p.ldy; ++r)
      ASSERT_EQ(y[size_t(t * p.ldy + r)], -7.0f) << "wrote into ldy padding";
  }
}

// Every case on every thread count and SIMD path. Pools are the outer loop: an idle pool's workers spin for a
// while after each job, and interleaving pools would make them compete for the cores.
void run_cases(const std::vector<Prepared>& cases, const std::vector<ThreadPool*>& pools) {
  Guard guard;
  for (ThreadPool* pool : pools)
    for (SimdPath path : supported_simd_paths()) {
      set_simd_path(path);
      for (const Prepared& p : cases) {
        run_case(p, *pool);
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
}

// Columns: Q4/Q8 5 blocks (odd) or 18 (576, the model's width); K-quants 1 or 3 super-blocks; F32/F16/BF16
// not a multiple of 8 or 16.
int64_t cols_for(GgmlType t, int i) {
  const int64_t bs = ggml_traits(t).block_size;
  if (bs == 256) return i == 0 ? 256 : 768;
  if (bs == 32) return i == 0 ? 160 : 576;
  return i == 0 ? 100 : 270;
}

class MatmulF32ActTest : public ::testing::Test {
 protected:
  ThreadPool p1{1}, p2{2}, p3{3};
  std::vector<ThreadPool*> pools{&p1, &p2, &p3};
};

TEST_F(MatmulF32ActTest, MatchesRefAllTypesShapesThreadsPaths) {
  std::mt19937 rng(42);
  std::vector<Prepared> cases;
  for (GgmlType t : testutil::all_types())
    for (int ci = 0; ci < 2; ++ci)
      for (int64_t rows : {1, 7, 33})
        for (int64_t n_tokens : {1, 2, 3, 4, 5, 17, 64})
          if (ci == 1 || n_tokens <= 5 || rows == 33)
            cases.push_back(prepare({t, rows, cols_for(t, ci), n_tokens}, rng));
  run_cases(cases, pools);
}

// Row counts past several work items and panels (odd ones, partial panels), token counts around the tile
// sizes (6 on AVX2, 12 on AVX-512) and many tokens with few panels (token ranges split across threads).
TEST_F(MatmulF32ActTest, LargeShapes) {
  std::mt19937 rng(44);
  std::vector<Prepared> cases;
  for (GgmlType t : {GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q6_K, GgmlType::F16}) {
    const int64_t cols = cols_for(t, 0);
    for (int64_t n_tokens : {1, 4, 13, 25}) cases.push_back(prepare({t, 577, cols, n_tokens}, rng));
    cases.push_back(prepare({t, 45, cols, 300}, rng));
  }
  cases.push_back(prepare({GgmlType::Q4_1, 33, 1536, 64}, rng));
  run_cases(cases, {&p1, &p2});
}

// Forces every call through the panel GEMM (threshold 1) or the row-streaming kernels (threshold above every
// token count), so each kernel of each type sees every token count on both paths.
TEST_F(MatmulF32ActTest, EveryKernelForEveryTokenCount) {
  std::mt19937 rng(48);
  std::vector<Prepared> cases;
  for (GgmlType t : testutil::all_types())
    for (int64_t n_tokens : {1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 19})
      cases.push_back(prepare({t, 35, cols_for(t, 0), n_tokens}, rng));
  Guard guard;
  for (int64_t threshold : {1, 1000}) {
    fd::set_gemm_min_tokens(threshold);
    run_cases(cases, {&p1, &p3});
    if (HasFatalFailure()) return;
  }
  std::printf("  worst |err| / bound over the synthetic cases so far: %.3g\n", g_worst_ratio);
}

// One-hot activations pick single weights: y[t][r] = W[r][c_t] exactly (every other product is an exact
// zero), so this checks that both kernels dequantize bit-exactly like dequantize_row_ref.
TEST_F(MatmulF32ActTest, OneHotActivationsGiveExactWeights) {
  std::mt19937 rng(49);
  Guard guard;
  for (GgmlType t : testutil::all_types()) {
    const int64_t cols = cols_for(t, 1), rows = 37, n = 29;
    const auto wb = random_weights(t, rows, cols, rng);
    const MatmulWeight w = make_weight(t, wb.data(), rows, cols);
    std::vector<float> ref(size_t(rows * cols));
    for (int64_t r = 0; r < rows; ++r)
      dequantize_row_ref(t, wb.data() + size_t(r) * w.row_bytes, &ref[size_t(r * cols)], cols);
    std::vector<float> x(size_t(n * cols), 0.0f);
    std::vector<int64_t> hot(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      hot[size_t(i)] = int64_t(rng() % uint32_t(cols));
      x[size_t(i * cols + hot[size_t(i)])] = 1.0f;
    }
    for (SimdPath path : supported_simd_paths())
      for (int64_t threshold : {1, 1000}) {
        set_simd_path(path);
        fd::set_gemm_min_tokens(threshold);
        std::vector<float> y(size_t(n * rows), NAN);
        matmul_f32act(w, x.data(), n, cols, y.data(), rows, p2);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t r = 0; r < rows; ++r)
            ASSERT_EQ(y[size_t(i * rows + r)], ref[size_t(r * cols + hot[size_t(i)])])
                << ggml_traits(t).name << " " << simd_path_name(path) << " threshold " << threshold
                << " t=" << i << " r=" << r << " c=" << hot[size_t(i)];
      }
  }
}

TEST_F(MatmulF32ActTest, ZeroActivationsAndEmptyShapes) {
  std::mt19937 rng(45);
  Guard guard;
  for (GgmlType t : testutil::all_types()) {
    const int64_t cols = cols_for(t, 0), rows = 19, n = 9;
    const auto wb = random_weights(t, rows, cols, rng);
    const MatmulWeight w = make_weight(t, wb.data(), rows, cols);
    std::vector<float> x(size_t(n * cols), 0.0f), y(size_t(n * rows), 1.0f);
    for (SimdPath path : supported_simd_paths()) {
      set_simd_path(path);
      for (int k : {1, 9}) {  // GEMV and GEMM
        matmul_f32act(w, x.data(), k, cols, y.data(), rows, p2);
        for (int64_t i = 0; i < k * rows; ++i) ASSERT_EQ(y[size_t(i)], 0.0f) << ggml_traits(t).name;
      }
    }
    // No tokens, no rows: nothing is read or written.
    std::vector<float> y2(4, 5.0f);
    matmul_f32act(w, nullptr, 0, cols, y2.data(), rows, p2);
    const MatmulWeight empty = make_weight(t, wb.data(), 0, cols);
    matmul_f32act(empty, x.data(), 3, cols, y2.data(), 1, p2);
    EXPECT_EQ(y2, std::vector<float>(4, 5.0f));
  }
}

TEST_F(MatmulF32ActTest, RejectsBadArguments) {
  std::vector<uint8_t> wb(20 * 4);
  std::vector<float> x(64), y(64);
  MatmulWeight w = make_weight(GgmlType::Q4_1, wb.data(), 2, 64);
  EXPECT_THROW(matmul_f32act(w, x.data(), 1, 63, y.data(), 2, p1), Error);  // ldx < cols
  EXPECT_THROW(matmul_f32act(w, x.data(), 1, 64, y.data(), 1, p1), Error);  // ldy < rows
  w.cols = 48;
  EXPECT_THROW(matmul_f32act(w, x.data(), 1, 64, y.data(), 2, p1), Error);  // partial block
  w = make_weight(GgmlType::Q4_1, wb.data(), 2, 64);
  w.row_bytes = 20;
  EXPECT_THROW(matmul_f32act(w, x.data(), 1, 64, y.data(), 2, p1), Error);  // rows overlap
  w = make_weight(GgmlType::Q4_1, wb.data(), 2, 64);
  w.type = GgmlType::Q5_0;
  EXPECT_THROW(matmul_f32act(w, x.data(), 1, 64, y.data(), 2, p1), Error);  // unsupported type
}

// ---- the real model
// -----------------------------------------------------------------------------------------

std::string model_path() {
  if (const char* env = std::getenv("HIPSERVE_MODEL"); env && *env) return env;
  return HIPSERVE_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

TEST_F(MatmulF32ActTest, RealModelWeights) {
  const std::string path = model_path();
  if (!std::filesystem::exists(path))
    GTEST_SKIP() << "model not present: " << path
                 << " (set HIPSERVE_MODEL or put SmolLM2-135M-Instruct.Q4_1.gguf in models/)";
  auto file = gguf::File::open(path);
  std::mt19937 rng(47);
  struct Want {
    const char* name;
    GgmlType type;
    int64_t n_tokens;
    bool gemm;  // force the panel GEMM (else the default choice: row streaming for few tokens)
  };
  Guard guard;
  for (const Want& want : {Want{"blk.0.ffn_down.weight", GgmlType::Q4_1, 1, false},
                           Want{"blk.0.ffn_down.weight", GgmlType::Q4_1, 7, false},
                           Want{"blk.0.ffn_down.weight", GgmlType::Q4_1, 40, true},
                           Want{"token_embd.weight", GgmlType::Q8_0, 1, false},
                           Want{"token_embd.weight", GgmlType::Q8_0, 5, true}}) {
    fd::set_gemm_min_tokens(want.gemm ? 1 : 1000);
    const gguf::TensorInfo* ti = file->find_tensor(want.name);
    ASSERT_NE(ti, nullptr) << want.name;
    ASSERT_EQ(ti->type, want.type) << want.name;
    ASSERT_EQ(ti->dims.size(), 2u);
#ifdef HIPSERVE_SANITIZED
    const int64_t max_rows = 4096;  // the reference is slow under the sanitizers: the first rows only
#else
    const int64_t max_rows = ti->dims[1];
#endif
    const MatmulWeight w = make_weight(ti->type, ti->data, std::min(ti->dims[1], max_rows), ti->dims[0]);
    ASSERT_LE(w.row_bytes * size_t(w.rows), ti->n_bytes);
    const int64_t n_tokens = want.n_tokens, ldx = w.cols, ldy = w.rows;
    const auto x = random_x(rng, n_tokens, ldx, w.cols);
    std::vector<float> yref(size_t(n_tokens * ldy)), y(size_t(n_tokens * ldy));
    matmul_ref(w, x.data(), n_tokens, ldx, yref.data(), ldy);
    const auto abs_sum = abs_sums(w, x.data(), n_tokens, ldx);
    const double f = bound_factor(w.cols);
    for (SimdPath path : supported_simd_paths()) {
      set_simd_path(path);
      matmul_f32act(w, x.data(), n_tokens, ldx, y.data(), ldy, p2);
      double max_err = 0, max_ratio = 0, max_rel = 0;
      for (int64_t t = 0; t < n_tokens; ++t)
        for (int64_t r = 0; r < w.rows; ++r) {
          const size_t i = size_t(t * ldy + r);
          const double err = std::fabs(double(y[i]) - yref[i]), tol = f * abs_sum[size_t(t * w.rows + r)];
          ASSERT_LE(err, tol) << want.name << " " << simd_path_name(path) << " t=" << t << " r=" << r;
          max_err = std::max(max_err, err);
          max_ratio = std::max(max_ratio, err / tol);
          max_rel = std::max(max_rel, err / std::max(1e-30, abs_sum[size_t(t * w.rows + r)]));
        }
      std::printf(
          "  %s %s n_tokens=%lld %s: max |err| %.3g, max |err| / sum|w x| %.2e, max |err| / bound %.3f\n",
          want.name, simd_path_name(path), (long long)n_tokens, want.gemm ? "gemm" : "gemv", max_err, max_rel,
          max_ratio);
    }
  }
}

}  // namespace
}  // namespace hs::cpu
