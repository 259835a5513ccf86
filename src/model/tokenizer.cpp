// Tokenizer front end: vocab validation, special-token splitting, BOS/EOS, decoding, streaming decode.
// The two encoders live in tokenizer_bpe.cpp and tokenizer_spm.cpp.
#include "model/tokenizer.h"

#include <algorithm>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "model/tokenizer_impl.h"
#include "util/common.h"

namespace hs {

namespace {

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";     // U+2581 LOWER ONE EIGHTH BLOCK
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Token texts that end generation whatever the metadata says (llama.cpp's special_eog_ids list).
constexpr const char* kEndOfGenerationTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",   "<|endoftext|>",      "<|eom_id|>",
    "<EOT>",      "_<EOT>",     "</s>",    "<|end_of_text|>", "<end_of_utterance>",
};

void check_id(const VocabData& v, int32_t id, const char* what) {
  HS_CHECK(id >= -1 && id < int32_t(v.tokens.size()), "tokenizer: %s id %d is outside the vocab (%zu tokens)",
           what, int(id), v.tokens.size());
}

// Checks that do not depend on the GGUF file; fills absent scores/types. Throws hs::Error.
void validate_and_fill(VocabData& v) {
  HS_CHECK(v.model == "gpt2" || v.model == "llama",
           "tokenizer: unsupported tokenizer model '%s' (supported: gpt2, llama)", v.model.c_str());
  HS_CHECK(!v.tokens.empty(), "tokenizer: the vocab is empty");
  HS_CHECK(v.tokens.size() < size_t(INT32_MAX / 2), "tokenizer: the vocab is too large (%zu)",
           v.tokens.size());
  HS_CHECK(v.scores.empty() || v.scores.size() == v.tokens.size(), "tokenizer: %zu scores for %zu tokens",
           v.scores.size(), v.tokens.size());
  HS_CHECK(v.token_types.empty() || v.token_types.size() == v.tokens.size(),
           "tokenizer: %zu token types for %zu tokens", v.token_types.size(), v.tokens.size());
  if (v.scores.empty()) v.scores.assign(v.tokens.size(), 0.0f);
  if (v.token_types.empty()) v.token_types.assign(v.tokens.size(), kTokenNormal);
  check_id(v, v.bos_id, "BOS");
  check_id(v, v.eos_id, "EOS");
  check_id(v, v.eot_id, "EOT");
  check_id(v, v.eom_id, "EOM");
  check_id(v, v.unk_id, "unknown-token");
  check_id(v, v.pad_id, "padding");
  HS_CHECK(!v.add_bos || v.bos_id >= 0, "tokenizer: add_bos_token is set but there is no BOS id");
  HS_CHECK(!v.add_eos || v.eos_id >= 0, "tokenizer: add_eos_token is set but there is no EOS id");
}

// "<0xNN>" -> NN, or -1.
int parse_byte_token(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int v = 0;
  for (char c : t.substr(3, 2)) {
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= c - '0';
    else if (c >= 'A' && c <= 'F')
      v |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f')
      v |= c - 'a' + 10;
    else
      return -1;
  }
  return v;
}

// Byte-level text -> raw bytes. Characters outside the byte alphabet (and invalid bytes) are kept as they
// are.
std::string byte_level_decode(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    const size_t len = tok::utf8_valid_len(text, i);
    if (len == 0) {
      out += text[i++];
      continue;
    }
    const int b = tok::unicode_to_byte(tok::utf8_decode(text, i, len));
    if (b >= 0)
      out += char(b);
    else
      out.append(text.substr(i, len));
    i += len;
  }
  return out;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  for (size_t i = 0;;) {
    const size_t j = s.find(from, i);
    if (j == std::string_view::npos) {
      out.append(s.substr(i));
      return out;
    }
    out.append(s.substr(i, j - i));
    out.append(to);
    i = j + from.size();
  }
}

}  // namespace

