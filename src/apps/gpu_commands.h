// The GPU paths of the apps (--device cuda): `hipserve bench` on the GPU, the Sequence (CPU or GPU) that
// `run`, `chat` and `eval ppl|passkey` drive, and the SlotBackend (CPU or GPU) that `serve` drives. Built into every binary; without the CUDA backend the GPU paths
// only report that (CommonArgs::use_cuda() keeps them from being called).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "apps/cli.h"
#include "apps/loader.h"
#include "engine/batch_engine.h"
#include "model/sequence.h"
#include "model/slot_backend.h"

namespace hs::cli {

struct BenchPlan {
  std::vector<int> prompts, gens, depths;
  std::vector<int> batches = {1};  // decode tests: sequences decoding together (GpuModel::forward when > 1)
  int reps = 3;
  bool warmup = true;
  bool json = false;
  bool profile = true;  // one extra, profiled decode run per tg test: where the time goes
};
int gpu_bench(const CommonArgs& common, const BenchPlan& plan);

// A sequence of lm.n_ctx positions: on the GPU (the model's weights uploaded as bf16; prints the device and the
// upload time) when on_gpu, else on the CPU with lm's thread pool.
std::unique_ptr<Sequence> make_sequence(const CommonArgs& common, LoadedModel& lm, bool on_gpu);
// The slots `serve` runs on: engine.n_slots sequences of engine.n_ctx positions, on the GPU (weights uploaded as
// bf16, one K/V region per slot) when on_gpu, else the CPU model with a paged K/V pool.
std::unique_ptr<SlotBackend> make_slot_backend(const CommonArgs& common, LoadedModel& lm, const EngineOptions& engine,
                                               bool on_gpu);

}  // namespace hs::cli
