#include "backends/cpu/matmul.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <vector>

#include "backends/cpu/cpu_features.h"
#include "backends/cpu/matmul_kernels.h"
#include "backends/cpu/quants.h"
#include "backends/cpu/quants_testutil.h"
#include "model/gguf.h"
#include "util/common.h"

namespace hs::cpu {
namespace {

// Restores the SIMD path on scope exit.
struct PathGuard {
  SimdPath saved = simd_path();
  ~PathGuard() { set_simd_path(saved); }
};

bool is_int_type(GgmlType t) {
  return t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q8_0 || t == GgmlType::Q4_K ||
         t == GgmlType::Q5_K || t == GgmlType::Q6_K;
}

// |m| of the block holding each column (the additive term of Q4_1 / Q4_K / Q5_K; 0 for other types).
std::vector<float> column_mins(GgmlType t, const uint8_t* row, int64_t cols) {
  std::vector<float> m(size_t(cols), 0.0f);
  for (int64_t c = 0; c < cols; ++c) {
    if (t == GgmlType::Q4_1) {
      m[size_t(c)] = std::fabs(fp16_to_fp32(reinterpret_cast<const BlockQ4_1*>(row)[c / 32].m));
    } else if (t == GgmlType::Q4_K || t == GgmlType::Q5_K) {
      const size_t bb = ggml_traits(t).block_bytes;
      const uint8_t* blk = row + size_t(c / 256) * bb;
      uint16_t dmin;
      std::memcpy(&dmin, blk + 2, 2);
      uint8_t sc, mn;
      get_scale_min_k4(int(c % 256) / 32, blk + 4, &sc, &mn);
      m[size_t(c)] = std::fabs(fp16_to_fp32(dmin) * mn);
    }
  }
  return m;
}

// Error bound for y[t][r] of matmul vs the exact product (matmul_ref) for weights w and activations x.
//
// int8 activations (integer types): per 32-block b of token t the activation scale is d_b = max|x_b| / 127
// and each element is rounded to the nearest multiple of d_b, so |x_c - x^_c| <= d_b / 2 = max|x_b| / 254.
// The integer dot products are exact (|sum| < 2^24), so the quantization error of y is at most
//     E_q = sum_b (max|x_b| / 254) * sum_{c in b} |W_c|.
// The fp32 part (scale products, conversion, one fma per block per lane, a final horizontal sum; or K/8 fmas
// per lane on the fp32 path) adds relative errors of a few ulps per accumulated term; the terms summed are
// bounded by (|W_c| + 2 |m_b|) |x_c| (the min term m * sum(x) and d * u * x are accumulated separately), so
//     E_f = (K / 8 + 8) * 2^-23 * sum_c (|W_c| + 2 |m_c|) |x_c|   (conservative: assumes every rounding
//     adds).
struct Bound {
  std::vector<double> tol;  // [t][r]
};

Bound error_bound(const MatmulWeight& w, const float* x, int64_t n_tokens, int64_t ldx, bool exact_x) {
  Bound b;
  b.tol.assign(size_t(n_tokens * w.rows), 0.0);
  std::vector<float> row(size_t(w.cols));
  const double fp_factor = (double(w.cols) / 8 + 8) * std::ldexp(1.0, -23);
  for (int64_t r = 0; r < w.rows; ++r) {
    const uint8_t* src = static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes;
    dequantize_row_ref(w.type, src, row.data(), w.cols);
    const auto mins = column_mins(w.type, src, w.cols);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * ldx;
      double eq = 0, ef = 0;
      for (int64_t c0 = 0; c0 < w.cols; c0 += 32) {
        double amax = 0, wsum = 0;
        for (int64_t c = c0; c < std::min(c0 + 32, w.cols); ++c) {
          amax = std::max(amax, double(std::fabs(xt[c])));
          wsum += std::fabs(row[size_t(c)]);
          ef += (std::fabs(row[size_t(c)]) + 2.0 * mins[size_t(c)]) * std::fabs(xt[c]);
        }
        eq += amax / 254.0 * wsum;
      }
      const double int_part = is_int_type(w.type) && !exact_x ? eq * 1.0001 : 0.0;
      b.tol[size_t(t * w.rows + r)] = int_part + fp_factor * ef + 1e-30;
    }
  }
  return b;
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

// x whose int8 quantization is exact: per block of 32 a power-of-two step s and integers k in [-127, 127]
// with one |k| = 127, so d = 127 s / 127 = s exactly and q = x / s = k exactly.
std::vector<float> exact_x(std::mt19937& rng, int64_t n_tokens, int64_t ldx, int64_t cols) {
  std::vector<float> x(size_t(n_tokens * ldx), NAN);
  std::uniform_int_distribution<int> k(-127, 127), e(-6, 3);
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t c0 = 0; c0 < cols; c0 += 32) {
      const float s = std::ldexp(1.0f, e(rng));
      const int64_t c1 = std::min(c0 + 32, cols);
      for (int64_t c = c0; c < c1; ++c) x[size_t(t * ldx + c)] = s * float(k(rng));
      x[size_t(t * ldx + c0 + int64_t(rng() % uint32_t(c1 - c0)))] = (rng() & 1) ? 127 * s : -127 * s;
    }
  return x;
}

// One test case: random weights and activations, the reference result and the error bound.
struct Prepared {
  Case cs;
  bool exact = false;
  int64_t ldx = 0, ldy = 0;
  std::vector<uint8_t> wbytes;
  std::vector<float> x, yref;
  Bound bound;
};

Prepared prepare(const Case& cs, std::mt19937& rng, bool exact) {
  Prepared p;
  p.cs = cs;
  p.exact = exact;
  p.ldx = cs.cols + 3;  // padding in both strides
  p.ldy = cs.rows + 5;
  for (int64_t r = 0; r < cs.rows; ++r) {
    auto row = testutil::random_row(cs.type, cs.cols, rng);
    p.wbytes.insert(p.wbytes.end(), row.begin(), row.end());
  }
  const MatmulWeight w = make_weight(cs.type, p.wbytes.data(), cs.rows, cs.cols);
  p.x = exact ? exact_x(rng, cs.n_tokens, p.ldx, cs.cols) : random_x(rng, cs.n_tokens, p.ldx, cs.cols);
  p.yref.assign(size_t(cs.n_tokens * p.ldy), 0.0f);
  matmul_ref(w, p.x.data(), cs.n_tokens, p.ldx, p.yref.data(), p.ldy);
  p.bound = error_bound(w, p.x.data(), cs.n_tokens, p.ldx, exact);
  return p;
}

void run_case(const Prepared& p, ThreadPool& pool) {
  const Case& cs = p.cs;
  const MatmulWeight w = make_weight(cs.type, p.wbytes.data(), cs.rows, cs.cols);
  std::vector<float> y(size_t(cs.n_tokens * p.ldy), -7.0f);
  matmul(w, p.x.data(), cs.n_tokens, p.ldx, y.data(), p.ldy, pool);
  for (int64_t t = 0; t < cs.n_tokens; ++t) {
    for (int64_t r = 0; r < cs.rows; ++r) {
      const double got = y[size_t(t * p.ldy + r)], want = p.yref[size_t(t * p.ldy + r)];
      const double tol = p.bound.tol[size_t(t * cs.rows + r)];
      ASSERT_LE(std::fabs(got - want), tol)
          << ggml_traits(cs.type).name << " rows=" << cs.rows << " cols=" << cs.cols
          << " n_tokens=" << cs.n_tokens << " path=" << simd_path_name(simd_path())
          << " threads=" << pool.size() << " t=" << t << " r=" << r << (p.exact ? " exact-x" : "") << " got "
          << got << " want " << want;
    }
    for (int64_t r = cs.rows; r < p.ldy; ++r)
      ASSERT_EQ(y[size_t(t * p.ldy + r)], -7.0f) << "wrote into ldy padding";
  }
}

// Runs every case on every thread count and SIMD path. Pools are the outer loop: an idle pool's workers spin
// for a while after each job, and interleaving pools would make them compete for the 2 cores.
void run_cases(const std::vector<Prepared>& cases, const std::vector<ThreadPool*>& pools) {
  PathGuard guard;
  for (ThreadPool* pool : pools)
    for (SimdPath path : supported_simd_paths()) {
      set_simd_path(path);
      for (const Prepared& p : cases) {
        run_case(p, *pool);
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
}

int64_t cols_for(GgmlType t, int i) {
  const int64_t bs = ggml_traits(t).block_size;
  if (bs == 256) return i == 0 ? 256 : 768;
  if (bs == 32) return i == 0 ? 160 : 576;  // 5 blocks (odd), 18 blocks
  return i == 0 ? 100 : 264;                // not a multiple of 8
}

class MatmulTest : public ::testing::Test {
 protected:
  ThreadPool p1{1}, p2{2}, p3{3};
  std::vector<ThreadPool*> pools{&p1, &p2, &p3};
};

TEST_F(MatmulTest, MatchesRefAllTypesShapesThreadsPaths) {
  std::mt19937 rng(42);
  std::vector<Prepared> cases;
  for (GgmlType t : testutil::all_types())
    for (int ci = 0; ci < 2; ++ci)
      for (int64_t rows : {1, 7, 33, 67})
        for (int64_t n_tokens : {1, 3, 17, 64})
          cases.push_back(prepare({t, rows, cols_for(t, ci), n_tokens}, rng, false));
  run_cases(cases, pools);
}

TEST_F(MatmulTest, ExactActivationsAreExactUpToFp32Summation) {
  std::mt19937 rng(43);
  std::vector<Prepared> cases;
  for (GgmlType t : testutil::all_types())
    for (int64_t n_tokens : {1, 2, 5, 19})
      cases.push_back(prepare({t, 37, cols_for(t, 1), n_tokens}, rng, true));
  run_cases(cases, pools);
}

// Forces every call through the repacked GEMM (threshold 1) or through the row-streaming / fp32 kernels
// (threshold above every token count), so both kernels of each type see every token count.
TEST_F(MatmulTest, EveryKernelForEveryTokenCount) {
  std::mt19937 rng(48);
  std::vector<Prepared> cases;
  for (GgmlType t : testutil::all_types())
    for (int64_t n_tokens : {1, 2, 3, 5, 9, 17})
      cases.push_back(prepare({t, 35, cols_for(t, 0), n_tokens}, rng, false));
  for (int64_t threshold : {1, 1000}) {
    const int64_t saved = detail::set_gemm_min_tokens(threshold);
    run_cases(cases, pools);
    detail::set_gemm_min_tokens(saved);
  }
}

TEST_F(MatmulTest, LargeRowCountsAndTokenTails) {
  // More rows than one work item, token counts around the tile sizes.
  std::mt19937 rng(44);
  std::vector<Prepared> cases;
  for (GgmlType t : {GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0})
    for (int64_t n_tokens : {4, 7, 8, 9, 31}) cases.push_back(prepare({t, 301, 64, n_tokens}, rng, false));
  run_cases(cases, pools);
}

TEST_F(MatmulTest, ZeroActivationsGiveZero) {
  std::mt19937 rng(45);
  for (GgmlType t : testutil::all_types()) {
    const int64_t cols = cols_for(t, 0), rows = 19, n = 9;
    std::vector<uint8_t> wb;
    for (int r = 0; r < rows; ++r) {
      auto row = testutil::random_row(t, cols, rng);
      wb.insert(wb.end(), row.begin(), row.end());
    }
    const MatmulWeight w = make_weight(t, wb.data(), rows, cols);
    std::vector<float> x(size_t(n * cols), 0.0f), y(size_t(n * rows), 1.0f);
    for (int k : {1, 5}) {  // GEMV and GEMM
      matmul(w, x.data(), k, cols, y.data(), rows, p2);
      for (int64_t i = 0; i < k * rows; ++i) ASSERT_EQ(y[size_t(i)], 0.0f) << ggml_traits(t).name;
    }
  }
}

TEST_F(MatmulTest, GetRowMatchesRef) {
  std::mt19937 rng(46);
  for (GgmlType t : testutil::all_types()) {
    const int64_t cols = cols_for(t, 1), rows = 5;
    std::vector<uint8_t> wb;
    for (int r = 0; r < rows; ++r) {
      auto row = testutil::random_row(t, cols, rng);
      wb.insert(wb.end(), row.begin(), row.end());
    }
    const MatmulWeight w = make_weight(t, wb.data(), rows, cols);
    std::vector<float> a(static_cast<size_t>(cols)), b(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      get_row(w, r, a.data());
      dequantize_row_ref(t, wb.data() + size_t(r) * w.row_bytes, b.data(), cols);
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), size_t(cols) * 4)) << ggml_traits(t).name;
    }
    EXPECT_THROW(get_row(w, rows, a.data()), Error);
  }
}

