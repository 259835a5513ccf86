// Test helpers: where the real SmolLM2 file is, and a cached load of it shared by the tests of one binary.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>
#include <unistd.h>

#include "model/llama.h"

namespace hs::testing {

inline std::string smollm2_path() {
  if (const char* env = std::getenv("HIPSERVE_MODEL"); env && *env) return env;
  return std::string(HIPSERVE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}
inline bool have_smollm2() { return access(smollm2_path().c_str(), R_OK) == 0; }

// Loaded once per process (the file is mapped read-only, so sharing is safe); null when the file is absent.
inline Model* smollm2() {
  static std::unique_ptr<Model> model = [] {
    LoadOptions o;
    o.show_progress = false;
    o.prefault = false;
    return have_smollm2() ? Model::load(smollm2_path(), o) : nullptr;
  }();
  return model.get();
}

// n token ids drawn uniformly from [0, n_vocab), reproducibly from seed.
inline std::vector<int32_t> random_tokens(int n, int n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, n_vocab - 1);
  std::vector<int32_t> t(size_t(n), 0);
  for (auto& x : t) x = d(rng);
  return t;
}

// Restores a model's attention settings when it goes (tests that change the shared model's attention).
struct AttentionGuard {
  Model& m;
  AttentionConfig saved;
  explicit AttentionGuard(Model& model) : m(model), saved(model.attention()) {}
  ~AttentionGuard() { m.set_attention(saved); }
};

#define HS_REQUIRE_SMOLLM2()                                                                                   \
  if (!::hs::testing::have_smollm2())                                                                           \
  GTEST_SKIP() << "SmolLM2 model not found at " << ::hs::testing::smollm2_path()                               \
               << " (run scripts/fetch_model.sh)"

}  // namespace hs::testing
