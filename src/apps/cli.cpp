#include "apps/cli.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <thread>

#include "util/common.h"
#ifdef HIPSERVE_CUDA
#include "backends/cuda/llama_cuda.h"
#endif

namespace hs::cli {

std::vector<std::string> OptionTable::parse(const std::vector<std::string>& args) const {
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (a == "--") {
      positional.insert(positional.end(), args.begin() + i + 1, args.end());
      break;
    }
    if (a.size() < 2 || a[0] != '-' || (a[1] >= '0' && a[1] <= '9')) {
      positional.push_back(a);
      continue;
    }
    std::string inline_value;
    bool has_inline = false;
    if (a.rfind("--", 0) == 0) {
      const size_t eq = a.find('=');
      if (eq != std::string::npos) {
        inline_value = a.substr(eq + 1);
        a = a.substr(0, eq);
        has_inline = true;
      }
    }
    const Option* opt = nullptr;
    for (const Option& o : options_)
      if (a == o.long_name || (!o.short_name.empty() && a == o.short_name)) opt = &o;
    HS_CHECK(opt != nullptr, "unknown option '%s' (see --help)", a.c_str());
    if (opt->arg.empty()) {
      HS_CHECK(!has_inline, "option %s takes no value", a.c_str());
      opt->apply("");
    } else {
      std::string value;
      if (has_inline) {
        value = inline_value;
      } else {
        HS_CHECK(i + 1 < args.size(), "option %s needs a value (%s)", a.c_str(), opt->arg.c_str());
        value = args[++i];
      }
      opt->apply(value);
    }
  }
  return positional;
}

std::string OptionTable::help() const {
  std::vector<std::string> heads;
  size_t width = 0;
  for (const Option& o : options_) {
    std::string h = "  " + (o.short_name.empty() ? std::string("    ") : o.short_name + ", ") + o.long_name;
    if (!o.arg.empty()) h += " " + o.arg;
    width = std::max(width, h.size());
    heads.push_back(h);
  }
  std::string out;
  for (size_t i = 0; i < options_.size(); ++i)
    out += heads[i] + std::string(width + 2 - heads[i].size(), ' ') + options_[i].help + "\n";
  return out;
}

int parse_int(const std::string& flag, const std::string& v, long long lo, long long hi) {
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  HS_CHECK(!v.empty() && end && *end == '\0' && errno == 0, "%s expects an integer, got '%s'", flag.c_str(),
           v.c_str());
  HS_CHECK(x >= lo && x <= hi, "%s must be in [%lld, %lld], got %lld", flag.c_str(), lo, hi, x);
  return int(x);
}

double parse_float(const std::string& flag, const std::string& v, double lo, double hi) {
  errno = 0;
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  HS_CHECK(!v.empty() && end && *end == '\0' && errno == 0 && std::isfinite(x), "%s expects a number, got '%s'",
           flag.c_str(), v.c_str());
  HS_CHECK(x >= lo && x <= hi, "%s must be in [%g, %g], got %g", flag.c_str(), lo, hi, x);
  return x;
}

