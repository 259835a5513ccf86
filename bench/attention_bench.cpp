// Dense causal attention at SmolLM2-135M shapes (9 heads, 3 KV heads, head_dim 64), KV cache laid out like
// model/kv_cache.h ([kv head][capacity][dim] fp16). Reports GFLOP/s counting 4 * head_dim * n_head FLOPs per
// visible (query, key) pair (QK^T and PV, 2 FLOPs per multiply-add each).
//
//   prefill/<n_kv>/<threads>: the last 512-query chunk of an n_kv prompt (q_pos0 = n_kv - 512)
//   decode/<n_kv>/<threads>:  one query at position n_kv - 1
// Real time is what counts with 2 threads (the CPU column is the main thread's only). On a busy machine run
// with --benchmark_repetitions=5 and read the median.
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <vector>

#include "ops/attention.h"
#include "util/common.h"

namespace {

constexpr int32_t kHeads = 9, kKvHeads = 3, kHeadDim = 64;

struct Setup {
  std::vector<float> q, out;
  std::vector<uint16_t> k, v;
  hs::AttentionParams p;

  Setup(int32_t n_q, int32_t n_kv) {
    std::mt19937 rng(1);
    std::normal_distribution<float> N(0.0f, 1.0f);
    q.resize(size_t(n_q) * kHeads * kHeadDim);
    for (auto& x : q) x = N(rng);
    out.resize(q.size());
    k.resize(size_t(n_kv) * kKvHeads * kHeadDim);
    v.resize(k.size());
    for (auto& x : k) x = hs::fp32_to_fp16(N(rng));
    for (auto& x : v) x = hs::fp32_to_fp16(N(rng));
    p.q = q.data(), p.q_stride = kHeads * kHeadDim;
    p.k = k.data(), p.v = v.data(), p.kv_head_stride = int64_t(n_kv) * kHeadDim, p.kv_pos_stride = kHeadDim;
    p.out = out.data(), p.out_stride = kHeads * kHeadDim;
    p.n_q = n_q, p.n_kv = n_kv, p.q_pos0 = n_kv - n_q;
    p.n_head = kHeads, p.n_kv_head = kKvHeads, p.head_dim = kHeadDim;
    p.scale = 1.0f / std::sqrt(float(kHeadDim));
  }

  double flops() const {  // sum over queries of visible keys
    double pairs = 0;
    for (int32_t i = 0; i < p.n_q; ++i) pairs += p.q_pos0 + i + 1;
    return 4.0 * pairs * kHeadDim * kHeads;
  }
};

void run(benchmark::State& state, int32_t n_q) {
  const int32_t n_kv = int32_t(state.range(0));
  const int threads = int(state.range(1));
  Setup s(n_q, n_kv);
  hs::ThreadPool pool(threads);
  for (auto _ : state) {
    hs::attention_dense(s.p, pool);
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(s.flops() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_prefill(benchmark::State& state) {
  run(state, 512);
}
void BM_decode(benchmark::State& state) {
  run(state, 1);
}

BENCHMARK(BM_prefill)
    ->ArgNames({"n_kv", "threads"})
    ->Args({512, 2})
    ->Args({4096, 2})
    ->Args({8192, 2})
    ->Args({4096, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_decode)
    ->ArgNames({"n_kv", "threads"})
    ->Args({512, 2})
    ->Args({4096, 2})
    ->Args({8192, 2})
    ->Args({32768, 2})
    ->Args({32768, 1})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
