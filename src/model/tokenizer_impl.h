// Internals of the tokenizers (tokenizer.h): UTF-8 and byte-level helpers and the two encoders. Only the
// tokenizer_*.cpp files include this.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/tokenizer.h"

namespace hs::tok {

// Exact vocab string -> id. Views point into VocabData::tokens, which never changes after construction.
using TokenMap = std::unordered_map<std::string_view, int32_t>;

// ---- UTF-8 ----

// Length (1..4) of the valid UTF-8 sequence starting at s[i], or 0 when the bytes there are not one (invalid
// lead byte, bad continuation, overlong, surrogate, > U+10FFFF, or cut off by the end of s).
size_t utf8_valid_len(std::string_view s, size_t i);

// For a sequence at s[i] that is not valid: how many bytes form its maximal subpart (a prefix that could
// start a valid sequence; at least 1), and whether it is only cut off by the end of s (could still complete).
struct Utf8Invalid {
  size_t len;
  bool truncated;
};
Utf8Invalid utf8_invalid_prefix(std::string_view s, size_t i);

void append_utf8(std::string& out, uint32_t cp);  // cp must be a Unicode scalar value

// Decodes the code point of a sequence already known to be valid (length utf8_valid_len).
uint32_t utf8_decode(std::string_view s, size_t i, size_t len);

// ---- GPT-2 byte-level alphabet ----
// Bytes 0x21..0x7E, 0xA1..0xAC and 0xAE..0xFF stand for themselves; the other 68 bytes map to U+0100.. in
// byte order, so that every byte is a printable code point.
const std::array<std::string, 256>& byte_to_unicode();  // UTF-8 of the code point for each byte
int unicode_to_byte(uint32_t cp);                       // inverse; -1 for code points outside the alphabet

// ---- encoders (thread-safe; one per Tokenizer) ----

// Byte-level BPE with pre-tokenizer regexes chosen by VocabData::pre.
class BpeEncoder {
 public:
  BpeEncoder(const VocabData& vocab, const TokenMap& token_map);
  ~BpeEncoder();
  // Appends the tokens of `text` (no special tokens inside) to out.
  void encode(std::string_view text, std::vector<int32_t>& out) const;

  struct Regex;  // a compiled PCRE2 pattern

 private:
  // Splits text by regex i (then the rest), calling emit(piece) for every matched piece and every gap.
  template <typename Emit>
  void split(std::string_view text, size_t regex_index, Emit&& emit) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void bpe_word(std::string_view word, std::vector<int32_t>& out) const;
  int32_t intern(const std::string& text);  // symbol id of a string (vocab id or an extra id >= n_vocab)

  const TokenMap& token_map_;
  int32_t n_vocab_;
  std::vector<std::unique_ptr<Regex>> regexes_;
  bool ignore_merges_ = false;

  // Symbols are vocab ids, plus ids >= n_vocab for merge parts and byte characters that are not tokens, so
  // that BPE runs on integers but behaves exactly like merging strings.
  std::vector<std::string> extra_symbols_;
  std::unordered_map<std::string, int32_t> extra_symbol_ids_;
  std::array<int32_t, 256> byte_symbol_{};  // symbol of each byte's byte-level character
  struct Merge {
    int32_t rank;
    int32_t result;  // symbol id of the concatenation
  };
  std::unordered_map<uint64_t, Merge> merges_;  // key: left symbol << 32 | right symbol

  // Per-word results: a book has ~10k distinct words for ~80k occurrences. Bounded by clearing.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

// SentencePiece-style BPE over UTF-8 characters by token score (llama.cpp's llm_tokenizer_spm).
class SpmEncoder {
 public:
  SpmEncoder(const VocabData& vocab, const TokenMap& token_map);
  // `text` has spaces already replaced by U+2581 (and the space prefix added).
  void encode(std::string_view text, std::vector<int32_t>& out) const;

 private:
  int32_t mergeable_id(std::string_view text) const;  // id of a normal/user-defined token, else -1

  const VocabData& vocab_;
  const TokenMap& token_map_;
  std::array<int32_t, 256> byte_token_;  // <0xNN> token per byte, -1 if absent
};

}  // namespace hs::tok
