#include <gtest/gtest.h>

#include "engine/stop_strings.h"

#include <random>

namespace hs {
namespace {

struct Expected {
  std::string text;  // what the client should see
  std::string matched;
  bool stopped = false;
};

// Independent reference: scan end positions left to right; the first end where some stop completes wins, the
// longest stop among those ending there.
Expected reference(const std::string& text, const std::vector<std::string>& stops) {
  for (size_t end = 1; end <= text.size(); ++end) {
    const std::string* best = nullptr;
    for (const std::string& s : stops) {
      if (s.empty() || s.size() > end || text.compare(end - s.size(), s.size(), s) != 0) continue;
      if (!best || s.size() > best->size()) best = &s;
    }
    if (best) return {text.substr(0, end - best->size()), *best, true};
  }
  return {text, "", false};
}

// Feeds `text` cut at `cuts` (ascending byte offsets) and checks the streaming invariants after every push.
Expected run(const std::string& text, const std::vector<std::string>& stops,
             const std::vector<size_t>& cuts) {
  StopStringMatcher m(stops);
  Expected got;
  size_t begin = 0;
  for (size_t i = 0; i <= cuts.size(); ++i) {
    const size_t end = i < cuts.size() ? cuts[i] : text.size();
    got.text += m.push(std::string_view(text).substr(begin, end - begin));
    if (!m.stopped()) {
      // Nothing lost, nothing emitted that a stop could still claim.
      EXPECT_EQ(got.text + m.pending(), text.substr(0, end));
      if (!m.pending().empty()) {
        bool is_prefix = false;
        for (const std::string& s : stops)
          is_prefix |= s.size() > m.pending().size() && s.starts_with(m.pending());
        EXPECT_TRUE(is_prefix) << "held back '" << m.pending() << "' that no stop starts with";
      }
    }
    begin = end;
  }
  got.text += m.flush();
  got.stopped = m.stopped();
  got.matched = m.matched();
  EXPECT_EQ(m.push("\x01"), m.stopped() ? "" : "\x01");  // no stop contains \x01
  return got;
}

void expect_same(const Expected& got, const Expected& want, const std::string& what) {
  EXPECT_EQ(got.text, want.text) << what;
  EXPECT_EQ(got.stopped, want.stopped) << what;
  EXPECT_EQ(got.matched, want.matched) << what;
}

// Every split into 1, 2 and 3 pushes, plus byte by byte.
void check_all_splits(const std::string& text, const std::vector<std::string>& stops) {
  const Expected want = reference(text, stops);
  expect_same(run(text, stops, {}), want, "one push: " + text);
  for (size_t a = 0; a <= text.size(); ++a) {
    expect_same(run(text, stops, {a}), want, "cut at " + std::to_string(a) + ": " + text);
    for (size_t b = a; b <= text.size(); ++b)
      expect_same(run(text, stops, {a, b}), want, "cuts " + std::to_string(a) + "," + std::to_string(b));
  }
  std::vector<size_t> every;
  for (size_t i = 1; i < text.size(); ++i) every.push_back(i);
  expect_same(run(text, stops, every), want, "byte by byte: " + text);
}

TEST(StopStrings, ReferenceExamples) {
  EXPECT_EQ(reference("xxabcd", {"abc", "ab"}).text, "xx");
  EXPECT_EQ(reference("xxabcd", {"abc", "ab"}).matched, "ab");
  EXPECT_EQ(reference("abc", {"bc", "abc"}).matched, "abc");
}

TEST(StopStrings, SplitAnywhereGivesTheSameResult) {
  check_all_splits("Hello world, goodbye", {"world"});
  check_all_splits("Hello wor", {"world"});        // no stop: flush releases "wor"
  check_all_splits("STOP right there", {"STOP"});  // stop at the very start
  check_all_splits("the end", {"end"});            // stop at the very end
  check_all_splits("xxabcd", {"abc", "ab"});       // overlapping: "ab" completes first
  check_all_splits("xxabcd", {"ab", "abc"});       // list order does not matter
  check_all_splits("abc", {"bc", "abc"});          // same end: the longer wins
  check_all_splits("aaab", {"aab"});               // self-overlapping stop
  check_all_splits("ababac", {"abac"});
  check_all_splits("a\nb\n\nUser:", {"\n\n", "User:"});
  check_all_splits("plain text", {});
  check_all_splits("plain text", {"", "zz"});  // empty stops ignored
}

TEST(StopStrings, MultiByteUtf8) {
  check_all_splits("これは日本語です", {"日本"});
  check_all_splits("caf\xC3\xA9 au lait", {"\xC3\xA9"});
  check_all_splits("emoji \xF0\x9F\x98\x80!", {"\xF0\x9F\x98\x80"});
  // A stop sharing a lead byte with the text must not eat the other character.
  check_all_splits("\xC3\xA8\xC3\xA9", {"\xC3\xA9"});
  const Expected e = run("これは日本語です", {"日本"}, {});
  EXPECT_EQ(e.text, "これは");
  EXPECT_EQ(e.matched, "日本");
}

TEST(StopStrings, AfterStopEverythingIsEmpty) {
  StopStringMatcher m({"</s>"});
  EXPECT_EQ(m.push("ok</"), "ok");
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.pending(), "</");
  EXPECT_EQ(m.push("s>tail"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched(), "</s>");
  EXPECT_EQ(m.push("x"), "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopStrings, NoStopsPassThrough) {
  StopStringMatcher m({"", ""});
  EXPECT_EQ(m.push("abc"), "abc");
  EXPECT_EQ(m.flush(), "");
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.matched(), "");
}

TEST(StopStrings, RandomTextsAndSplits) {
  std::mt19937_64 rng(7);
  const auto rand_string = [&](size_t min_len, size_t max_len) {
    std::string s(min_len + rng() % (max_len - min_len + 1), 'a');
    for (char& c : s) c = char('a' + rng() % 3);
    return s;
  };
  for (int iter = 0; iter < 400; ++iter) {
    const std::string text = rand_string(0, 14);
    std::vector<std::string> stops;
    for (size_t n = rng() % 4; n > 0; --n) stops.push_back(rand_string(1, 4));
    const Expected want = reference(text, stops);
    for (int split = 0; split < 8; ++split) {
      std::vector<size_t> cuts;
      for (size_t i = 1; i < text.size(); ++i)
        if (rng() % 3 == 0) cuts.push_back(i);
      expect_same(run(text, stops, cuts), want, text);
    }
  }
}

}  // namespace
}  // namespace hs
