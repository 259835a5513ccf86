// Command-line plumbing shared by the subcommands: one table of options drives parsing and --help.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/sampler.h"
#include "model/attention_config.h"

namespace hs::cli {

struct Option {
  std::string short_name;  // "-m" or ""
  std::string long_name;   // "--model"
  std::string arg;         // metavariable ("FILE"); empty for a flag
  std::string help;
  std::function<void(const std::string& value)> apply;
};

class OptionTable {
 public:
  void add(Option o) { options_.push_back(std::move(o)); }
  // Parses args (not including the program and subcommand names). Positional arguments are returned.
  // Throws hs::Error on unknown options or missing/invalid values.
  std::vector<std::string> parse(const std::vector<std::string>& args) const;
  std::string help() const;  // aligned "  -m, --model FILE  text" lines

 private:
  std::vector<Option> options_;
};

int parse_int(const std::string& flag, const std::string& v, long long lo, long long hi);
double parse_float(const std::string& flag, const std::string& v, double lo, double hi);
std::vector<int> parse_int_list(const std::string& flag, const std::string& v, long long lo, long long hi);

// Options shared by run/chat/bench/eval.
struct CommonArgs {
  std::string model;  // -m; defaults to default_model_path()
  int threads = 0;    // -t; 0 = number of CPUs
  int ctx = 0;        // -c; 0 = the model's training context
  bool verbose = false;
  bool int8_matmul = true;  // --matmul int8 (default) | f32
  std::string device = "auto";  // --device cpu|cuda|auto (auto: cuda when built with it and a GPU is present)
  std::string random_weights;   // --random-weights PRESET (GPU only): no model file
  bool use_cuda() const;        // resolves --device; throws hs::Error for cuda without a GPU
  // Attention: defaults, then --attn-config FILE, then the individual flags (kept as JSON overrides).
  std::string attn_config_file;
  nlohmann::json attn_overrides = nlohmann::json::object();
  AttentionConfig attention() const;  // the resolved configuration
};
std::string default_model_path();
int default_threads();
void add_common_options(OptionTable& t, CommonArgs& a);
void add_sampling_options(OptionTable& t, SamplingParams& s);

}  // namespace hs::cli
