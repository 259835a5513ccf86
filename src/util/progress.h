// A one-line progress bar on stderr for long work (model load, long prefill, evals). Draws only when stderr is
// a terminal (or HIPSERVE_PROGRESS=1), at most ~10 times a second, so logs and pipes stay clean.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace hs {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, bool enabled = default_enabled());
  ~ProgressBar();
  void update(int64_t done);  // absolute progress in [0, total]
  void finish();              // draws 100% and ends the line (idempotent)
  static bool default_enabled();

 private:
  void draw(int64_t done, bool force);
  std::string label_;
  int64_t total_;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace hs
