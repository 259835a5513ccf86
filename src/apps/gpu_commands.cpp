#include "apps/gpu_commands.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include <nlohmann/json.hpp>

#include "apps/bench_result.h"
#include "apps/loader.h"
#include "util/common.h"

#ifdef HIPSERVE_CUDA
#include "backends/cuda/llama_cuda.h"
#endif

namespace hs::cli {

namespace {
std::unique_ptr<SlotBackend> cpu_slot_backend(LoadedModel& lm, const EngineOptions& e) {
  return std::make_unique<CpuSlotBackend>(*lm.model, *lm.pool, e.n_slots, e.n_ctx, e.page_size, e.n_pages,
                                          e.prefill_chunk);
}
}  // namespace

#ifndef HIPSERVE_CUDA

int gpu_bench(const CommonArgs&, const BenchPlan&) { fail("this build has no CUDA backend"); }
std::unique_ptr<Sequence> make_sequence(const CommonArgs&, LoadedModel& lm, bool on_gpu) {
  HS_CHECK(!on_gpu, "this build has no CUDA backend");
  return std::make_unique<CpuSequence>(*lm.model, lm.n_ctx, *lm.pool);
}

std::unique_ptr<SlotBackend> make_slot_backend(const CommonArgs&, LoadedModel& lm, const EngineOptions& e,
                                               bool on_gpu) {
  HS_CHECK(!on_gpu, "this build has no CUDA backend");
  return cpu_slot_backend(lm, e);
}

#else

namespace {

using clock_type = std::chrono::steady_clock;
double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

struct GpuResult : BenchResult {
  cuda::GpuProfile prof;  // of the profiled run (tg tests), per token below
};

cuda::GpuModelOptions gpu_options(const CommonArgs& common, int32_t n_ctx) {
  cuda::GpuModelOptions o;
  o.n_ctx = n_ctx;
  o.attn = common.attention();
  return o;
}

}  // namespace

int gpu_bench(const CommonArgs& common, const BenchPlan& plan) {
  int need = 1;
  for (int p : plan.prompts) need = std::max(need, p + 1);
  for (int g : plan.gens)
    for (int d : plan.depths) need = std::max(need, d + g + 1);
  const int32_t n_ctx = common.ctx > 0 ? common.ctx : need;
  HS_CHECK(n_ctx >= need, "-c %d is too small for these tests (need %d)", n_ctx, need);

  const auto t_load = clock_type::now();
  std::unique_ptr<cuda::GpuModel> gm;
  LoadedModel lm;
  cuda::GpuModelOptions go = gpu_options(common, n_ctx);
  for (int b : plan.batches) go.n_seq = std::max(go.n_seq, b);  // a K/V region per sequence of a batch
  go.max_batch_tokens = std::max(go.max_batch_tokens, go.n_seq);
  if (!common.random_weights.empty()) {
    gm = cuda::GpuModel::random(cuda::random_preset(common.random_weights), 1234, go);
  } else {
    lm = load_model(common, plan.json, true);
    gm = cuda::GpuModel::upload(*lm.model, go);
  }
  const ModelConfig& c = gm->config();
  const std::string dev = cuda::device_name();
  const double bw = cuda::copy_bandwidth_gbs();
  if (!plan.json)
    std::fprintf(stderr,
                 "hipserve: %s on %s: weights %.2f GiB bf16, K/V cache %.2f GiB (%d sequence(s) x %d positions), "
                 "ready in %.0f ms; device copy bandwidth %.0f GB/s\n",
                 c.name.c_str(), dev.c_str(), double(gm->weight_bytes()) / (1 << 30),
                 double(gm->kv_bytes()) / (1 << 30), go.n_seq, n_ctx, ms_since(t_load), bw);

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> pick(0, c.n_vocab - 1);
  auto random_tokens = [&](int n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = pick(rng);
    return v;
  };
  std::vector<GpuResult> results;
  // The untimed warm-up (if any), then plan.reps timed runs of `run`, each producing `tokens` tokens.
  auto time_runs = [&](GpuResult& r, int64_t tokens, const auto& run) {
    for (int rep = plan.warmup ? -1 : 0; rep < plan.reps; ++rep) {
      const auto t0 = clock_type::now();
      run();
      const double ms = ms_since(t0);
      if (rep >= 0) r.tok_per_s.push_back(1000.0 * double(tokens) / ms);
    }
  };
  for (int p : plan.prompts) {
    if (p <= 0) continue;
    GpuResult r;
    r.test = strfmt("pp%d", p);
    r.n_prompt = p;
    const std::vector<int32_t> toks = random_tokens(p);
    time_runs(r, p, [&] {
      gm->truncate(0);
      gm->prefill(toks, nullptr);
    });
    results.push_back(r);
  }
  for (int g : plan.gens) {
    if (g <= 0) continue;
    for (int d : plan.depths)
      for (int b : plan.batches) {
        if (b == 1) continue;
        // b sequences at depth d decoding together, as `serve` runs its slots: one forward per step with a row
        // per sequence (the linear layers read each weight once for all rows, attention per sequence), logits
        // copied to the host.
        GpuResult r;
        r.test = strfmt("tg%d x%d", g, b) + (d > 0 ? strfmt("@d%d", d) : std::string());  // as the CPU bench
        r.n_gen = g;
        r.depth = d;
        r.batch = b;
        const int32_t V = c.n_vocab;
        std::vector<std::vector<float>> logits(size_t(b), std::vector<float>(size_t(V), 0.0f));
        std::vector<std::vector<int32_t>> toks(static_cast<size_t>(b));
        for (int s = 0; s < b; ++s) {
          gm->truncate(s, 0);
          toks[size_t(s)] = random_tokens(g);
          const std::vector<int32_t> prompt = random_tokens(d);
          for (int done = 0; done < d; done += go.max_batch_tokens) {
            const SlotBackend::Feed f{s, prompt.data() + done, std::min(go.max_batch_tokens, d - done), nullptr};
            gm->forward(std::span<const SlotBackend::Feed>(&f, 1));
          }
        }
        time_runs(r, int64_t(g) * b, [&] {
          for (int s = 0; s < b; ++s) gm->truncate(s, d);
          std::vector<SlotBackend::Feed> feeds(static_cast<size_t>(b));
          for (int i = 0; i < g; ++i) {
            for (int s = 0; s < b; ++s)
              feeds[size_t(s)] = {s, &toks[size_t(s)][size_t(i)], 1, logits[size_t(s)].data()};
            gm->forward(feeds);
          }
        });
        results.push_back(r);
      }
    for (int d : plan.depths) {
      if (std::find(plan.batches.begin(), plan.batches.end(), 1) == plan.batches.end()) continue;
      GpuResult r;
      r.test = d > 0 ? strfmt("tg%d@d%d", g, d) : strfmt("tg%d", g);
      r.n_gen = g;
      r.depth = d;
      gm->truncate(0);
      if (d > 0) gm->prefill(random_tokens(d), nullptr);
      const int32_t first = pick(rng);
      auto run = [&] {
        gm->truncate(d);
        int32_t tok = first;
        for (int i = 0; i < g; ++i) tok = gm->decode(tok, 0.0f, 0, nullptr);
      };
      time_runs(r, g, run);
      if (plan.profile) {
        gm->set_profiling(true);
        run();
        r.prof = gm->profile();
        gm->set_profiling(false);
      }
      results.push_back(r);
    }
  }

  // Decode reads every weight once per token (the embedding table only one row): the bound it sets.
  // (With tied embeddings the table is also the output head, read whole every token.)
  const double read_bytes = double(gm->weight_bytes()) - (c.tied_embeddings ? 0.0 : double(c.n_vocab) * c.n_embd * 2.0);
  const double bound_tok_s = bw * 1e9 / read_bytes;
  if (plan.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const GpuResult& r : results) {
      nlohmann::json j = {{"model", c.name},
                          {"device", dev},
                          {"backend", "CUDA"},
                          {"weight_bytes", gm->weight_bytes()},
                          {"test", r.test},
                          {"n_prompt", r.n_prompt},
                          {"n_gen", r.n_gen},
                          {"depth", r.depth},
                          {"n_batch", r.batch},
                          {"samples_ts", r.tok_per_s},
                          {"avg_ts", r.mean()},
                          {"stddev_ts", r.stddev()},
                          {"attention", common.attention().describe()},
                          {"copy_bandwidth_gbs", bw}};
      if (r.n_gen > 0 && r.batch == 1) {
        j["weight_read_bound_ts"] = bound_tok_s;
        j["fraction_of_bound"] = r.mean() / bound_tok_s;
        if (r.prof.steps > 0) {
          const double n = double(r.prof.steps);
          j["profile_ms_per_token"] = {{"gemm", r.prof.gemm_ms / n},
                                       {"attention", r.prof.attn_ms / n},
                                       {"hip_mask", r.prof.hip_mask_ms / n},
                                       {"other", r.prof.other_ms / n}};
        }
      }
      out.push_back(j);
    }
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("| model                          |       size | backend | device                 |         test |              t/s |\n");
  std::printf("| ------------------------------ | ---------: | ------- | ---------------------- | -----------: | ---------------: |\n");
  for (const GpuResult& r : results)
    std::printf("| %-30s | %6.2f GiB | CUDA    | %-22s | %12s | %8.2f ± %5.2f |\n", c.name.substr(0, 30).c_str(),
                double(gm->weight_bytes()) / (1 << 30), dev.substr(0, 22).c_str(), r.test.c_str(), r.mean(),
                r.stddev());
  std::printf("\nattention: %s; dense prefill attention: %s\n", common.attention().describe().c_str(),
              cuda::dense_prefill_attention(gm->options().cudnn_prefill).c_str());
  std::printf("decode bound from reading the weights once per token at %.0f GB/s: %.1f tok/s\n", bw, bound_tok_s);
  for (const GpuResult& r : results) {
    if (r.n_gen == 0 || r.prof.steps == 0) continue;
    const double n = double(r.prof.steps);
    std::printf("%s: %.1f%% of that bound; per token (profiled run, events serialize a little): GEMM %.3f ms, "
                "attention %.3f ms, HiP mask refresh %.3f ms, other kernels %.3f ms\n",
                r.test.c_str(), 100.0 * r.mean() / bound_tok_s, r.prof.gemm_ms / n, r.prof.attn_ms / n,
                r.prof.hip_mask_ms / n, r.prof.other_ms / n);
  }
  return 0;
}

std::unique_ptr<Sequence> make_sequence(const CommonArgs& common, LoadedModel& lm, bool on_gpu) {
  if (!on_gpu) return std::make_unique<CpuSequence>(*lm.model, lm.n_ctx, *lm.pool);
  const auto t_up = clock_type::now();
  auto gm = cuda::GpuModel::upload(*lm.model, gpu_options(common, lm.n_ctx));
  std::fprintf(stderr, "hipserve: running on %s (weights %.1f MiB bf16, K/V cache %.1f MiB, uploaded in %.0f ms)\n",
               cuda::device_name().c_str(), double(gm->weight_bytes()) / (1 << 20), double(gm->kv_bytes()) / (1 << 20),
               ms_since(t_up));
  return std::make_unique<cuda::GpuSequence>(std::move(gm));
}

std::unique_ptr<SlotBackend> make_slot_backend(const CommonArgs& common, LoadedModel& lm, const EngineOptions& e,
                                               bool on_gpu) {
  if (!on_gpu) return cpu_slot_backend(lm, e);
  const auto t_up = clock_type::now();
  cuda::GpuModelOptions o = gpu_options(common, e.n_ctx);
  o.n_seq = e.n_slots;
  o.max_batch_tokens = std::max(o.max_batch_tokens, std::max(e.n_slots, e.prefill_chunk));
  o.cudnn_prefill = true;  // a long-lived server wins back cuDNN's plan builds, done here before serving
  auto gm = cuda::GpuModel::upload(*lm.model, o);
  std::fprintf(stderr, "hipserve: serving on %s (weights %.1f MiB bf16, K/V %.1f MiB for %d slots, uploaded in %.0f ms)\n",
               cuda::device_name().c_str(), double(gm->weight_bytes()) / (1 << 20), double(gm->kv_bytes()) / (1 << 20),
               e.n_slots, ms_since(t_up));
  const auto t_warm = clock_type::now();
  const int plans = gm->warm_up_cudnn();
  std::fprintf(stderr, "hipserve: dense prefill attention: %s%s\n",
               cuda::dense_prefill_attention(o.cudnn_prefill).c_str(),
               plans > 0 ? strfmt("; %d plans built in %.0f ms", plans, ms_since(t_warm)).c_str() : "");
  return std::make_unique<cuda::GpuSlotBackend>(std::move(gm));
}

#endif

}  // namespace hs::cli