TEST_F(MatmulTest, RejectsBadArguments) {
  std::vector<uint8_t> wb(20 * 4);
  std::vector<float> x(64), y(64);
  MatmulWeight w = make_weight(GgmlType::Q4_1, wb.data(), 2, 64);
  EXPECT_THROW(matmul(w, x.data(), 1, 63, y.data(), 2, p1), Error);  // ldx < cols
  EXPECT_THROW(matmul(w, x.data(), 1, 64, y.data(), 1, p1), Error);  // ldy < rows
  w.cols = 48;
  EXPECT_THROW(matmul(w, x.data(), 1, 64, y.data(), 2, p1), Error);  // partial block
  w = make_weight(GgmlType::Q4_1, wb.data(), 2, 64);
  w.row_bytes = 20;
  EXPECT_THROW(matmul(w, x.data(), 1, 64, y.data(), 2, p1), Error);  // rows overlap
  EXPECT_THROW(make_weight(GgmlType::Q4_1, wb.data(), 2, 50), Error);
}

TEST_F(MatmulTest, SimdPathSelection) {
  EXPECT_STREQ(simd_path_name(SimdPath::kAvx2), "avx2");
  EXPECT_STREQ(simd_path_name(SimdPath::kAvx512), "avx512");
  EXPECT_EQ(supported_simd_paths().front(), SimdPath::kAvx2);
  EXPECT_EQ(simd_path_from_env("avx2"), SimdPath::kAvx2);
  EXPECT_THROW(simd_path_from_env("sse2"), Error);
  const SimdPath best = cpu_features().has_avx512_path() ? SimdPath::kAvx512 : SimdPath::kAvx2;
  EXPECT_EQ(simd_path_from_env(nullptr), best);
  EXPECT_EQ(simd_path_from_env(""), best);
  if (cpu_features().has_avx512_path()) {
    EXPECT_EQ(simd_path_from_env("avx512"), SimdPath::kAvx512);
  } else {
    EXPECT_THROW(simd_path_from_env("avx512"), Error);
    EXPECT_THROW(set_simd_path(SimdPath::kAvx512), Error);
  }
}

