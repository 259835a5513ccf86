// GGUF tokenizer.* metadata -> VocabData (FORMATS.md section 4.2), with llama.cpp's defaults.
#include <string>
#include <vector>

#include "model/gguf.h"
#include "model/tokenizer.h"
#include "util/common.h"

namespace hs {

namespace {

// tokenizer.ggml.pre values for which llama.cpp adds BOS by default in a gpt2 vocab.
bool pre_adds_bos(const std::string& pre) {
  for (const char* p : {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                        "lfm2", "tekken", "chameleon"})
    if (pre == p) return true;
  return false;
}

// Special-token id from the key, `def` when absent; an id outside the vocab is an error.
int32_t special_id(const gguf::File& f, const char* key, int32_t def, size_t n_tokens) {
  const int64_t id = f.get_int(key, def);
  HS_CHECK(id >= -1 && id < int64_t(n_tokens), "%s: %s = %lld is outside the vocab (%zu tokens)",
           f.path().c_str(), key, static_cast<long long>(id), n_tokens);
  return int32_t(id);
}

// The first text of the list that is a token (lowest id on duplicates), or -1.
int32_t find_by_text(const std::vector<std::string>& tokens, std::initializer_list<const char*> texts) {
  for (const char* t : texts)
    for (size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i] == t) return int32_t(i);
  return -1;
}

}  // namespace

VocabData vocab_from_gguf(const gguf::File& f) {
  VocabData v;
  const char* path = f.path().c_str();
  HS_CHECK(f.find("tokenizer.ggml.model"), "%s: missing tokenizer.ggml.model (the file has no tokenizer)",
           path);
  v.model = f.get_string("tokenizer.ggml.model", "");
  v.pre = f.get_string("tokenizer.ggml.pre", "");
  HS_CHECK(v.model == "gpt2" || v.model == "llama",
           "%s: unsupported tokenizer.ggml.model '%s' (supported: gpt2, llama)", path, v.model.c_str());
  const bool spm = v.model == "llama";

  v.tokens = f.get_string_array("tokenizer.ggml.tokens");
  const size_t n = v.tokens.size();
  HS_CHECK(n > 0, "%s: tokenizer.ggml.tokens is missing or empty", path);
  // Scores are f32; llama.cpp also accepts integer arrays.
  const gguf::Value* scores = f.find("tokenizer.ggml.scores");
  if (scores && scores->type() == gguf::ValueType::ARRAY && scores->array_type() != gguf::ValueType::F32 &&
      scores->array_type() != gguf::ValueType::F64) {
    for (int32_t s : f.get_i32_array("tokenizer.ggml.scores")) v.scores.push_back(float(s));
  } else {
    v.scores = f.get_f32_array("tokenizer.ggml.scores");
  }
  v.token_types = f.get_i32_array("tokenizer.ggml.token_type");
  HS_CHECK(v.scores.empty() || v.scores.size() == n,
           "%s: tokenizer.ggml.scores has %zu entries for %zu tokens", path, v.scores.size(), n);
  HS_CHECK(v.token_types.empty() || v.token_types.size() == n,
           "%s: tokenizer.ggml.token_type has %zu entries for %zu tokens", path, v.token_types.size(), n);
  if (v.scores.empty()) v.scores.assign(n, 0.0f);
  if (v.token_types.empty()) v.token_types.assign(n, kTokenNormal);
  for (size_t i = 0; i < n; ++i)
    HS_CHECK(v.token_types[i] >= kTokenUndefined && v.token_types[i] <= kTokenByte,
             "%s: tokenizer.ggml.token_type[%zu] = %d is not a token type (0..6)", path, i,
             int(v.token_types[i]));

  if (!spm) {
    v.merges = f.get_string_array("tokenizer.ggml.merges");
    HS_CHECK(!v.merges.empty(), "%s: a gpt2 tokenizer needs tokenizer.ggml.merges", path);
  }

  // llama.cpp's defaults: SPM vocabs put <unk>, <s>, </s> at 0, 1, 2; for gpt2 we have none (llama.cpp's
  // legacy default of 11 is meaningless for modern vocabs).
  const auto in_range = [&](int32_t id) { return id < int32_t(n) ? id : -1; };
  v.bos_id = special_id(f, "tokenizer.ggml.bos_token_id", spm ? in_range(1) : -1, n);
  v.eos_id = special_id(f, "tokenizer.ggml.eos_token_id", spm ? in_range(2) : -1, n);
  v.unk_id = special_id(f, "tokenizer.ggml.unknown_token_id", spm ? in_range(0) : -1, n);
  v.pad_id = special_id(f, "tokenizer.ggml.padding_token_id", -1, n);
  v.eot_id = special_id(f, "tokenizer.ggml.eot_token_id", -1, n);
  v.eom_id = special_id(f, "tokenizer.ggml.eom_token_id", -1, n);
  if (!f.find("tokenizer.ggml.eot_token_id"))
    v.eot_id =
        find_by_text(v.tokens, {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                "<|end_of_text|>", "<EOT>", "_<EOT>", "<end_of_utterance>"});
  if (!f.find("tokenizer.ggml.eom_token_id")) v.eom_id = find_by_text(v.tokens, {"<|eom_id|>"});

  v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", spm || pre_adds_bos(v.pre));
  v.add_eos = f.get_bool("tokenizer.ggml.add_eos_token", false);
  v.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix", spm);
  HS_CHECK(!v.add_bos || v.bos_id >= 0, "%s: tokenizer.ggml.add_bos_token is true but there is no BOS id",
           path);
  HS_CHECK(!v.add_eos || v.eos_id >= 0, "%s: tokenizer.ggml.add_eos_token is true but there is no EOS id",
           path);

  v.chat_template = f.get_string("tokenizer.chat_template", "");
  return v;
}

}  // namespace hs
