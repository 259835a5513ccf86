// `hipserve bench`: llama-bench-style throughput. pp<N>: prefill N random tokens into an empty cache;
// tg<N>: N single-token decode steps after a (untimed) prefill of --depth tokens. Each test runs once to warm
// up, then -r times; we report mean ± sample standard deviation of tokens/s. With --device cuda (the default
// when a GPU is present) the same tests run on the GPU (apps/gpu_commands.cpp), also with --random-weights.
#include <chrono>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <random>

#include <nlohmann/json.hpp>

#include "apps/bench_result.h"
#include "apps/cli.h"
#include "apps/commands.h"
#include "apps/gpu_commands.h"
#include "apps/loader.h"
#include "model/kv_cache.h"
#include "util/common.h"

namespace hs::cli {

namespace {

struct CpuBenchResult : BenchResult {
  HipStats hip;  // summed over the timed repetitions
};

}  // namespace

int cmd_bench(const std::vector<std::string>& args) {
  CommonArgs common;
  std::vector<int> prompts = {512}, gens = {128}, depths = {0}, batches = {1};
  int reps = 3;
  bool json = false, help = false, warmup = true;
  OptionTable t;
  add_common_options(t, common);
  t.add({"-p", "--n-prompt", "N[,N...]", "prefill tests: prompt lengths (default: 512; 0 = none)",
         [&](const std::string& v) { prompts = parse_int_list("--n-prompt", v, 0, 1 << 22); }});
  t.add({"-n", "--n-gen", "N[,N...]", "decode tests: tokens generated (default: 128; 0 = none)",
         [&](const std::string& v) { gens = parse_int_list("--n-gen", v, 0, 1 << 22); }});
  t.add({"-d", "--depth", "N[,N...]", "context already in the cache for decode tests (default: 0)",
         [&](const std::string& v) { depths = parse_int_list("--depth", v, 0, 1 << 22); }});
  t.add({"-b", "--batch", "N[,N...]",
         "decode tests: sequences decoding together, one batched forward per step as the server runs them; "
         "tokens/s is their sum (default: 1)",
         [&](const std::string& v) { batches = parse_int_list("--batch", v, 1, 256); }});
  t.add({"-r", "--repetitions", "N", "timed repetitions per test (default: 3)",
         [&](const std::string& v) { reps = parse_int("--repetitions", v, 1, 1000); }});
  t.add({"", "--no-warmup", "", "skip the untimed warm-up run of each test",
         [&](const std::string&) { warmup = false; }});
  t.add({"", "--json", "", "print results as JSON on stdout", [&](const std::string&) { json = true; }});
  t.add({"-h", "--help", "", "show this help", [&](const std::string&) { help = true; }});
  const std::vector<std::string> pos = t.parse(args);
  if (help) {
    std::printf("usage: hipserve bench [options]\n\n%s", t.help().c_str());
    return 0;
  }
  HS_CHECK(pos.empty(), "unexpected argument '%s'", pos[0].c_str());
  if (common.use_cuda()) {
    BenchPlan plan;
    plan.batches = batches;
    plan.prompts = prompts;
    plan.gens = gens;
    plan.depths = depths;
    plan.reps = reps;
    plan.warmup = warmup;
    plan.json = json;
    return gpu_bench(common, plan);
  }

  int need = 1;
  for (int p : prompts) need = std::max(need, p + 1);
  for (int g : gens)
    for (int d : depths) need = std::max(need, d + g + 1);
  if (common.ctx <= 0) common.ctx = need;
  HS_CHECK(common.ctx >= need, "-c %d is too small for these tests (need %d)", common.ctx, need);

  LoadedModel lm = load_model(common, json);
  Model& model = *lm.model;
  const ModelConfig& c = model.config();
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> pick(0, c.n_vocab - 1);
  auto random_tokens = [&](int n) {
    std::vector<int32_t> v(n);
    for (auto& x : v) x = pick(rng);
    return v;
  };
  std::vector<float> logits(c.n_vocab);
  using clock = std::chrono::steady_clock;

  std::vector<CpuBenchResult> results;
  // A decode test at depth d reuses the cache of a prefill test of d tokens instead of prefilling again.
  std::map<int, std::unique_ptr<KvCache>> prefilled;
  const int first_rep = warmup ? -1 : 0;
  for (int p : prompts) {
    if (p <= 0) continue;
    CpuBenchResult r;
    r.test = strfmt("pp%d", p);
    r.n_prompt = p;
    const std::vector<int32_t> toks = random_tokens(p);
    model.reset_hip_stats();
    for (int rep = first_rep; rep < reps; ++rep) {
      auto cache = std::make_unique<KvCache>(c, lm.n_ctx);
      if (rep == 0) model.reset_hip_stats();
      const auto t0 = clock::now();
      model.prefill(*cache, toks, logits.data(), *lm.pool);
      const double s = std::chrono::duration<double>(clock::now() - t0).count();
      if (rep >= 0) r.tok_per_s.push_back(p / s);
      if (rep == reps - 1) prefilled[p] = std::move(cache);
    }
    r.hip = model.hip_stats();
    results.push_back(r);
  }
  for (int g : gens) {
    if (g <= 0) continue;
    for (int d : depths) {
      for (int b : batches) {
      if (b == 1) continue;  // the single-sequence tests below
      // b sequences, each at depth d, decode g steps together: one forward call with b rows per step.
      CpuBenchResult r;
      r.test = strfmt("tg%d x%d", g, b) + (d > 0 ? strfmt("@d%d", d) : std::string());
      r.n_gen = g;
      r.depth = d;
      r.batch = b;
      std::vector<std::unique_ptr<KvCache>> caches;
      std::vector<std::vector<int32_t>> toks;
      std::vector<std::vector<float>> outs(b, std::vector<float>(c.n_vocab));
      for (int i = 0; i < b; ++i) {
        caches.push_back(std::make_unique<KvCache>(c, lm.n_ctx));
        caches.back()->reserve(d + g);
        if (d > 0) model.prefill(*caches.back(), random_tokens(d), nullptr, *lm.pool);
        toks.push_back(random_tokens(g));
      }
      std::vector<SeqBatch> batch(b);
      for (int rep = first_rep; rep < reps; ++rep) {
        for (auto& cache : caches) cache->truncate(d);
        if (rep == 0) model.reset_hip_stats();
        const auto t0 = clock::now();
        for (int step = 0; step < g; ++step) {
          for (int i = 0; i < b; ++i) batch[i] = SeqBatch{caches[i].get(), &toks[i][step], 1, false, outs[i].data()};
          model.forward(std::span<const SeqBatch>(batch), *lm.pool);
        }
        const double s = std::chrono::duration<double>(clock::now() - t0).count();
        if (rep >= 0) r.tok_per_s.push_back(double(b) * g / s);
      }
      r.hip = model.hip_stats();
      results.push_back(r);
      }
      if (std::find(batches.begin(), batches.end(), 1) == batches.end()) continue;
      CpuBenchResult r;
      r.test = d > 0 ? strfmt("tg%d@d%d", g, d) : strfmt("tg%d", g);
      r.n_gen = g;
      r.depth = d;
      const std::vector<int32_t> gen_toks = random_tokens(g);
      std::unique_ptr<KvCache> owned;
      KvCache* cache_ptr = nullptr;
      if (auto it = prefilled.find(d); it != prefilled.end()) {
        cache_ptr = it->second.get();
      } else {
        owned = std::make_unique<KvCache>(c, lm.n_ctx);
        cache_ptr = owned.get();
        if (d > 0) model.prefill(*cache_ptr, random_tokens(d), nullptr, *lm.pool);
      }
      KvCache& cache = *cache_ptr;
      cache.reserve(d + g);  // grow the cache before timing (a one-time copy, like allocating -c up front)
      for (int rep = first_rep; rep < reps; ++rep) {
        cache.truncate(d);
        if (rep == 0) model.reset_hip_stats();
        const auto t0 = clock::now();
        for (int i = 0; i < g; ++i) model.prefill(cache, std::span<const int32_t>(&gen_toks[i], 1), logits.data(), *lm.pool);
        const double s = std::chrono::duration<double>(clock::now() - t0).count();
        if (rep >= 0) r.tok_per_s.push_back(g / s);
      }
      r.hip = model.hip_stats();
      results.push_back(r);
    }
  }

  int64_t params = 0;
  for (const auto& ti : model.file().tensors()) params += ti.n_elements;
  const double size_mib = double(model.weight_bytes()) / (1 << 20);
  const double peak = peak_rss_mib();
  if (json) {
    nlohmann::json out = nlohmann::json::array();
    for (const CpuBenchResult& r : results)
      out.push_back({{"model", c.name},
                     {"model_size_bytes", model.weight_bytes()},
                     {"params", params},
                     {"threads", lm.pool->size()},
                     {"test", r.test},
                     {"n_prompt", r.n_prompt},
                     {"n_gen", r.n_gen},
                     {"depth", r.depth},
                     {"n_batch", r.batch},
                     {"samples_ts", r.tok_per_s},
                     {"avg_ts", r.mean()},
                     {"stddev_ts", r.stddev()},
                     {"peak_rss_mib", peak},
                     {"attention", model.attention().describe()},
                     {"hip_mask_ms", r.hip.mask_ms / reps},
                     {"hip_attn_ms", r.hip.attn_ms / reps},
                     {"hip_scored_keys", r.hip.scored_keys / reps}});
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("| model                          |       size |     params | backend | threads |         test |              t/s |\n");
  std::printf("| ------------------------------ | ---------: | ---------: | ------- | ------: | -----------: | ---------------: |\n");
  for (const CpuBenchResult& r : results)
    std::printf("| %-30s | %6.2f MiB | %8.2f M | CPU     | %7d | %12s | %8.2f ± %5.2f |\n", c.name.substr(0, 30).c_str(),
                size_mib, params / 1e6, lm.pool->size(), r.test.c_str(), r.mean(), r.stddev());
  std::printf("\nattention: %s\npeak memory (max RSS): %.1f MiB\n", model.attention().describe().c_str(), peak);
  return 0;
}

}  // namespace hs::cli