// ---- weights packed ahead of time
// ------------------------------------------------------------------------

// A 64-byte aligned packed copy of w.
struct PackedCopy {
  std::vector<uint8_t> bytes;
  void* data = nullptr;
  explicit PackedCopy(const MatmulWeight& w) {
    bytes.assign(packed_weight_bytes(w) + 64, 0xEE);
    data = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(bytes.data()) + 63) & ~uintptr_t(63));
    pack_weight(w, data);
  }
};

TEST_F(MatmulTest, PackedWeightSizes) {
  if (!cpu_features().has_avx512_path()) {
    EXPECT_EQ(packed_weight_bytes(make_weight(GgmlType::Q4_1, nullptr, 16, 64)), 0u);
    GTEST_SKIP() << "no AVX-512 VNNI on this CPU: weights are never packed";
  }
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0}) {
    // Whole tiles: exactly the GGML bytes; a partial tile is padded to 16 rows.
    EXPECT_EQ(packed_weight_bytes(make_weight(t, nullptr, 32, 576)), 32 * ggml_traits(t).block_bytes * 18);
    EXPECT_EQ(packed_weight_bytes(make_weight(t, nullptr, 17, 64)), 32 * ggml_traits(t).block_bytes * 2);
  }
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::Q4_K, GgmlType::Q6_K})
    EXPECT_EQ(packed_weight_bytes(make_weight(t, nullptr, 16, 256)), 0u) << ggml_traits(t).name;
}

