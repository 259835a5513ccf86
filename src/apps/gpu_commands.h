// The GPU paths of `hipserve bench` and `hipserve run` (--device cuda). Built into every binary; without the
// CUDA backend these functions only report that (CommonArgs::use_cuda() keeps them from being called).
#pragma once

#include <string>
#include <vector>

#include "apps/cli.h"
#include "engine/session.h"

namespace hs::cli {

struct BenchPlan {
  std::vector<int> prompts, gens, depths;
  int reps = 3;
  bool warmup = true;
  bool json = false;
  bool profile = true;  // one extra, profiled decode run per tg test: where the time goes
};
int gpu_bench(const CommonArgs& common, const BenchPlan& plan);

// Generates from the token ids on the GPU, streaming text to stdout; prints llama.cpp-style timings.
int gpu_run(const CommonArgs& common, struct LoadedModel& lm, const std::vector<int32_t>& ids, const GenerateOptions& gen);

}  // namespace hs::cli
