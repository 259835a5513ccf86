// `hipserve eval ppl|passkey|recall`: quality of the configured attention on a real model.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "apps/cli.h"
#include "apps/commands.h"
#include "apps/gpu_commands.h"
#include "apps/loader.h"
#include "engine/evaluate.h"
#include "util/common.h"
#include "util/progress.h"

namespace hs::cli {

namespace {

std::vector<int32_t> tokenize_file(const Tokenizer& tok, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  HS_CHECK(in.good(), "cannot open text file '%s'", path.c_str());
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  HS_CHECK(is_valid_utf8(text), "text file '%s' is not valid UTF-8", path.c_str());
  return tok.encode(text, /*add_special=*/true, /*parse_special=*/false);
}

std::vector<double> parse_depths(const std::string& v) {
  std::vector<double> out;
  std::stringstream ss(v);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(parse_float("--depths", item, 0, 1));
  HS_CHECK(!out.empty(), "--depths needs at least one value");
  return out;
}

}  // namespace

int cmd_eval(const std::vector<std::string>& args) {
  const char* usage =
      "usage: hipserve eval ppl     -f TEXT [-c CTX] [--chunks N] [attention flags]\n"
      "       hipserve eval passkey [-c CTX] [--depths 0,0.25,0.5,0.75,1] [--trials K] [--needle] [attention "
      "flags]\n"
      "       hipserve eval recall  -f TEXT [-c CTX] [--queries N] [attention flags]\n"
      "       hipserve eval mask    -f TEXT [-c CTX] --layer L --head H [--grid G] --out FILE.json\n\n";
  CommonArgs common;
  std::string file;
  int chunks = 0, trials = 5, queries = 128, layer = 12, head = 0, grid = 128;
  std::string out_file;
  uint64_t seed = 42;
  std::vector<double> depths = {0, 0.25, 0.5, 0.75, 1};
  bool json = false, help = false, needle = false;
  OptionTable t;
  add_common_options(t, common);
  t.add({"-f", "--file", "TEXT", "text file (UTF-8) for ppl and recall", [&](const std::string& v) { file = v; }});
  t.add({"", "--chunks", "N", "ppl: evaluate at most N windows of CTX tokens (default: all)",
         [&](const std::string& v) { chunks = parse_int("--chunks", v, 0, 1 << 30); }});
  t.add({"", "--depths", "D,...", "passkey: relative depths of the key (default: 0,0.25,0.5,0.75,1)",
         [&](const std::string& v) { depths = parse_depths(v); }});
  t.add({"", "--trials", "K", "passkey: trials per depth, each with a random key (default: 5)",
         [&](const std::string& v) { trials = parse_int("--trials", v, 1, 100000); }});
  t.add({"-s", "--seed", "N", "passkey: seed for the keys (default: 42)",
         [&](const std::string& v) { seed = uint64_t(parse_int("--seed", v, 0, 1 << 30)); }});
  t.add({"", "--needle", "",
         "passkey: also show, per trial, which attention heads retrieve the key's digits at the last prompt "
         "row "
         "(>= 10% of their exact attention) and whether HiP's mask there covers each one's top digit (CPU "
         "only)",
         [&](const std::string&) { needle = true; }});
  t.add({"", "--queries", "N", "recall: query rows evaluated at the end of the context (default: 128)",
         [&](const std::string& v) { queries = parse_int("--queries", v, 1, 512); }});
  t.add({"", "--layer", "L", "mask: layer to draw (default: 12)",
         [&](const std::string& v) { layer = parse_int("--layer", v, 0, 1 << 16); }});
  t.add({"", "--head", "H", "mask: query head to draw (default: 0)",
         [&](const std::string& v) { head = parse_int("--head", v, 0, 1 << 16); }});
  t.add({"", "--grid", "G", "mask: raster size (default: 128)",
         [&](const std::string& v) { grid = parse_int("--grid", v, 8, 4096); }});
  t.add({"", "--out", "FILE", "mask: where to write the JSON picture (plot with tools/plot_mask.py)",
         [&](const std::string& v) { out_file = v; }});
  t.add({"", "--json", "", "print the result as JSON on stdout", [&](const std::string&) { json = true; }});
  t.add({"-h", "--help", "", "show this help", [&](const std::string&) { help = true; }});
  std::vector<std::string> pos = t.parse(args);
  if (help || pos.empty()) {
    std::fprintf(help ? stdout : stderr, "%s%s", usage, t.help().c_str());
    return help ? 0 : 1;
  }
  const std::string what = pos[0];
  HS_CHECK(what == "ppl" || what == "passkey" || what == "recall" || what == "mask",
           "unknown evaluation '%s' (ppl, passkey, recall, mask)", what.c_str());
  HS_CHECK(what != "mask" || !out_file.empty(), "eval mask needs --out FILE.json");
  HS_CHECK(pos.size() == 1, "unexpected argument '%s'", pos[1].c_str());
  HS_CHECK(what == "passkey" || !file.empty(), "eval %s needs a text file: -f TEXT", what.c_str());

  HS_CHECK(common.random_weights.empty(), "--random-weights has no tokenizer: use it with `hipserve bench`");
  // ppl and passkey run on the chosen device; recall and mask read the CPU model's Q/K (CPU only).
  HS_CHECK(!needle || what == "passkey", "--needle goes with eval passkey");
  HS_CHECK(!needle || common.device != "cuda",
           "eval passkey --needle reads the CPU model's queries and keys: it runs on the CPU only (drop "
           "--device cuda)");
  const bool on_gpu = (what == "ppl" || what == "passkey") ? common.use_cuda() && !needle : false;
  HS_CHECK(!(what == "recall" || what == "mask") || common.device != "cuda",
           "eval %s reads the CPU model's queries and keys: it runs on the CPU only (drop --device cuda)", what.c_str());
  LoadedModel lm = load_model(common, json, on_gpu);
  Model& model = *lm.model;
  const int32_t ctx = lm.n_ctx;
  const std::string attn = model.attention().describe();
  ProgressBar* bar = nullptr;
  auto progress = [&](int64_t done, int64_t total) {
    if (!bar) bar = new ProgressBar("eval " + what, total, !json && ProgressBar::default_enabled());
    bar->update(done);
  };
  auto finish_bar = [&] {
    if (bar) bar->finish();
    delete bar;
    bar = nullptr;
  };

  nlohmann::json out = {{"eval", what}, {"ctx", ctx}, {"attention", attn}, {"model", model.config().name}};
  if (what == "ppl") {
    const std::vector<int32_t> toks = tokenize_file(model.tokenizer(), file);
    std::unique_ptr<Sequence> seq = make_sequence(common, lm, on_gpu);
    const PerplexityResult r = evaluate_perplexity(*seq, toks, ctx, chunks, progress);
    finish_bar();
    out.update({{"file", file}, {"tokens_in_file", toks.size()}, {"windows", r.n_windows}, {"scored", r.n_scored},
                {"ppl", r.ppl()}, {"window_ppl", r.window_ppl}, {"seconds", r.seconds}});
    if (!json) {
      std::printf("perplexity of %s over %d windows of %d tokens (second halves scored, %lld tokens): %.4f\n",
                  file.c_str(), r.n_windows, ctx, (long long)r.n_scored, r.ppl());
      std::printf("attention: %s\n%.1f s (%.1f tokens/s)\n", attn.c_str(), r.seconds,
                  r.seconds > 0 ? r.n_windows * double(ctx) / r.seconds : 0.0);
    }
  } else if (what == "passkey") {
    std::unique_ptr<Sequence> seq = make_sequence(common, lm, on_gpu);
    const PasskeyResult r = evaluate_passkey(*seq, model.tokenizer(), ctx, depths, trials, seed, progress);
    finish_bar();
    nlohmann::json rows = nlohmann::json::array();
    for (size_t i = 0; i < r.depths.size(); ++i)
      rows.push_back({{"depth", r.depths[i]}, {"correct", r.correct[i]}, {"trials", r.trials[i]},
                      {"accuracy", double(r.correct[i]) / r.trials[i]}, {"sample_answer", r.sample_answers[i]},
                      {"keys_and_answers", r.trials_detail[i]}});
    out.update({{"prompt_tokens", r.prompt_tokens}, {"depths", rows}, {"seconds", r.seconds}});
    if (!json) {
      std::printf("passkey retrieval, %d-token prompts, %d trials per depth, attention: %s\n", r.prompt_tokens, trials,
                  attn.c_str());
      std::printf("| depth | accuracy | sample answer |\n| ---: | ---: | --- |\n");
      for (size_t i = 0; i < r.depths.size(); ++i) {
        std::string a = r.sample_answers[i];
        for (char& ch : a)
          if (ch == '\n' || ch == '|') ch = ' ';
        std::printf("| %.2f | %d/%d | %s |\n", r.depths[i], r.correct[i], r.trials[i], a.c_str());
      }
      std::printf("%.1f s\n", r.seconds);
    }
    if (needle) {
      // Per trial: the retrieval heads (all layers, as if every layer ran HiP) and those HiP's mask misses.
      nlohmann::json nj = nlohmann::json::array();
      if (!json)
        std::printf(
            "\nretrieval heads at the last prompt row (>= 10%% of the exact attention on the key's digits), "
            "and those whose top digit HiP's mask of the last query block misses:\n"
            "| depth | key | answer | retrieval heads covered | missed (layer:head) |\n"
            "| ---: | ---: | --- | ---: | --- |\n");
      for (size_t i = 0; i < r.depths.size(); ++i)
        for (const auto& [key, answer] : r.trials_detail[i]) {
          const PasskeyPrompt p = make_passkey_prompt(model.tokenizer(), ctx, r.depths[i], key);
          const NeedleResult nr = evaluate_needle(model, p, *lm.pool);
          int32_t heads = 0, covered = 0;
          for (size_t l = 0; l < nr.retrieval_heads.size(); ++l)
            heads += nr.retrieval_heads[l], covered += nr.covered[l];
          std::string missed;
          for (const auto& [l, h] : nr.missed) missed += strfmt("%s%d:%d", missed.empty() ? "" : " ", l, h);
          const bool ok = passkey_answer_correct(answer, key);
          nj.push_back({{"depth", r.depths[i]},
                        {"key", key},
                        {"answer", answer},
                        {"correct", ok},
                        {"retrieval_heads", nr.retrieval_heads},
                        {"covered", nr.covered},
                        {"needle_mass", nr.needle_mass},
                        {"missed", nr.missed}});
          if (!json) {
            std::string a = answer;
            for (char& ch : a)
              if (ch == '\n' || ch == '|') ch = ' ';
            std::printf("| %.2f | %05d | %s%s | %d/%d | %s |\n", r.depths[i], key,
                        ok ? "" : "wrong: ", a.c_str(), covered, heads, missed.c_str());
          }
        }
      out["needle"] = nj;
    }
  } else if (what == "mask") {
    const std::vector<int32_t> toks = tokenize_file(model.tokenizer(), file);
    const MaskPicture pic = evaluate_mask_picture(model, toks, ctx, layer, head, grid, *lm.pool);
    const HipConfig& h = model.attention().hip;
    nlohmann::json pj = {{"ctx", pic.ctx},     {"layer", pic.layer},         {"head", pic.head},
                         {"grid", pic.grid},   {"attention", pic.attention}, {"mask", pic.mask},
                         {"file", file},       {"k", h.k},                   {"block_q", h.block_q},
                         {"block_k", h.block_k}, {"sink", h.n_sink},         {"window", h.window}};
    std::ofstream os(out_file);
    HS_CHECK(os.good(), "cannot write '%s'", out_file.c_str());
    os << pj.dump();
    out.update({{"out", out_file}});
    if (!json) std::printf("wrote the mask picture of layer %d head %d to %s\n", layer, head, out_file.c_str());
  } else {
    const std::vector<int32_t> toks = tokenize_file(model.tokenizer(), file);
    const RecallResult r = evaluate_recall(model, toks, ctx, queries, *lm.pool, progress);
    finish_bar();
    out.update({{"file", file}, {"queries", queries}, {"layer_recall", r.layer_recall}, {"mean_recall", r.mean()},
                {"seconds", r.seconds}});
    if (!json) {
      const HipConfig& h = model.attention().hip;
      std::printf("HiP mask recall of the exact top-%d keys, last %d rows of a %d-token context of %s\n", h.k, queries,
                  ctx, file.c_str());
      std::printf("(every layer estimated as if it ran HiP; layers < %d run dense in the model)\n",
                  model.attention().dense_layers);
      std::printf("| layer | recall |\n| ---: | ---: |\n");
      for (size_t l = 0; l < r.layer_recall.size(); ++l) std::printf("| %zu | %.3f |\n", l, r.layer_recall[l]);
      std::printf("mean %.3f; %.1f s\n", r.mean(), r.seconds);
    }
  }
  if (json) std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

}  // namespace hs::cli
