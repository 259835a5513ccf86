// Stop strings for streamed output (OpenAI's `stop` list): holds back text that could still become a stop
// string and cuts the output before the first one that completes.
//
// Matching is on bytes, so multi-byte UTF-8 stops work as long as the text is UTF-8 (a stop can only start on
// a character boundary, hence held-back text never splits a character that the input did not already split).
//
// Which stop wins: the one that completes first in the text (earliest end); among stops ending at the same
// byte, the longest (earliest start). This depends only on the whole text, never on how it was split into
// pushes: with stops {"ab", "abc"} the text "abc" stops at "ab" even when "abc" arrives in one push, because
// a token-by-token stream would have stopped there.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace hs {

class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops);  // empty strings are ignored

  // Feeds newly decoded text; returns the text that is safe to emit now: everything except the longest suffix
  // that is a proper prefix of some stop string. Once a stop string is found, returns the text before it and
  // stopped() becomes true; later pushes return "". Concatenating every return value (and flush()) gives the
  // input up to the stop, or the whole input if none matched.
  std::string push(std::string_view text);

  // End of generation: the held-back text (nothing if stopped).
  std::string flush();

  bool stopped() const { return stopped_; }
  const std::string& matched() const { return matched_; }  // the stop string that matched ("" if none)
  const std::string& pending() const { return pending_; }  // held back, not yet returned
  const std::vector<std::string>& stops() const { return stops_; }

 private:
  std::vector<std::string> stops_;
  size_t max_len_ = 0;  // longest stop, in bytes
  std::string pending_;
  std::string matched_;
  bool stopped_ = false;
};

}  // namespace hs
