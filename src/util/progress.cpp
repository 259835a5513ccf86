#include "util/progress.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

namespace hs {

bool ProgressBar::default_enabled() {
  const char* env = std::getenv("HIPSERVE_PROGRESS");
  if (env) return std::strcmp(env, "0") != 0;
  return isatty(STDERR_FILENO) != 0;
}

ProgressBar::ProgressBar(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)), total_(total > 0 ? total : 1), enabled_(enabled) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
  if (enabled_) draw(0, true);
}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(int64_t done) {
  if (enabled_ && !finished_) draw(done, false);
}

void ProgressBar::finish() {
  if (!enabled_ || finished_) return;
  draw(total_, true);
  std::fputc('\n', stderr);
  finished_ = true;
}

void ProgressBar::draw(int64_t done, bool force) {
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  if (done > total_) done = total_;
  const double frac = double(done) / double(total_);
  constexpr int kWidth = 30;
  const int filled = int(frac * kWidth + 0.5);
  char bar[kWidth + 1];
  for (int i = 0; i < kWidth; ++i) bar[i] = i < filled ? '#' : '.';
  bar[kWidth] = '\0';
  const double secs = std::chrono::duration<double>(now - start_).count();
  std::fprintf(stderr, "\r%s [%s] %3.0f%% %lld/%lld %.1fs", label_.c_str(), bar, frac * 100.0, (long long)done,
               (long long)total_, secs);
  std::fflush(stderr);
}

}  // namespace hs
