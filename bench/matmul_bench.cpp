// matmul at SmolLM2-135M shapes (weights Q4_1, tied output head Q8_0), 2 threads, every SIMD path the CPU
// has. Reports GFLOP/s (2 FLOPs per multiply-add) and GB/s of weight bytes read.
//
//   MemRead/<threads>:                    plain streaming read of 512 MiB (AVX2 loads), the bandwidth ceiling
//   <type>/<name>/<rows>x<cols>/n<tokens>/<path>: one matmul call
//   SmolLM2_all_linear/n<tokens>/<path>:  every linear layer of one forward pass (bm_model); the path
//                                         avx512_packed runs on weights packed ahead of time (pack_weight)
// Decode (n1) cycles through enough copies of the weight (>= 256 MiB) that every call streams it from DRAM,
// as a real decode step does (the model's 96 MB of weights do not fit the 32 MB L3). Prefill (n512) reuses
// one copy: its weights are read once per call and the cost is compute.
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/cpu_features.h"
#include "backends/cpu/matmul.h"
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

struct alignas(64) Buffer {
  std::vector<uint8_t> bytes;
  uint8_t* data() { return bytes.data(); }
};

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

void bm_matmul(benchmark::State& state, Shape s, int64_t n_tokens, SimdPath path) {
  set_simd_path(path);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  const MatmulWeight proto = make_weight(s.type, nullptr, s.rows, s.cols);
  const size_t mat_bytes = proto.row_bytes * size_t(s.rows);
  // One quantized copy, replicated for the cold (decode) case.
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
    matmul(w, x.data(), n_tokens, s.cols, y.data(), s.rows, pool());
    benchmark::DoNotOptimize(y.data());
    if (++c == copies) c = 0;
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(s.rows) * double(s.cols) * double(n_tokens) / 1e9,
                         benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] =
      benchmark::Counter(double(mat_bytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// All linear layers of one SmolLM2-135M forward pass over n_tokens tokens, each layer with its own weights
// (30 x {q, k, v, o, gate, up, down} in Q4_1 plus the Q8_0 output head: 96 MB, 3x the L3), in model order.
// For n1 this is a decode step's matmul time; tok/s counts tokens per second of matmul work alone.
void bm_model(benchmark::State& state, int64_t n_tokens, SimdPath path, bool packed) {
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
    add(GgmlType::Q4_1, 576, 576);   // q
    add(GgmlType::Q4_1, 192, 576);   // k
    add(GgmlType::Q4_1, 192, 576);   // v
    add(GgmlType::Q4_1, 576, 576);   // o
    add(GgmlType::Q4_1, 1536, 576);  // gate
    add(GgmlType::Q4_1, 1536, 576);  // up
    add(GgmlType::Q4_1, 576, 1536);  // down
  }
  add(GgmlType::Q8_0, 49152, 576);      // output (prefill computes it for every token here, as a worst case)
  static std::vector<uint8_t> weights;  // shared by all instances: quantizing 96 MB takes a while
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
  // Packed ahead of time (what `--matmul int8` loads): one copy of every matrix in the kernels' tile layout.
  std::vector<const void*> packs(layers.size(), nullptr);
  static std::vector<uint8_t> pack_bytes;
  if (packed) {
    size_t need = 64;
    for (const Layer& L : layers)
      need += (packed_weight_bytes(make_weight(L.type, nullptr, L.rows, L.cols)) + 63) & ~size_t(63);
    pack_bytes.assign(need, 0);
    uint8_t* at =
        reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(pack_bytes.data()) + 63) & ~uintptr_t(63));
    for (size_t i = 0; i < layers.size(); ++i) {
      const Layer& L = layers[i];
      const MatmulWeight w = make_weight(L.type, weights.data() + L.offset, L.rows, L.cols);
      pack_weight(w, at);
      packs[i] = at;
      at += (packed_weight_bytes(w) + 63) & ~size_t(63);
    }
  }
  std::vector<float> x(size_t(n_tokens) * 1536, 0.5f), y(size_t(n_tokens) * 49152);
  double flops = 0;
  for (const Layer& L : layers) flops += 2.0 * double(L.rows) * double(L.cols) * double(n_tokens);
  for (auto _ : state) {
    for (size_t i = 0; i < layers.size(); ++i) {
      const Layer& L = layers[i];
      MatmulWeight w = make_weight(L.type, weights.data() + L.offset, L.rows, L.cols);
      w.packed = packs[i];
      matmul(w, x.data(), n_tokens, L.cols, y.data(), L.rows, pool());
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
      {"output", GgmlType::Q8_0, 49152, 576},
  };
  for (int64_t n : {int64_t(1), int64_t(512)})
    for (const Shape& s : shapes)
      for (SimdPath path : supported_simd_paths()) {
        const std::string name =
            hs::strfmt("%s/%s/%lldx%lld/n%lld/%s", ggml_traits(s.type).name, s.name, (long long)s.rows,
                       (long long)s.cols, (long long)n, simd_path_name(path));
        benchmark::RegisterBenchmark(name.c_str(), bm_matmul, s, n, path)
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
      }
  for (int64_t n : {int64_t(1), int64_t(4), int64_t(512)}) {
    for (SimdPath path : supported_simd_paths())
      benchmark::RegisterBenchmark(
          hs::strfmt("SmolLM2_all_linear/n%lld/%s", (long long)n, simd_path_name(path)).c_str(), bm_model, n,
          path, false)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    if (packed_weight_bytes(make_weight(GgmlType::Q4_1, nullptr, 16, 576)) > 0)
      benchmark::RegisterBenchmark(hs::strfmt("SmolLM2_all_linear/n%lld/avx512_packed", (long long)n).c_str(),
                                   bm_model, n, SimdPath::kAvx512, true)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