std::vector<int> parse_int_list(const std::string& flag, const std::string& v, long long lo, long long hi) {
  std::vector<int> out;
  size_t start = 0;
  while (start <= v.size()) {
    const size_t comma = v.find(',', start);
    const std::string item = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    out.push_back(parse_int(flag, item, lo, hi));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::string default_model_path() {
  if (const char* env = std::getenv("HIPSERVE_MODEL"); env && *env) return env;
  const std::string local = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (access(local.c_str(), R_OK) == 0) return local;
  return std::string(HIPSERVE_SOURCE_DIR) + "/" + local;
}

int default_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 4 : int(n);
}

bool CommonArgs::use_cuda() const {
#ifdef HIPSERVE_CUDA
  if (device == "cpu") {
    HS_CHECK(random_weights.empty(), "--random-weights runs on the GPU only (drop --device cpu)");
    return false;
  }
  std::string why;
  const bool have = cuda::device_available(&why);
  HS_CHECK(have || device == "auto", "--device cuda: %s", why.c_str());
  HS_CHECK(have || random_weights.empty(), "--random-weights needs a GPU: %s", why.c_str());
  return have;
#else
  HS_CHECK(device != "cuda", "--device cuda: this build has no CUDA backend (configure with -DHIPSERVE_CUDA=ON)");
  HS_CHECK(random_weights.empty(), "--random-weights needs the CUDA backend, which this build lacks");
  return false;
#endif
}

void add_common_options(OptionTable& t, CommonArgs& a) {
  t.add({"-m", "--model", "FILE", "GGUF model file (default: $HIPSERVE_MODEL, else models/SmolLM2-135M-Instruct.Q4_1.gguf)",
         [&a](const std::string& v) { a.model = v; }});
  t.add({"-t", "--threads", "N", "CPU threads (default: all CPUs)",
         [&a](const std::string& v) { a.threads = parse_int("--threads", v, 1, 1024); }});
  t.add({"-c", "--ctx-size", "N", "context size in tokens (default: the model's training context)",
         [&a](const std::string& v) { a.ctx = parse_int("--ctx-size", v, 1, 1 << 24); }});
  t.add({"-v", "--verbose", "", "print model metadata and more details",
         [&a](const std::string&) { a.verbose = true; }});
  t.add({"", "--matmul", "f32|int8",
         "CPU activations in the linear layers: int8 blocks of 32 as llama.cpp (default; integer dot products over "
         "weights repacked once at load) or exact fp32 (the reference: slower, logits within ~1e-2 of Hugging Face)",
         [&a](const std::string& v) {
           HS_CHECK(v == "f32" || v == "int8", "--matmul must be f32 or int8, got '%s'", v.c_str());
           a.int8_matmul = v == "int8";
         }});
  t.add({"", "--device", "cpu|cuda|auto",
         "where the model runs: auto (default) = cuda when this build has the CUDA backend and a GPU is present",
         [&a](const std::string& v) {
           HS_CHECK(v == "cpu" || v == "cuda" || v == "auto", "--device must be cpu, cuda or auto, got '%s'", v.c_str());
           a.device = v;
         }});
  t.add({"", "--random-weights", "PRESET",
         "GPU speed work without a file: random bf16 weights of a known shape (llama3.1-8b, llama3.2-1b, "
         "qwen2.5-7b, smollm2-135m); no tokenizer, so bench only",
         [&a](const std::string& v) { a.random_weights = v; }});
  t.add({"", "--attn", "dense|hip", "attention: HiP (default) or dense in every layer", [&a](const std::string& v) {
           HS_CHECK(v == "dense" || v == "hip", "--attn must be dense or hip, got '%s'", v.c_str());
           a.attn_overrides["attn"] = v;
         }});
  t.add({"", "--attn-config", "FILE", "JSON attention settings, e.g. {\"attn\": \"hip\", \"k\": 1024} (flags override it)",
         [&a](const std::string& v) { a.attn_config_file = v; }});
  struct HipFlag {
    const char* flag;
    const char* key;
    const char* help;
  };
  static const HipFlag kHipFlags[] = {
      {"--hip-k", "k", "HiP: keys kept per query block, k (default: 512)"},
      {"--hip-block-q", "block_q", "HiP: query block size b_q (default: 32)"},
      {"--hip-block-k", "block_k", "HiP: key block size b_k (default: 2)"},
      {"--hip-stride-q", "stride_q", "HiP: query sampling stride b_sq (default: 2)"},
      {"--hip-stride-k", "stride_k", "HiP: key sampling stride b_sk (default: 1)"},
      {"--hip-sink", "sink", "HiP: sink tokens always attended (default: 16)"},
      {"--hip-window", "window", "HiP: sliding window always attended (default: 256)"},
      {"--hip-refresh", "refresh", "HiP: decode mask refresh interval r_m (default: 8)"},
      {"--hip-dense-layers", "dense_layers", "HiP: first layers kept dense, l_d (default: 3)"},
  };
  for (const HipFlag& f : kHipFlags) {
    const std::string flag = f.flag, key = f.key;
    t.add({"", flag, "N", f.help,
           [&a, flag, key](const std::string& v) { a.attn_overrides[key] = parse_int(flag, v, 0, 1 << 24); }});
  }
  t.add({"", "--hip-dense-also", "LIST",
         "HiP: more layers kept dense beyond the first l_d, as inclusive ranges, e.g. 9-15 (default: none)",
         [&a](const std::string& v) {
           parse_layer_list(v, "--hip-dense-also");  // reject bad lists now, with the flag's name
           a.attn_overrides["dense_also"] = v;
         }});
}

AttentionConfig CommonArgs::attention() const {
  AttentionConfig c;
  if (!attn_config_file.empty()) load_attention_config_file(c, attn_config_file);
  apply_attention_json(c, attn_overrides.dump(), "command-line attention flags");
  const std::string why = c.validate();
  HS_CHECK(why.empty(), "invalid attention settings: %s", why.c_str());
  return c;
}

void add_sampling_options(OptionTable& t, SamplingParams& s) {
  t.add({"", "--temp", "T", "temperature; 0 = greedy (default: 0.8)",
         [&s](const std::string& v) { s.temperature = float(parse_float("--temp", v, 0, 100)); }});
  t.add({"", "--top-k", "N", "keep the N most likely tokens; 0 = off (default: 40)",
         [&s](const std::string& v) { s.top_k = parse_int("--top-k", v, 0, 1 << 30); }});
  t.add({"", "--top-p", "P", "nucleus sampling: smallest set with mass >= P; 1 = off (default: 0.95)",
         [&s](const std::string& v) { s.top_p = float(parse_float("--top-p", v, 1e-9, 1)); }});
  t.add({"", "--min-p", "P", "drop tokens below P x the top probability; 0 = off (default: 0.05)",
         [&s](const std::string& v) { s.min_p = float(parse_float("--min-p", v, 0, 1)); }});
  t.add({"", "--repeat-penalty", "X", "penalize repeats of the last --repeat-last-n tokens; 1 = off (default: 1.0)",
         [&s](const std::string& v) { s.repeat_penalty = float(parse_float("--repeat-penalty", v, 0.01, 100)); }});
  t.add({"", "--repeat-last-n", "N", "window for --repeat-penalty; -1 = whole context (default: 64)",
         [&s](const std::string& v) { s.repeat_last_n = parse_int("--repeat-last-n", v, -1, 1 << 30); }});
  t.add({"", "--presence-penalty", "X", "subtract X from tokens already present (default: 0)",
         [&s](const std::string& v) { s.presence_penalty = float(parse_float("--presence-penalty", v, -2, 2)); }});
  t.add({"", "--frequency-penalty", "X", "subtract X per occurrence (default: 0)",
         [&s](const std::string& v) { s.frequency_penalty = float(parse_float("--frequency-penalty", v, -2, 2)); }});
  t.add({"-s", "--seed", "N", "random seed (default: random)", [&s](const std::string& v) {
           errno = 0;
           char* end = nullptr;
           const unsigned long long x = std::strtoull(v.c_str(), &end, 10);
           HS_CHECK(!v.empty() && *end == '\0' && errno == 0 && v[0] != '-', "--seed expects a non-negative integer");
           s.seed = x;
         }});
}

}  // namespace hs::cli