struct Tokenizer::Impl {
  VocabData vocab;
  tok::TokenMap token_map;
  std::vector<std::string> bytes;    // token_to_bytes per id
  std::vector<int32_t> special_ids;  // control/unknown/user-defined, longest text first
  std::unordered_set<int32_t> eog_ids;
  std::unique_ptr<tok::BpeEncoder> bpe;  // model "gpt2"
  std::unique_ptr<tok::SpmEncoder> spm;  // model "llama"

  // A run of plain text [offset, offset+length) or a special token (id >= 0).
  struct Fragment {
    int32_t id;
    size_t offset, length;
  };
  std::vector<Fragment> split_special(std::string_view text, bool parse_special) const;
};

Tokenizer::Tokenizer(VocabData vocab) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.vocab = std::move(vocab);
  VocabData& v = m.vocab;
  validate_and_fill(v);
  const bool spm = v.model == "llama";

  m.token_map.reserve(v.tokens.size());
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    const std::string& t = v.tokens[i];
    if (t.empty()) continue;  // cannot be produced or matched
    const auto [it, inserted] = m.token_map.emplace(t, int32_t(i));
    HS_CHECK(inserted, "tokenizer: duplicate token '%s' (ids %d and %zu)", t.c_str(), int(it->second), i);
  }

  m.bytes.resize(v.tokens.size());
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    const std::string& t = v.tokens[i];
    const int32_t type = v.token_types[i];
    if (type == kTokenNormal || type == kTokenUndefined || type == kTokenByte) {
      const int byte = spm ? parse_byte_token(t) : -1;
      if (byte >= 0)
        m.bytes[i] = std::string(1, char(byte));
      else if (spm)
        m.bytes[i] = replace_all(t, kSpmSpace, " ");
      else
        m.bytes[i] = byte_level_decode(t);
    } else {
      m.bytes[i] = t;  // control, unknown, user-defined, unused: their text
    }
  }

  for (size_t i = 0; i < v.tokens.size(); ++i) {
    const int32_t type = v.token_types[i];
    if (!v.tokens[i].empty() && (type == kTokenControl || type == kTokenUnknown || type == kTokenUserDefined))
      m.special_ids.push_back(int32_t(i));
  }
  std::stable_sort(m.special_ids.begin(), m.special_ids.end(),
                   [&](int32_t a, int32_t b) { return v.tokens[a].size() > v.tokens[b].size(); });

  for (int32_t id : {v.eos_id, v.eot_id, v.eom_id})
    if (id >= 0) m.eog_ids.insert(id);
  for (const char* text : kEndOfGenerationTexts)
    if (const auto it = m.token_map.find(text); it != m.token_map.end()) m.eog_ids.insert(it->second);

  if (spm)
    m.spm = std::make_unique<tok::SpmEncoder>(v, m.token_map);
  else
    m.bpe = std::make_unique<tok::BpeEncoder>(v, m.token_map);
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

