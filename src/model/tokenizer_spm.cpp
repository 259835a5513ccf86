// SentencePiece BPE (tokenizer.ggml.model = "llama") as llama.cpp's llm_tokenizer_spm runs it: start from the
// UTF-8 characters of the text, repeatedly merge the adjacent pair whose concatenation is a token with the
// highest score (leftmost first on ties), then emit each piece's token, or its bytes as <0xNN> tokens when
// the piece is not in the vocab. Merge candidates are normal and user-defined tokens only (as in
// sentencepiece; llama.cpp also accepts control/byte texts, which cannot arise from real vocabs).
#include <algorithm>
#include <cstdio>
#include <queue>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer_impl.h"

namespace hs::tok {

SpmEncoder::SpmEncoder(const VocabData& vocab, const TokenMap& token_map)
    : vocab_(vocab), token_map_(token_map) {
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    const auto it = token_map_.find(name);
    byte_token_[b] = it == token_map_.end() ? -1 : it->second;
  }
}

int32_t SpmEncoder::mergeable_id(std::string_view text) const {
  const auto it = token_map_.find(text);
  if (it == token_map_.end()) return -1;
  const int32_t type = vocab_.token_types[it->second];
  return type == kTokenNormal || type == kTokenUserDefined || type == kTokenUndefined ? it->second : -1;
}

void SpmEncoder::encode(std::string_view text, std::vector<int32_t>& out) const {
  // One symbol per character; an invalid byte is a character of its own.
  struct Symbol {
    size_t start, len;  // bytes of text; len 0 once merged into the left neighbour
    int32_t prev, next;
  };
  std::vector<Symbol> sym;
  for (size_t i = 0; i < text.size();) {
    const size_t len = std::max<size_t>(1, utf8_valid_len(text, i));
    const int32_t index = int32_t(sym.size());
    sym.push_back({i, len, index - 1, i + len < text.size() ? index + 1 : -1});
    i += len;
  }
  if (sym.empty()) return;

  struct Pair {
    float score;
    int32_t left, right;
    size_t len;  // bytes of the merged text when queued: stale once either side changed
  };
  struct Lower {
    bool operator()(const Pair& a, const Pair& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };
  std::priority_queue<Pair, std::vector<Pair>, Lower> queue;
  auto push_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const size_t len = sym[left].len + sym[right].len;
    const int32_t id = mergeable_id(text.substr(sym[left].start, len));
    if (id >= 0) queue.push({vocab_.scores[id], left, right, len});
  };
  for (int32_t i = 0; i + 1 < int32_t(sym.size()); ++i) push_pair(i, i + 1);

  while (!queue.empty()) {
    const Pair p = queue.top();
    queue.pop();
    Symbol& l = sym[p.left];
    Symbol& r = sym[p.right];
    // Symbols only grow, so an unchanged total length means both sides are as they were.
    if (l.len == 0 || r.len == 0 || l.len + r.len != p.len) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = p.left;
    push_pair(l.prev, p.left);
    push_pair(p.left, l.next);
  }

  for (int32_t i = 0; i >= 0; i = sym[i].next) {
    const std::string_view piece = text.substr(sym[i].start, sym[i].len);
    if (const int32_t id = mergeable_id(piece); id >= 0) {
      out.push_back(id);
      continue;
    }
    // Byte fallback; without byte tokens each unknown character becomes unk (dropped if there is no unk).
    bool have_bytes = true;
    for (unsigned char c : piece) have_bytes = have_bytes && byte_token_[c] >= 0;
    if (have_bytes) {
      for (unsigned char c : piece) out.push_back(byte_token_[c]);
    } else if (vocab_.unk_id >= 0) {
      out.push_back(vocab_.unk_id);
    }
  }
}

}  // namespace hs::tok
