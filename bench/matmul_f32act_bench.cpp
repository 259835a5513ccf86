// matmul_f32act (exact fp32 activations) against the int8-activation cpu::matmul at SmolLM2-135M shapes
// (weights Q4_1, tied output head Q8_0; Q4_0 / Q8_0 variants of one shape), 2 threads, every SIMD path the
// CPU has. Reports GFLOP/s (2 FLOPs per multiply-add) and GB/s of weight bytes read.
//
//   MemRead/2:                                       streaming read of 512 MiB, the bandwidth ceiling
//   <kernel>/<type>/<name>/<rows>x<cols>/n<tokens>/<path>: one call; kernel = f32act or int8
//   <kernel>/SmolLM2_all_linear/n<tokens>/<path>:    every linear layer of one forward pass
// Decode (n1) cycles through enough copies of the weight (>= 256 MiB) that every call streams it from DRAM,
// as a real decode step does. Prefill (n512) reuses one copy: the weights are read once per call and the cost
// is compute.
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/cpu_features.h"
#include "backends/cpu/matmul.h"
#include "backends/cpu/matmul_f32act.h"
#include "backends/cpu/quants.h"
#include "util/common.h"
#include "util/thread_pool.h"

namespace {

using hs::GgmlType;
using namespace hs::cpu;

constexpr int kThreads = 2;
constexpr size_t kColdBytes = size_t(256) << 20;

hs::ThreadPool& pool() {
  static hs::ThreadPool p(kThreads);
  return p;
}

enum class Kernel { kF32Act, kInt8 };

void call(Kernel k, const MatmulWeight& w, const float* x, int64_t n, float* y) {
  if (k == Kernel::kF32Act) {
    matmul_f32act(w, x, n, w.cols, y, w.rows, pool());
  } else {
    matmul(w, x, n, w.cols, y, w.rows, pool());
  }
}

void bm_mem_read(benchmark::State& state) {
  const size_t n = size_t(512) << 20;
  static std::vector<uint8_t> buf(n, 1);
  std::vector<long long> sink(kThreads);
  for (auto _ : state) {
    pool().run([&](int ith, int nth) {
      const uint8_t* p = buf.data() + n / nth * ith;
      const size_t len = n / nth;
      __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
      for (size_t o = 0; o + 128 <= len; o += 128) {
        a0 = _mm256_add_epi8(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + o)));
        a1 = _mm256_add_epi8(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + o + 32)));
        a2 = _mm256_add_epi8(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + o + 64)));
        a3 = _mm256_add_epi8(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + o + 96)));
      }
      a0 = _mm256_add_epi8(_mm256_add_epi8(a0, a1), _mm256_add_epi8(a2, a3));
      sink[size_t(ith)] = _mm256_extract_epi64(a0, 0);
    });
    benchmark::DoNotOptimize(sink.data());
  }
  state.counters["GB/s"] = benchmark::Counter(double(n) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

struct Shape {
  const char* name;
  GgmlType type;
  int64_t rows, cols;
};

void bm_matmul(benchmark::State& state, Kernel kernel, Shape s, int64_t n_tokens, SimdPath path) {
  set_simd_path(path);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  const MatmulWeight proto = make_weight(s.type, nullptr, s.rows, s.cols);
  const size_t mat_bytes = proto.row_bytes * size_t(s.rows);
  std::vector<float> row(size_t(s.cols));
  const size_t copies = n_tokens == 1 ? std::max<size_t>(1, kColdBytes / mat_bytes + 1) : 1;
  std::vector<uint8_t> weights(mat_bytes * copies);
  for (int64_t r = 0; r < s.rows; ++r) {
    for (auto& v : row) v = nd(rng);
    quantize_row(s.type, row.data(), weights.data() + size_t(r) * proto.row_bytes, s.cols);
  }
  for (size_t c = 1; c < copies; ++c) std::memcpy(weights.data() + c * mat_bytes, weights.data(), mat_bytes);
  std::vector<float> x(size_t(n_tokens * s.cols)), y(size_t(n_tokens * s.rows));
  std::normal_distribution<float> xd(0.0f, 1.0f);
  for (auto& v : x) v = xd(rng);
  size_t c = 0;
  for (auto _ : state) {
    const MatmulWeight w = make_weight(s.type, weights.data() + c * mat_bytes, s.rows, s.cols);
    call(kernel, w, x.data(), n_tokens, y.data());
    benchmark::DoNotOptimize(y.data());
    if (++c == copies) c = 0;
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(s.rows) * double(s.cols) * double(n_tokens) / 1e9,
                         benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] =
      benchmark::Counter(double(mat_bytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// All linear layers of one SmolLM2-135M forward pass over n_tokens tokens (30 x {q, k, v, o, gate, up, down}
// Q4_1 plus the Q8_0 output head, 96 MB), in model order. For n1: a decode step's matmul time.
void bm_model(benchmark::State& state, Kernel kernel, int64_t n_tokens, SimdPath path) {
  set_simd_path(path);
  struct Layer {
    GgmlType type;
    int64_t rows, cols;
    size_t offset;
  };
  std::vector<Layer> layers;
  size_t total = 0;
  auto add = [&](GgmlType t, int64_t rows, int64_t cols) {
    layers.push_back({t, rows, cols, total});
    total += make_weight(t, nullptr, rows, cols).row_bytes * size_t(rows);
    total = (total + 63) & ~size_t(63);
  };
  for (int l = 0; l < 30; ++l) {
    add(GgmlType::Q4_1, 576, 576);
    add(GgmlType::Q4_1, 192, 576);
    add(GgmlType::Q4_1, 192, 576);
    add(GgmlType::Q4_1, 576, 576);
    add(GgmlType::Q4_1, 1536, 576);
    add(GgmlType::Q4_1, 1536, 576);
    add(GgmlType::Q4_1, 576, 1536);
  }
  add(GgmlType::Q8_0, 49152, 576);
  static std::vector<uint8_t> weights;
  if (weights.size() != total) {
    weights.assign(total, 0);
    std::mt19937 rng(2);
    std::normal_distribution<float> nd(0.0f, 0.05f);
    std::vector<float> row(1536);
    for (const Layer& L : layers) {
      const size_t rb = make_weight(L.type, nullptr, L.rows, L.cols).row_bytes;
      for (int64_t r = 0; r < L.rows; ++r) {
        for (int64_t c = 0; c < L.cols; ++c) row[size_t(c)] = nd(rng);
        quantize_row(L.type, row.data(), weights.data() + L.offset + size_t(r) * rb, L.cols);
      }
    }
  }
  std::vector<float> x(size_t(n_tokens) * 1536, 0.5f), y(size_t(n_tokens) * 49152);
  double flops = 0;
  for (const Layer& L : layers) flops += 2.0 * double(L.rows) * double(L.cols) * double(n_tokens);
  for (auto _ : state) {
    for (const Layer& L : layers) {
      const MatmulWeight w = make_weight(L.type, weights.data() + L.offset, L.rows, L.cols);
      call(kernel, w, x.data(), n_tokens, y.data());
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] =
      benchmark::Counter(double(total) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tok/s"] =
      benchmark::Counter(double(n_tokens), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::RegisterBenchmark("MemRead/2", bm_mem_read)->UseRealTime()->Unit(benchmark::kMillisecond);
  const Shape shapes[] = {
      {"attn_q,attn_o", GgmlType::Q4_1, 576, 576},    {"attn_k,attn_v", GgmlType::Q4_1, 192, 576},
      {"ffn_gate,ffn_up", GgmlType::Q4_1, 1536, 576}, {"ffn_down", GgmlType::Q4_1, 576, 1536},
      {"output", GgmlType::Q8_0, 49152, 576},         {"ffn_gate,ffn_up", GgmlType::Q4_0, 1536, 576},
      {"ffn_gate,ffn_up", GgmlType::Q8_0, 1536, 576},
  };
  const struct {
    Kernel k;
    const char* name;
  } kernels[] = {{Kernel::kF32Act, "f32act"}, {Kernel::kInt8, "int8"}};
  for (int64_t n : {int64_t(1), int64_t(512)})
    for (const Shape& s : shapes)
      for (SimdPath path : supported_simd_paths())
        for (const auto& k : kernels) {
          const std::string name =
              hs::strfmt("%s/%s/%s/%lldx%lld/n%lld/%s", k.name, ggml_traits(s.type).name, s.name,
                         (long long)s.rows, (long long)s.cols, (long long)n, simd_path_name(path));
          benchmark::RegisterBenchmark(name.c_str(), bm_matmul, k.k, s, n, path)
              ->UseRealTime()
              ->Unit(benchmark::kMicrosecond);
        }
  for (int64_t n : {int64_t(1), int64_t(4), int64_t(512)})  // n4: a batched decode step of 4 sequences
    for (SimdPath path : supported_simd_paths())
      for (const auto& k : kernels)
        benchmark::RegisterBenchmark(
            hs::strfmt("%s/SmolLM2_all_linear/n%lld/%s", k.name, (long long)n, simd_path_name(path)).c_str(),
            bm_model, k.k, n, path)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
