#include "apps/loader.h"

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>

#include "util/common.h"

namespace hs::cli {

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

LoadedModel load_model(const CommonArgs& args, bool quiet, bool on_gpu) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string path = args.model.empty() ? default_model_path() : args.model;
  if (access(path.c_str(), F_OK) != 0) {
    fail(strfmt("model file '%s' not found%s", path.c_str(),
                args.model.empty() ? " (run `make model` or scripts/fetch_model.sh to download SmolLM2-135M-Instruct)"
                                   : ""));
  }
  LoadedModel lm;
  LoadOptions lo;
  lo.show_progress = !quiet;
  const AttentionConfig attn = args.attention();  // validate flags before the (slow) load
  lm.model = Model::load(path, lo);
  lm.model->set_attention(attn);
  lm.model->set_matmul_mode(args.int8_matmul && !on_gpu ? MatmulMode::Int8 : MatmulMode::F32);
  const ModelConfig& c = lm.model->config();
  lm.n_ctx = args.ctx > 0 ? args.ctx : c.n_ctx_train;
  const int threads = args.threads > 0 ? args.threads : default_threads();
  lm.pool = std::make_unique<ThreadPool>(threads);
  lm.load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  if (!quiet) {
    std::map<std::string, int> types;
    for (const auto& t : lm.model->file().tensors()) types[ggml_type_name(t.type_id)]++;
    std::string type_list;
    for (const auto& [name, n] : types) type_list += strfmt("%s%s x%d", type_list.empty() ? "" : ", ", name.c_str(), n);
    std::fprintf(stderr, "hipserve: model '%s' from %s\n", c.name.c_str(), path.c_str());
    std::fprintf(stderr, "hipserve: %s\n", c.summary().c_str());
    std::fprintf(stderr, "hipserve: weights %.1f MiB (%s); context %d tokens; %d threads; loaded in %.0f ms\n",
                 double(lm.model->weight_bytes()) / (1 << 20), type_list.c_str(), lm.n_ctx, threads, lm.load_ms);
    std::fprintf(stderr, "hipserve: attention: %s; matmul activations: %s%s\n", attn.describe().c_str(),
                 on_gpu ? "bf16 (GPU)" : args.int8_matmul ? "int8" : "f32",
                 lm.model->packed_weight_bytes() > 0
                     ? strfmt(" (weights repacked for AVX-512: %.1f MiB)",
                              double(lm.model->packed_weight_bytes()) / (1 << 20)).c_str()
                     : "");
    if (lm.n_ctx > c.n_ctx_train)
      std::fprintf(stderr, "hipserve: warning: context %d exceeds the model's training context %d\n", lm.n_ctx,
                   c.n_ctx_train);
    if (args.verbose) {
      for (const auto& [key, value] : lm.model->file().metadata())
        std::fprintf(stderr, "hipserve:   %s = %s\n", key.c_str(), value.to_display_string().c_str());
    }
  }
  return lm;
}

}  // namespace hs::cli
