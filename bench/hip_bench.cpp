// HiP attention against dense attention for one layer at SmolLM2-135M shapes (9 heads, 3 KV heads, head_dim
// 64, KV cache [kv head][capacity][dim] fp16), paper defaults (k 512, b_q 32, b_k 2, b_sq 2, b_sk 1, sink 16,
// window 256, refresh 8). Keys follow a smooth random walk over positions (attention locality), queries are
// Gaussian. A plain main printing a table (times are the minimum and median of --reps runs, in ms):
//
//   prefill: the last 512-query chunk of an n_kv prompt: dense | HiP mask | HiP attention | HiP total
//   decode:  one query at position n_kv - 1: dense | HiP with a cached mask | HiP refresh step
//            (estimate + attend) | amortized over a refresh interval ((refresh + (r_m - 1) cached) / r_m)
//
// The machine is shared: compare columns of one run, and prefer the min. --threads 1 gives per-core costs.
// Usage: hip_bench [--threads N] [--reps N] [--max-kv N]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "hip_bench_data.h"
#include "ops/attention.h"
#include "ops/hip_attention.h"
#include "util/common.h"
#include "util/thread_pool.h"

namespace {

using hs::bench::kHeadDim;
using hs::bench::kHeads;
using hs::bench::kKvHeads;

struct Layer {
  std::vector<float> q, out;
  std::vector<uint16_t> k, v;
  int32_t n_kv;

  explicit Layer(int32_t n_kv_) : n_kv(n_kv_) {
    std::mt19937 rng(1);
    std::normal_distribution<float> N(0.0f, 1.0f);
    q.resize(size_t(512) * kHeads * kHeadDim);
    for (auto& x : q) x = N(rng);
    out.resize(q.size());
    hs::bench::fill_walk_kv(rng, N, n_kv, k, v);
  }

  hs::AttentionParams params(int32_t n_q) {
    return hs::bench::bench_params(q.data(), k.data(), v.data(), out.data(), n_kv, n_q);
  }
};

struct Timing {
  double min = 0, median = 0;
};

// Runs fn reps times (after one warm-up) and returns min / median of the per-call ms it reports.
Timing measure(int reps, const std::function<double()>& fn) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(fn());
  std::sort(t.begin(), t.end());
  return {t.front(), t[t.size() / 2]};
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, reps = 7;
  int32_t max_kv = 32768;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--max-kv")) max_kv = std::atoi(argv[i + 1]);
  }
  hs::ThreadPool pool(threads);
  const hs::HipConfig cfg;
  std::printf(
      "HiP vs dense, one layer: %d heads / %d KV heads / head_dim %d, %d threads; k=%d b_q=%d b_k=%d "
      "b_sq=%d b_sk=%d sink=%d window=%d refresh=%d; ms as min / median of %d runs\n\n",
      kHeads, kKvHeads, kHeadDim, threads, cfg.k, cfg.block_q, cfg.block_k, cfg.stride_q, cfg.stride_k,
      cfg.n_sink, cfg.window, cfg.refresh, reps);

  std::printf("prefill, last 512-row chunk\n");
  std::printf("%7s | %15s | %15s | %15s | %15s | %7s | %12s %10s\n", "n_kv", "dense", "HiP mask", "HiP attn",
              "HiP total", "speedup", "keys/qblock", "iters");
  for (int32_t n_kv = 4096; n_kv <= max_kv; n_kv *= 2) {
    Layer L(n_kv);
    hs::AttentionParams p = L.params(512);
    const Timing dense = measure(reps, [&] {
      const double t0 = now_ms();
      hs::attention_dense(p, pool);
      return now_ms() - t0;
    });
    hs::HipMask mask;
    std::vector<double> mask_ms, attn_ms, total_ms;
    hs::HipStats last;
    for (int i = 0; i <= reps; ++i) {
      hs::HipStats st;
      const double t0 = now_ms();
      hs::hip_attention(cfg, p, mask, true, pool, &st);
      const double t = now_ms() - t0;
      if (i == 0) continue;  // warm-up
      mask_ms.push_back(st.mask_ms), attn_ms.push_back(st.attn_ms), total_ms.push_back(t);
      last = st;
    }
    auto mm = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return Timing{v.front(), v[v.size() / 2]};
    };
    const Timing tm = mm(mask_ms), ta = mm(attn_ms), tt = mm(total_ms);
    const int32_t items = kHeads * 512 / cfg.block_q;
    std::printf(
        "%7d | %6.2f / %6.2f | %6.2f / %6.2f | %6.2f / %6.2f | %6.2f / %6.2f | %6.2fx | %12.0f %10.1f\n",
        n_kv, dense.min, dense.median, tm.min, tm.median, ta.min, ta.median, tt.min, tt.median,
        dense.min / tt.min, double(last.scored_keys) / items, double(last.iterations) / items);
  }

  std::printf("\ndecode, one row at position n_kv - 1\n");
  std::printf("%7s | %15s | %15s | %15s | %15s | %7s\n", "n_kv", "dense", "HiP cached", "HiP refresh",
              "HiP amortized", "speedup");
  for (int32_t n_kv = 4096; n_kv <= max_kv; n_kv *= 2) {
    Layer L(n_kv);
    hs::AttentionParams p = L.params(1);
    const int dec_reps = reps * 20;
    const Timing dense = measure(dec_reps, [&] {
      const double t0 = now_ms();
      hs::attention_dense(p, pool);
      return now_ms() - t0;
    });
    hs::HipMask mask;
    const Timing refresh = measure(dec_reps, [&] {
      const double t0 = now_ms();
      hs::hip_attention(cfg, p, mask, true, pool);
      return now_ms() - t0;
    });
    const Timing cached = measure(dec_reps, [&] {
      const double t0 = now_ms();
      hs::hip_attention(cfg, p, mask, false, pool);
      return now_ms() - t0;
    });
    const double amort_min = (refresh.min + (cfg.refresh - 1) * cached.min) / cfg.refresh;
    const double amort_med = (refresh.median + (cfg.refresh - 1) * cached.median) / cfg.refresh;
    std::printf("%7d | %6.3f / %6.3f | %6.3f / %6.3f | %6.3f / %6.3f | %6.3f / %6.3f | %6.2fx\n", n_kv,
                dense.min, dense.median, cached.min, cached.median, refresh.min, refresh.median, amort_min,
                amort_med, dense.min / amort_min);
  }
  return 0;
}
