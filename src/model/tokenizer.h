// Tokenizers built from GGUF tokenizer metadata (FORMATS.md section 4.2), following llama.cpp's llama-vocab:
//   - "gpt2": byte-level BPE. Text is split by the pre-tokenizer regexes chosen by tokenizer.ggml.pre, every
//     byte of a piece is mapped through the GPT-2 byte->unicode table, and merges apply by rank.
//   - "llama": SentencePiece BPE as llama.cpp runs it (spaces -> U+2581, optional leading space, greedy
//   merges
//     of adjacent pieces by score, <0xNN> byte fallback).
//
// Special tokens: control (type 3) and unknown (type 2) token texts are recognized in the input only when
// parse_special is true. User-defined tokens (type 4) are always recognized, as llama.cpp and Hugging Face
// `tokenizers` do with added tokens. Longer texts are matched first.
//
// Invalid UTF-8 input never throws. BPE: the pre-tokenizer treats invalid bytes as separators and each is
// encoded through the byte table, so decode(encode(s)) == s whenever every byte of s has its byte-level
// character in the vocab. (llama.cpp instead replaces invalid bytes with U+FFFD.) A byte whose character is
// not a token is dropped, as llama.cpp and Hugging Face do: SmolLM2 lacks 21 of them (0x04 0x06 0x13 0x14
// 0x16 0x1D 0xC0 0xC1 0xF1 0xF2 0xF5..0xFF), so e.g. "\x04" encodes to nothing. SPM: an invalid byte is a
// one-byte "character"; it becomes its <0xNN> token, or unk when the vocab has no byte tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hs {

// GGUF tokenizer.ggml.token_type values.
enum TokenType : int32_t {
  kTokenUndefined = 0,
  kTokenNormal = 1,
  kTokenUnknown = 2,
  kTokenControl = 3,
  kTokenUserDefined = 4,
  kTokenUnused = 5,
  kTokenByte = 6,
};

struct VocabData {
  std::string model;  // tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
  std::string pre;    // tokenizer.ggml.pre (may be empty)
  std::vector<std::string> tokens;
  std::vector<float> scores;         // empty or one per token (SPM merge priority; higher merges first)
  std::vector<int32_t> token_types;  // empty (all normal) or one TokenType per token
  std::vector<std::string> merges;   // "a b", rank = index (gpt2 only)
  int32_t bos_id = -1, eos_id = -1, eot_id = -1, eom_id = -1, unk_id = -1, pad_id = -1;
  // Defaults when the GGUF keys are absent (llama.cpp's rules): llama SPM adds BOS and a space prefix; gpt2
  // adds BOS only for the llama3 pre-tokenizers (llama3, llama-bpe, ...).
  bool add_bos = false, add_eos = false, add_space_prefix = false;
  std::string chat_template;  // tokenizer.chat_template, may be empty
};

namespace gguf {
class File;
}

// Reads tokenizer.* keys; throws hs::Error on an unsupported model, arrays of different lengths, special
// token ids out of range, add_bos/add_eos without the id, a gpt2 vocab without merges. Scores and token
// types are filled to one per token (0 and normal) when absent. eot/eom ids, when their keys are absent,
// are found by text ("<|eot_id|>", "<|im_end|>", ... / "<|eom_id|>") like llama.cpp.
VocabData vocab_from_gguf(const gguf::File& f);

class Tokenizer {
 public:
  explicit Tokenizer(VocabData vocab);  // validates like vocab_from_gguf; throws hs::Error
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  int32_t n_vocab() const;
  // add_special: add BOS/EOS per the vocab's add_bos/add_eos. parse_special: recognize control token texts
  // (e.g. "<|im_start|>") in the text; when false they are tokenized as plain text. Thread-safe.
  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;
  const std::string& token_text(int32_t id) const;  // the vocab string as stored; throws if id out of range
  // The raw bytes a token stands for: byte-level decode (gpt2), U+2581 -> space and <0xNN> -> byte (SPM).
  // Control, unknown, user-defined and unused tokens give their text unchanged.
  std::string token_to_bytes(int32_t id) const;
  // Concatenated token_to_bytes (may be invalid UTF-8 when cut mid-character); throws on an id out of range.
  std::string decode(const std::vector<int32_t>& ids) const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  // eos, eot, eom, and end-of-turn tokens found by text as llama.cpp does: <|im_end|>, <|eot_id|>,
  // <|endoftext|>, <|end_of_text|>, </s>, <|end|>, <end_of_turn>, <|eom_id|>, <EOT>, <end_of_utterance>.
  bool is_end_of_generation(int32_t id) const;
  const VocabData& vocab() const;
  std::optional<int32_t> find_token(std::string_view text) const;  // exact vocab string -> id

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Streaming detokenizer: push() returns only complete UTF-8 and holds back an incomplete trailing sequence
// (at most 3 bytes); bytes that can no longer form a valid character become U+FFFD (one per maximal invalid
// subpart, as Unicode recommends). flush() ends the stream: a held-back tail becomes U+FFFD.
// Keeps a reference to the tokenizer, which must outlive it and stay where it is (not be moved from).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer);
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;  // bytes not yet returned: an incomplete UTF-8 sequence
};

// Strict UTF-8: no overlong forms, no surrogates (U+D800..DFFF), nothing above U+10FFFF, no truncation.
bool is_valid_utf8(std::string_view s);

}  // namespace hs