// Packed weights: within the error bound of the exact product, and bit for bit the per-call repacked GEMM
// (the same instructions per token), on every thread count.
TEST_F(MatmulTest, PackedWeightsMatchRefAndTheRepackedGemm) {
  if (!cpu_features().has_avx512_path()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  PathGuard guard;
  set_simd_path(SimdPath::kAvx512);
  std::mt19937 rng(49);
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0})
    for (int64_t rows : {1, 16, 37, 301})
      for (int64_t cols : {32, 160, 576})
        for (int64_t n_tokens : {1, 2, 3, 4, 5, 8, 9, 17}) {
          const Prepared p = prepare({t, rows, cols, n_tokens}, rng, false);
          MatmulWeight w = make_weight(t, p.wbytes.data(), rows, cols);
          std::vector<float> want(size_t(n_tokens * p.ldy), -7.0f);
          const int64_t saved = detail::set_gemm_min_tokens(1);
          matmul(w, p.x.data(), n_tokens, p.ldx, want.data(), p.ldy, p2);
          detail::set_gemm_min_tokens(saved);
          const PackedCopy packed(w);
          w.packed = packed.data;
          for (ThreadPool* pool : pools) {
            std::vector<float> y(size_t(n_tokens * p.ldy), -7.0f);
            matmul(w, p.x.data(), n_tokens, p.ldx, y.data(), p.ldy, *pool);
            for (int64_t tk = 0; tk < n_tokens; ++tk)
              for (int64_t r = 0; r < rows; ++r) {
                const size_t i = size_t(tk * p.ldy + r);
                ASSERT_LE(std::fabs(double(y[i]) - p.yref[i]), p.bound.tol[size_t(tk * rows + r)])
                    << ggml_traits(t).name << " rows=" << rows << " cols=" << cols << " n=" << n_tokens;
                ASSERT_EQ(y[i], want[i]) << ggml_traits(t).name << " rows=" << rows << " cols=" << cols
                                         << " n=" << n_tokens << " t=" << tk << " r=" << r;
              }
            ASSERT_EQ(0, std::memcmp(y.data(), want.data(), y.size() * sizeof(float)))  // padding untouched
                << ggml_traits(t).name << " rows=" << rows << " n=" << n_tokens;
          }
        }
}