// Like llama.cpp's tokenizer_st_partition: each special text in turn (longest first) is cut out of the
// plain-text fragments that remain.
std::vector<Tokenizer::Impl::Fragment> Tokenizer::Impl::split_special(std::string_view text,
                                                                      bool parse_special) const {
  std::vector<Fragment> frags;
  if (text.empty()) return frags;
  frags.push_back({-1, 0, text.size()});
  std::vector<Fragment> next;
  for (const int32_t id : special_ids) {
    if (!parse_special && vocab.token_types[id] != kTokenUserDefined) continue;
    const std::string& needle = vocab.tokens[id];
    bool found = false;
    for (const Fragment& f : frags) {
      if (f.id < 0 && text.substr(f.offset, f.length).find(needle) != std::string_view::npos) {
        found = true;
        break;
      }
    }
    if (!found) continue;
    next.clear();
    for (const Fragment& f : frags) {
      if (f.id >= 0) {
        next.push_back(f);
        continue;
      }
      const std::string_view piece = text.substr(f.offset, f.length);
      size_t pos = 0;
      for (size_t hit; (hit = piece.find(needle, pos)) != std::string_view::npos; pos = hit + needle.size()) {
        if (hit > pos) next.push_back({-1, f.offset + pos, hit - pos});
        next.push_back({id, 0, 0});
      }
      if (pos < piece.size()) next.push_back({-1, f.offset + pos, piece.size() - pos});
    }
    frags.swap(next);
  }
  return frags;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  const Impl& m = *impl_;
  const VocabData& v = m.vocab;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special && v.add_bos) out.push_back(v.bos_id);
  bool prev_special = true;  // SPM: the space prefix goes before the first text and after every special token
  for (const Impl::Fragment& f : m.split_special(text, parse_special)) {
    if (f.id >= 0) {
      out.push_back(f.id);
      prev_special = true;
      continue;
    }
    const std::string_view piece = text.substr(f.offset, f.length);
    if (m.spm) {
      std::string s = v.add_space_prefix && prev_special ? " " : "";
      s.append(piece);
      m.spm->encode(replace_all(s, " ", kSpmSpace), out);
    } else {
      m.bpe->encode(piece, out);
    }
    prev_special = false;
  }
  if (add_special && v.add_eos) out.push_back(v.eos_id);
  return out;
}

int32_t Tokenizer::n_vocab() const {
  return int32_t(impl_->vocab.tokens.size());
}

const std::string& Tokenizer::token_text(int32_t id) const {
  HS_CHECK(id >= 0 && id < n_vocab(), "token id %d is outside the vocab (%d tokens)", int(id),
           int(n_vocab()));
  return impl_->vocab.tokens[id];
}

std::string Tokenizer::token_to_bytes(int32_t id) const {
  HS_CHECK(id >= 0 && id < n_vocab(), "token id %d is outside the vocab (%d tokens)", int(id),
           int(n_vocab()));
  return impl_->bytes[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (const int32_t id : ids) {
    HS_CHECK(id >= 0 && id < n_vocab(), "token id %d is outside the vocab (%d tokens)", int(id),
             int(n_vocab()));
    out += impl_->bytes[id];
  }
  return out;
}

int32_t Tokenizer::bos_id() const {
  return impl_->vocab.bos_id;
}
int32_t Tokenizer::eos_id() const {
  return impl_->vocab.eos_id;
}

bool Tokenizer::is_end_of_generation(int32_t id) const {
  return impl_->eog_ids.count(id) != 0;
}

const VocabData& Tokenizer::vocab() const {
  return impl_->vocab;
}

std::optional<int32_t> Tokenizer::find_token(std::string_view text) const {
  const auto it = impl_->token_map.find(text);
  if (it == impl_->token_map.end()) return std::nullopt;
  return it->second;
}

// ---- StreamDecoder ----

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

namespace {

// Moves the complete part of `pending` to the result; invalid subparts become U+FFFD. With `final`, an
// incomplete tail is invalid too.
std::string drain_utf8(std::string& pending, bool final) {
  std::string out;
  size_t i = 0;
  while (i < pending.size()) {
    if (const size_t n = tok::utf8_valid_len(pending, i); n > 0) {
      out.append(pending, i, n);
      i += n;
      continue;
    }
    const tok::Utf8Invalid bad = tok::utf8_invalid_prefix(pending, i);
    if (bad.truncated && !final) break;  // may still complete with the next token
    out += kReplacement;
    i += bad.len;
  }
  pending.erase(0, i);
  return out;
}

}  // namespace

std::string StreamDecoder::push(int32_t id) {
  pending_ += tokenizer_.token_to_bytes(id);
  return drain_utf8(pending_, false);
}

std::string StreamDecoder::flush() {
  return drain_utf8(pending_, true);
}

}  // namespace hs
