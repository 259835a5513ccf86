#include "engine/stop_strings.h"

#include <algorithm>
#include <utility>

namespace hs {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops) {
  for (std::string& s : stops) {
    if (s.empty()) continue;
    max_len_ = std::max(max_len_, s.size());
    stops_.push_back(std::move(s));
  }
}

std::string StopStringMatcher::push(std::string_view text) {
  if (stopped_) return "";
  pending_.append(text);
  if (stops_.empty()) return std::exchange(pending_, std::string());

  // pending_ holds less than max_len_ bytes from before plus `text`, and no stop lies wholly in the old part
  // (it would have been found then) nor starts in text already returned (that text would have been held
  // back).
  size_t best_start = std::string::npos, best_end = std::string::npos;
  const std::string* best = nullptr;
  for (const std::string& s : stops_) {
    const size_t start = pending_.find(s);
    if (start == std::string::npos) continue;
    const size_t end = start + s.size();
    if (end < best_end || (end == best_end && start < best_start)) {
      best_start = start;
      best_end = end;
      best = &s;
    }
  }
  if (best) {
    stopped_ = true;
    matched_ = *best;
    std::string out = pending_.substr(0, best_start);
    pending_.clear();
    return out;
  }

  // Hold back the longest suffix that some stop starts with (a proper prefix: a whole stop would have
  // matched).
  const std::string_view p = pending_;
  size_t hold = 0;
  for (size_t k = std::min(p.size(), max_len_ - 1); k > 0 && hold == 0; --k) {
    const std::string_view suffix = p.substr(p.size() - k);
    for (const std::string& s : stops_) {
      if (s.size() > k && std::string_view(s).substr(0, k) == suffix) {
        hold = k;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopStringMatcher::flush() {
  if (stopped_) return "";
  return std::exchange(pending_, std::string());
}

}  // namespace hs
