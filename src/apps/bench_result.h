// One llama-bench-style test's result, shared by the CPU and GPU paths of `hipserve bench`.
#pragma once

#include <cmath>
#include <string>
#include <vector>

namespace hs::cli {

struct BenchResult {
  std::string test;  // "pp512", "tg128", "tg128@d4096"
  int n_prompt = 0, n_gen = 0, depth = 0;
  int batch = 1;  // decode tests: sequences decoding together (tok_per_s is their sum)
  std::vector<double> tok_per_s;  // one per timed repetition

  double mean() const {
    double s = 0;
    for (double x : tok_per_s) s += x;
    return tok_per_s.empty() ? 0 : s / double(tok_per_s.size());
  }
  double stddev() const {  // sample standard deviation
    if (tok_per_s.size() < 2) return 0;
    const double m = mean();
    double s = 0;
    for (double x : tok_per_s) s += (x - m) * (x - m);
    return std::sqrt(s / double(tok_per_s.size() - 1));
  }
};

}  // namespace hs::cli
