// Byte-level BPE (tokenizer.ggml.model = "gpt2"), after llama.cpp's llm_tokenizer_bpe_session:
//   1. the pre-tokenizer regexes split the text into words (each regex runs inside the pieces of the one
//      before it, and the text between matches is kept as pieces too);
//   2. each byte of a word becomes the symbol of its GPT-2 byte-level character;
//   3. the adjacent pair with the lowest merge rank is merged (leftmost first on ties) until no pair has a
//      merge; the final symbols are the tokens.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <queue>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer_impl.h"
#include "util/common.h"

namespace hs::tok {

namespace {

// The regexes as llama.cpp spells them (the Llama-3 ones use [sS] classes instead of (?i:...) so that
// Unicode case folding cannot match e.g. U+017F for 's').
constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr const char* kLlama3Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|)"
    R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|)"
    R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kSingleDigitRegex = R"(\p{N})";

struct PreTokenizer {
  std::vector<const char*> regexes;
  bool ignore_merges = false;
};

bool one_of(const std::string& s, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (s == n) return true;
  return false;
}

// tokenizer.ggml.pre -> regexes, with llama.cpp's aliases that share a regex.
PreTokenizer pre_tokenizer_for(const std::string& pre) {
  if (one_of(pre, {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}))
    return {{kSingleDigitRegex, kGpt2Regex}, false};
  if (one_of(pre, {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"}))
    return {{kLlama3Regex}, true};
  if (one_of(pre, {"dbrx", "smaug-bpe", "chatglm-bpe", "glm4"})) return {{kLlama3Regex}, false};
  if (one_of(pre, {"qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan"}))
    return {{kQwen2Regex}, false};
  if (one_of(pre, {"gpt-2", "default", "phi-2", "mpt", "olmo", "jais", "roberta-bpe", "jina-v1-en", "jina-es",
                   "jina-de", "jina-v2-es", "jina-v2-de", "jina-v2-code", "gigachat", "exaone4", "trillion"}))
    return {{kGpt2Regex}, false};
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    if (pre.empty())
      std::fprintf(stderr, "warning: tokenizer.ggml.pre is missing; using the GPT-2 pre-tokenizer\n");
    else
      std::fprintf(stderr, "warning: unknown tokenizer.ggml.pre '%s'; using the GPT-2 pre-tokenizer\n",
                   pre.c_str());
  }
  return {{kGpt2Regex}, false};
}

}  // namespace

struct BpeEncoder::Regex {
  pcre2_code* code = nullptr;
  explicit Regex(const char* pattern) {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    // MATCH_INVALID_UTF: invalid bytes never match and split the text instead of failing the match.
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                         PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_offset, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail(strfmt("pre-tokenizer regex fails to compile at %zu: %s", size_t(err_offset),
                  reinterpret_cast<const char*>(msg)));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
  }
  ~Regex() { pcre2_code_free(code); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
};

namespace {

struct MatchData {
  pcre2_match_data* md;
  explicit MatchData(const pcre2_code* code) : md(pcre2_match_data_create_from_pattern(code, nullptr)) {
    HS_CHECK(md, "out of memory for regex match data");
  }
  ~MatchData() { pcre2_match_data_free(md); }
};

}  // namespace

BpeEncoder::BpeEncoder(const VocabData& vocab, const TokenMap& token_map)
    : token_map_(token_map), n_vocab_(int32_t(vocab.tokens.size())) {
  const PreTokenizer pre = pre_tokenizer_for(vocab.pre);
  for (const char* r : pre.regexes) regexes_.push_back(std::make_unique<Regex>(r));
  ignore_merges_ = pre.ignore_merges;

  const auto& alphabet = byte_to_unicode();
  for (int b = 0; b < 256; ++b) byte_symbol_[b] = intern(alphabet[b]);

  merges_.reserve(vocab.merges.size());
  for (size_t i = 0; i < vocab.merges.size(); ++i) {
    const std::string& m = vocab.merges[i];
    const size_t space = m.find(' ', 1);  // from 1: a part may itself start with a space (llama.cpp)
    if (space == std::string::npos) continue;
    const std::string left = m.substr(0, space), right = m.substr(space + 1);
    const int32_t l = intern(left), r = intern(right), result = intern(left + right);
    merges_.emplace(uint64_t(uint32_t(l)) << 32 | uint32_t(r), Merge{int32_t(i), result});  // first rank wins
  }
}

BpeEncoder::~BpeEncoder() = default;

int32_t BpeEncoder::intern(const std::string& text) {
  if (const auto it = token_map_.find(text); it != token_map_.end()) return it->second;
  const auto [it, inserted] = extra_symbol_ids_.emplace(text, n_vocab_ + int32_t(extra_symbols_.size()));
  if (inserted) extra_symbols_.push_back(text);
  return it->second;
}

template <typename Emit>
void BpeEncoder::split(std::string_view text, size_t regex_index, Emit&& emit) const {
  if (regex_index == regexes_.size()) {
    emit(text);
    return;
  }
  const pcre2_code* code = regexes_[regex_index]->code;
  MatchData match(code);
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start < text.size()) {
    // The subject is only this piece, so lookaheads such as (?!\S) see its end as the end of the text.
    const int rc = pcre2_match(code, subject, text.size(), start, PCRE2_NOTEMPTY, match.md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail(strfmt("pre-tokenizer regex match failed: %s", reinterpret_cast<const char*>(msg)));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match.md);
    const size_t begin = ov[0], end = ov[1];
    if (begin > start) split(text.substr(start, begin - start), regex_index + 1, emit);  // unmatched gap
    split(text.substr(begin, end - begin), regex_index + 1, emit);
    start = end;
  }
  if (start < text.size()) split(text.substr(start), regex_index + 1, emit);
}

void BpeEncoder::encode(std::string_view text, std::vector<int32_t>& out) const {
  split(text, 0, [&](std::string_view word) { encode_word(word, out); });
}

void BpeEncoder::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  std::string key(word);
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (const auto it = cache_.find(key); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  bpe_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (cache_.size() >= (1u << 16)) cache_.clear();  // bound memory on endless distinct input
  cache_.emplace(std::move(key), std::move(ids));
}

void BpeEncoder::bpe_word(std::string_view word, std::vector<int32_t>& out) const {
  const auto& alphabet = byte_to_unicode();
  if (ignore_merges_) {  // llama3: a word that is itself a token is taken whole
    std::string encoded;
    for (unsigned char c : word) encoded += alphabet[c];
    if (const auto it = token_map_.find(encoded); it != token_map_.end()) {
      out.push_back(it->second);
      return;
    }
  }

  // Doubly linked list of symbols over the word's bytes; merged-away symbols get id -1.
  struct Symbol {
    int32_t id;
    int32_t prev, next;
  };
  const int n = int(word.size());
  std::vector<Symbol> sym(n);
  for (int i = 0; i < n; ++i) sym[i] = {byte_symbol_[uint8_t(word[i])], i - 1, i + 1 < n ? i + 1 : -1};

  struct Pair {
    int32_t rank;
    int32_t left, right;        // symbol positions
    int32_t left_id, right_id;  // their ids when queued: a pair is stale once either changed
    int32_t result;
  };
  struct Later {
    bool operator()(const Pair& a, const Pair& b) const {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
  };
  std::priority_queue<Pair, std::vector<Pair>, Later> queue;
  auto push_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const uint64_t key = uint64_t(uint32_t(sym[left].id)) << 32 | uint32_t(sym[right].id);
    if (const auto it = merges_.find(key); it != merges_.end())
      queue.push({it->second.rank, left, right, sym[left].id, sym[right].id, it->second.result});
  };
  for (int i = 0; i + 1 < n; ++i) push_pair(i, i + 1);

  while (!queue.empty()) {
    const Pair p = queue.top();
    queue.pop();
    Symbol& l = sym[p.left];
    Symbol& r = sym[p.right];
    if (l.id != p.left_id || r.id != p.right_id || l.next != p.right) continue;  // stale
    l.id = p.result;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = p.left;
    r.id = -1;
    push_pair(l.prev, p.left);
    push_pair(p.left, l.next);
  }

  for (int i = 0; i >= 0 && i < n; i = sym[i].next) {
    const int32_t id = sym[i].id;
    if (id < n_vocab_) {
      out.push_back(id);
      continue;
    }
    // A symbol that is not a token (a merge result missing from the vocab): emit its characters' tokens.
    const std::string& text = extra_symbols_[id - n_vocab_];
    for (size_t k = 0; k < text.size();) {
      const size_t len = std::max<size_t>(1, utf8_valid_len(text, k));
      if (const auto it = token_map_.find(std::string_view(text).substr(k, len)); it != token_map_.end())
        out.push_back(it->second);
      k += len;
    }
  }
}

}  // namespace hs::tok
