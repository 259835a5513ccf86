// HiP decode with cold caches, as inside the model: one step visits every layer's KV cache once (27 HiP layers
// of SmolLM2-135M at 8K context: ~170 MB, far beyond the CPU's caches), so a layer's keys are never in cache when
// its turn comes. hip_bench times one layer over and over (warm caches) and so misses what the scattered reads of
// the selected blocks cost in the model. Prints ms per layer (min / median over --reps steps) for the cached-mask
// step and the refresh step, with the KV buffers on ordinary pages and on transparent huge pages (HugeBuffer).
// Usage: hip_decode_cold_bench [--threads N] [--reps N] [--n-kv N] [--layers N]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "hip_bench_data.h"
#include "ops/attention.h"
#include "ops/hip_attention.h"
#include "util/common.h"
#include "util/huge_buffer.h"
#include "util/thread_pool.h"

namespace {

using hs::bench::kHeadDim;
using hs::bench::kHeads;
using hs::bench::kKvHeads;

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, reps = 15, n_kv = 8192, layers = 27;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--n-kv")) n_kv = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--layers")) layers = std::atoi(argv[i + 1]);
  }
  hs::ThreadPool pool(threads);
  const hs::HipConfig cfg;
  // One layer's keys (a smooth random walk: attention locality) and values, copied into every layer.
  const size_t elems = size_t(n_kv) * kKvHeads * kHeadDim;
  std::vector<uint16_t> k0, v0;
  {
    std::mt19937 rng(1);
    std::normal_distribution<float> N(0.0f, 1.0f);
    hs::bench::fill_walk_kv(rng, N, n_kv, k0, v0);
  }
  std::vector<float> q(size_t(kHeads) * kHeadDim), out(q.size());
  {
    std::mt19937 rng(2);
    std::normal_distribution<float> N(0.0f, 1.0f);
    for (auto& x : q) x = N(rng);
  }
  std::printf("HiP decode, cold caches: %d layers x n_kv %d (%.0f MB of K/V), %d threads; ms per layer, min / median "
              "of %d steps\n\n", layers, n_kv, 2.0 * layers * elems * 2 / 1e6, threads, reps);
  std::printf("%-12s | %15s | %15s | %15s\n", "pages", "HiP cached", "HiP refresh", "dense");
  for (const bool huge : {false, true}) {
    std::vector<hs::HugeBuffer> kb, vb;  // per layer
    std::vector<uint16_t*> k, v;
    for (int l = 0; l < layers; ++l) {
      kb.emplace_back(elems * 2, huge);
      vb.emplace_back(elems * 2, huge);
      k.push_back(kb.back().as<uint16_t>());
      v.push_back(vb.back().as<uint16_t>());
      std::memcpy(k.back(), k0.data(), elems * 2);
      std::memcpy(v.back(), v0.data(), elems * 2);
    }
    std::vector<hs::HipMask> masks(static_cast<size_t>(layers));
    auto params = [&](int l) {
      return hs::bench::bench_params(q.data(), k[size_t(l)], v[size_t(l)], out.data(), n_kv, 1);
    };
    auto step = [&](int kind) {  // 0 cached, 1 refresh, 2 dense: one pass over every layer, ms per layer
      const double t0 = now_ms();
      for (int l = 0; l < layers; ++l) {
        const hs::AttentionParams p = params(l);
        if (kind == 2)
          hs::attention_dense(p, pool);
        else
          hs::hip_attention(cfg, p, masks[size_t(l)], kind == 1, pool, nullptr);
      }
      return (now_ms() - t0) / layers;
    };
    step(1);  // masks for the cached steps
    double res[3][2];
    for (int kind = 0; kind < 3; ++kind) {
      std::vector<double> t;
      for (int r = 0; r < reps; ++r) t.push_back(step(kind));
      std::sort(t.begin(), t.end());
      res[kind][0] = t.front();
      res[kind][1] = t[t.size() / 2];
    }
    std::printf("%-12s | %6.3f / %6.3f | %6.3f / %6.3f | %6.3f / %6.3f\n", huge ? "huge (THP)" : "4 KiB", res[0][0],
                res[0][1], res[1][0], res[1][1], res[2][0], res[2][1]);
  }
  return 0;
}
