// Loads the model named by the common options, with the pool and context size every command needs.
#pragma once

#include <memory>

#include "apps/cli.h"
#include "model/llama.h"
#include "util/thread_pool.h"

namespace hs::cli {

struct LoadedModel {
  std::unique_ptr<Model> model;
  std::unique_ptr<ThreadPool> pool;
  int32_t n_ctx = 0;
  double load_ms = 0;
};

// Prints one summary line (and the metadata with --verbose) to stderr.
// on_gpu: the model only feeds a GPU upload, so the CPU kernels' packed weights (--matmul int8) are skipped.
LoadedModel load_model(const CommonArgs& args, bool quiet = false, bool on_gpu = false);

// Peak resident memory of this process so far, in MiB (getrusage).
double peak_rss_mib();

}  // namespace hs::cli