// With packed weights a token's result has the same bits alone and in any batch: the server's decode
// batches and prefill chunks then never change a sequence's logits.
TEST_F(MatmulTest, PackedWeightsGiveEachTokenItsLoneBits) {
  if (!cpu_features().has_avx512_path()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  PathGuard guard;
  set_simd_path(SimdPath::kAvx512);
  std::mt19937 rng(50);
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0}) {
    const int64_t rows = 53, cols = 576, n = 19;
    const Prepared p = prepare({t, rows, cols, n}, rng, false);
    MatmulWeight w = make_weight(t, p.wbytes.data(), rows, cols);
    const PackedCopy packed(w);
    w.packed = packed.data;
    std::vector<float> all(size_t(n * p.ldy)), one(size_t(p.ldy));
    matmul(w, p.x.data(), n, p.ldx, all.data(), p.ldy, p2);
    for (int64_t tk = 0; tk < n; ++tk) {
      matmul(w, p.x.data() + tk * p.ldx, 1, p.ldx, one.data(), p.ldy, p3);
      ASSERT_EQ(0, std::memcmp(one.data(), all.data() + tk * p.ldy, size_t(rows) * sizeof(float)))
          << ggml_traits(t).name << " token " << tk;
    }
  }
}

// ---- the real model
// -----------------------------------------------------------------------------------------

const char* kModelPath = HIPSERVE_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

TEST_F(MatmulTest, RealModelWeights) {
  if (!std::filesystem::exists(kModelPath)) GTEST_SKIP() << "model not present: " << kModelPath;
  auto file = gguf::File::open(kModelPath);
  std::mt19937 rng(47);
  struct Want {
    const char* name;
    GgmlType type;
  };
  for (const Want& want :
       {Want{"blk.0.ffn_down.weight", GgmlType::Q4_1}, Want{"blk.3.attn_q.weight", GgmlType::Q4_1},
        Want{"token_embd.weight", GgmlType::Q8_0}}) {
    const gguf::TensorInfo* ti = file->find_tensor(want.name);
    ASSERT_NE(ti, nullptr) << want.name;
    ASSERT_EQ(ti->type, want.type) << want.name;
    ASSERT_EQ(ti->dims.size(), 2u);
    const MatmulWeight w = make_weight(ti->type, ti->data, ti->dims[1], ti->dims[0]);
    for (int64_t n_tokens : {1, 6}) {
      const int64_t ldx = w.cols, ldy = w.rows;
      const auto x = random_x(rng, n_tokens, ldx, w.cols);
      std::vector<float> yref(size_t(n_tokens * ldy)), y(size_t(n_tokens * ldy));
      matmul_ref(w, x.data(), n_tokens, ldx, yref.data(), ldy);
      const Bound bound = error_bound(w, x.data(), n_tokens, ldx, false);
      PathGuard guard;
      MatmulWeight wp = w;
      std::unique_ptr<PackedCopy> packed;
      if (packed_weight_bytes(w) > 0) {
        packed = std::make_unique<PackedCopy>(w);
        wp.packed = packed->data;
      }
      struct Variant {
        SimdPath path;
        bool packed;
      };
      std::vector<Variant> variants;
      for (SimdPath path : supported_simd_paths()) variants.push_back({path, false});
      if (packed) variants.push_back({SimdPath::kAvx512, true});
      for (const Variant& variant : variants) {
        const SimdPath path = variant.path;
        set_simd_path(path);
        matmul(variant.packed ? wp : w, x.data(), n_tokens, ldx, y.data(), ldy, p2);
        double max_err = 0, max_ratio = 0, err2 = 0, ref2 = 0;
        for (size_t i = 0; i < y.size(); ++i) {
          const int64_t t = int64_t(i) / ldy, r = int64_t(i) % ldy;
          const double err = std::fabs(double(y[i]) - yref[i]), tol = bound.tol[size_t(t * w.rows + r)];
          ASSERT_LE(err, tol) << want.name << " " << simd_path_name(path) << " t=" << t << " r=" << r;
          max_err = std::max(max_err, err);
          err2 += err * err;
          ref2 += double(yref[i]) * yref[i];
          max_ratio = std::max(max_ratio, err / tol);
        }
        std::printf("  %s %s%s n_tokens=%lld: max |err| %.3g, max |err| / bound %.3f, rms err / rms y %.2e\n",
                    want.name, simd_path_name(path), variant.packed ? " packed" : "", (long long)n_tokens,
                    max_err, max_ratio, std::sqrt(err2 / std::max(ref2, 1e-300)));
      }
    }
    // Embedding lookups are exact.
    std::vector<float> a(size_t(w.cols)), b(size_t(w.cols));
    for (int64_t r : {int64_t(0), w.rows / 2, w.rows - 1}) {
      get_row(w, r, a.data());
      dequantize_row_ref(w.type, static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes, b.data(),
                         w.cols);
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
    }
  }
}

}  // namespace
}  // namespace hs::cpu
