#include "model/tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "model/gguf.h"
#include "model/gguf_writer.h"
#include "model/tokenizer_impl.h"
#include "util/common.h"

namespace hs {
namespace {

using Ids = std::vector<int32_t>;

// ---------------------------------------------------------------------------------------------------------
// UTF-8

TEST(Utf8, ValidAndInvalid) {
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("plain ascii\t\n"));
  EXPECT_TRUE(is_valid_utf8("\xC3\xA9"));          // é
  EXPECT_TRUE(is_valid_utf8("\xE2\x82\xAC"));      // €
  EXPECT_TRUE(is_valid_utf8("\xF0\x9F\x99\x82"));  // 🙂
  EXPECT_TRUE(is_valid_utf8("\xF4\x8F\xBF\xBF"));  // U+10FFFF
  EXPECT_TRUE(is_valid_utf8("\xED\x9F\xBF"));      // U+D7FF, just below the surrogates
  EXPECT_TRUE(is_valid_utf8(std::string("a\0b", 3)));

  EXPECT_FALSE(is_valid_utf8("\x80"));              // lone continuation
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xC1\xBF"));          // overlong
  EXPECT_FALSE(is_valid_utf8("\xE0\x80\xAF"));      // overlong 3-byte
  EXPECT_FALSE(is_valid_utf8("\xF0\x80\x80\xAF"));  // overlong 4-byte
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));      // U+D800 surrogate
  EXPECT_FALSE(is_valid_utf8("\xED\xBF\xBF"));      // U+DFFF surrogate
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));  // U+110000
  EXPECT_FALSE(is_valid_utf8("\xF5\x80\x80\x80"));
  EXPECT_FALSE(is_valid_utf8("\xFF"));
  EXPECT_FALSE(is_valid_utf8("\xC3"));            // truncated
  EXPECT_FALSE(is_valid_utf8("\xE2\x82"));        // truncated
  EXPECT_FALSE(is_valid_utf8("\xF0\x9F\x99"));    // truncated
  EXPECT_FALSE(is_valid_utf8("abc\xE2\x82xyz"));  // truncated in the middle
  EXPECT_FALSE(is_valid_utf8("\xC3\x28"));        // bad continuation
}

TEST(ByteLevel, AlphabetIsABijection) {
  const auto& table = tok::byte_to_unicode();
  for (int b = 0; b < 256; ++b) {
    const std::string& s = table[b];
    const size_t len = tok::utf8_valid_len(s, 0);
    ASSERT_EQ(len, s.size()) << b;
    EXPECT_EQ(tok::unicode_to_byte(tok::utf8_decode(s, 0, len)), b);
  }
  EXPECT_EQ(table[' '], "\xC4\xA0");   // Ġ = U+0120
  EXPECT_EQ(table['\n'], "\xC4\x8A");  // Ċ = U+010A
  EXPECT_EQ(table['A'], "A");
  EXPECT_EQ(tok::unicode_to_byte(0x20), -1);
}

// ---------------------------------------------------------------------------------------------------------
// Hand-built byte-level BPE vocab: the 256 byte characters, then merge results, then control tokens.

VocabData tiny_bpe(std::vector<std::string> merges, std::string pre = "gpt-2") {
  VocabData v;
  v.model = "gpt2";
  v.pre = std::move(pre);
  for (const auto& s : tok::byte_to_unicode()) v.tokens.push_back(s);
  for (const auto& m : merges) {
    std::string joined = m;
    joined.erase(joined.find(' '), 1);
    if (std::find(v.tokens.begin(), v.tokens.end(), joined) == v.tokens.end()) v.tokens.push_back(joined);
  }
  v.merges = std::move(merges);
  v.token_types.assign(v.tokens.size(), kTokenNormal);
  for (const char* special : {"<|end|>", "<|start|>", "<|start|>x"}) {
    v.tokens.push_back(special);
    v.token_types.push_back(kTokenControl);
  }
  v.eos_id = int32_t(v.tokens.size()) - 3;
  return v;
}

std::vector<std::string> texts(const Tokenizer& t, const Ids& ids) {
  std::vector<std::string> out;
  for (int32_t id : ids) out.push_back(t.token_text(id));
  return out;
}

TEST(BpeTokenizer, MergesApplyByRankNotPosition) {
  // "b c" has the better rank, so "abc" -> "a" "bc" even though "a b" is leftmost.
  Tokenizer t(tiny_bpe({"b c", "a b"}));
  EXPECT_EQ(texts(t, t.encode("abc", false, false)), (std::vector<std::string>{"a", "bc"}));
  Tokenizer u(tiny_bpe({"a b", "b c"}));
  EXPECT_EQ(texts(u, u.encode("abc", false, false)), (std::vector<std::string>{"ab", "c"}));
}

TEST(BpeTokenizer, EqualRanksMergeLeftmostFirstAndChain) {
  Tokenizer t(tiny_bpe({"a a", "aa aa", "aa a"}));
  EXPECT_EQ(texts(t, t.encode("aaa", false, false)), (std::vector<std::string>{"aaa"}));
  EXPECT_EQ(texts(t, t.encode("aaaa", false, false)), (std::vector<std::string>{"aaaa"}));
  EXPECT_EQ(texts(t, t.encode("aaaaa", false, false)), (std::vector<std::string>{"aaaa", "a"}));
  // Spaces are byte-level 'Ġ' and belong to the following word (GPT-2 regex).
  Tokenizer s(tiny_bpe({"\xC4\xA0 a",
                        "\xC4\xA0"
                        "a a"}));
  EXPECT_EQ(texts(s, s.encode("a aa", false, false)), (std::vector<std::string>{"a",
                                                                                "\xC4\xA0"
                                                                                "aa"}));
}

TEST(BpeTokenizer, SpecialTokensLongestFirstAndOnlyWhenParsed) {
  Tokenizer t(tiny_bpe({}));
  const int32_t end = *t.find_token("<|end|>"), start = *t.find_token("<|start|>");
  const int32_t startx = *t.find_token("<|start|>x");
  EXPECT_EQ(t.encode("<|end|>", false, true), Ids{end});
  EXPECT_EQ(t.encode("<|start|>x<|start|>y", false, true), (Ids{startx, start, *t.find_token("y")}));
  const Ids plain = t.encode("<|end|>", false, false);
  EXPECT_EQ(plain.size(), 7u);  // one byte token each
  EXPECT_EQ(t.decode(plain), "<|end|>");
  EXPECT_TRUE(t.is_end_of_generation(end));
  EXPECT_EQ(t.token_to_bytes(end), "<|end|>");
}

TEST(BpeTokenizer, UserDefinedTokensAreAlwaysParsed) {
  VocabData v = tiny_bpe({});
  v.tokens.push_back("<tool>");
  v.token_types.push_back(kTokenUserDefined);
  Tokenizer t(v);
  const int32_t tool = *t.find_token("<tool>");
  EXPECT_EQ(t.encode("a<tool>", false, false), (Ids{*t.find_token("a"), tool}));
  EXPECT_EQ(t.encode("a<tool>", false, true), (Ids{*t.find_token("a"), tool}));
}

TEST(BpeTokenizer, UnknownPreTokenizerFallsBackToGpt2) {
  Tokenizer t(tiny_bpe({}, "no-such-pre"));
  EXPECT_EQ(t.decode(t.encode("it's 42!", false, false)), "it's 42!");
}

TEST(BpeTokenizer, AddSpecial) {
  VocabData v = tiny_bpe({});
  v.bos_id = int32_t(v.tokens.size()) - 2;  // "<|start|>"
  v.add_bos = true;
  v.add_eos = true;
  Tokenizer t(v);
  EXPECT_EQ(t.encode("", true, false), (Ids{v.bos_id, v.eos_id}));
  EXPECT_EQ(t.encode("", false, false), Ids{});
  const Ids ids = t.encode("a", true, false);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids.front(), v.bos_id);
  EXPECT_EQ(ids.back(), v.eos_id);
}

// ---------------------------------------------------------------------------------------------------------
// Hand-built SentencePiece vocab

const char* const kSp = "\xE2\x96\x81";  // ▁

VocabData tiny_spm(bool with_bytes) {
  VocabData v;
  v.model = "llama";
  auto add = [&](std::string text, float score, int32_t type) {
    v.tokens.push_back(std::move(text));
    v.scores.push_back(score);
    v.token_types.push_back(type);
  };
  add("<unk>", 0, kTokenUnknown);
  add("<s>", 0, kTokenControl);
  add("</s>", 0, kTokenControl);
  if (with_bytes) {
    char name[8];
    for (int b = 0; b < 256; ++b) {
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      add(name, 0, kTokenByte);
    }
  }
  for (const char* c : {"h", "e", "l", "o", "w", "r", "d"}) add(c, -10, kTokenNormal);
  add(kSp, -5, kTokenNormal);
  add("ll", -1, kTokenNormal);  // best pair
  add("he", -2, kTokenNormal);
  add("llo", -3, kTokenNormal);
  add("hello", -4, kTokenNormal);
  add(std::string(kSp) + "hello", -4.5, kTokenNormal);
  add("el", -1.5, kTokenNormal);  // would steal 'e' from "he" if it ranked above "ll"+"he"... it does not
  v.bos_id = 1;
  v.eos_id = 2;
  v.unk_id = 0;
  v.add_bos = true;
  v.add_space_prefix = true;
  return v;
}

TEST(SpmTokenizer, MergesByScoreWithSpacePrefix) {
  Tokenizer t(tiny_spm(true));
  // "▁hello": ll(-1) first, then el(-1.5) would need e+l but l is gone; he(-2); llo(-3); hello; ▁hello.
  EXPECT_EQ(texts(t, t.encode("hello", false, false)),
            (std::vector<std::string>{std::string(kSp) + "hello"}));
  const Ids with_bos = t.encode("hello", true, false);
  ASSERT_EQ(with_bos.size(), 2u);
  EXPECT_EQ(with_bos[0], 1);
  // "hell": ll, then he -> "▁" "he" "ll".
  EXPECT_EQ(texts(t, t.encode("hell", false, false)), (std::vector<std::string>{kSp, "he", "ll"}));
  // "elo": el(-1.5) beats nothing else -> "▁" "el" "o".
  EXPECT_EQ(texts(t, t.encode("elo", false, false)), (std::vector<std::string>{kSp, "el", "o"}));
  EXPECT_EQ(t.decode(t.encode("hello world", false, false)), " hello world");
}

TEST(SpmTokenizer, ByteFallbackAndUnknown) {
  Tokenizer t(tiny_spm(true));
  const Ids ids = t.encode("h\xC3\xA9", false, false);  // "é" is not a piece -> <0xC3> <0xA9>
  EXPECT_EQ(texts(t, ids), (std::vector<std::string>{kSp, "h", "<0xC3>", "<0xA9>"}));
  EXPECT_EQ(t.decode(ids), " h\xC3\xA9");
  // Invalid UTF-8 is one byte per character and falls back to its byte token.
  EXPECT_EQ(texts(t, t.encode("\xFF", false, false)), (std::vector<std::string>{kSp, "<0xFF>"}));

  Tokenizer no_bytes(tiny_spm(false));
  EXPECT_EQ(no_bytes.encode("h\xC3\xA9", false, false),
            (Ids{*no_bytes.find_token(kSp), *no_bytes.find_token("h"), 0}));
}

TEST(SpmTokenizer, SpacePrefixAfterSpecialTokensAndOption) {
  Tokenizer t(tiny_spm(true));
  // Text after a parsed special token gets the prefix space again (llama.cpp's is_prev_special).
  EXPECT_EQ(texts(t, t.encode("he</s>he", false, true)),
            (std::vector<std::string>{kSp, "he", "</s>", kSp, "he"}));
  VocabData v = tiny_spm(true);
  v.add_space_prefix = false;
  Tokenizer u(v);
  EXPECT_EQ(texts(u, u.encode("he he", false, false)), (std::vector<std::string>{"he", kSp, "he"}));
  EXPECT_EQ(u.decode(u.encode("  he  ", false, false)), "  he  ");
  EXPECT_TRUE(t.is_end_of_generation(2));  // eos, and "</s>" by text
  EXPECT_FALSE(t.is_end_of_generation(1));
  EXPECT_EQ(t.token_to_bytes(*t.find_token("<0x0A>")), "\n");
  EXPECT_EQ(t.token_to_bytes(*t.find_token(std::string(kSp) + "hello")), " hello");
  EXPECT_EQ(t.token_to_bytes(1), "<s>");
}

// ---------------------------------------------------------------------------------------------------------
// Streaming decode

TEST(StreamDecoder, HoldsBackSplitCharacters) {
  Tokenizer t(tiny_spm(true));
  const auto byte = [&](int b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    return *t.find_token(name);
  };
  StreamDecoder d(t);
  EXPECT_EQ(d.push(*t.find_token("he")), "he");
  EXPECT_EQ(d.push(byte(0xF0)), "");  // 🙂 = F0 9F 99 82 over four tokens
  EXPECT_EQ(d.push(byte(0x9F)), "");
  EXPECT_EQ(d.push(byte(0x99)), "");
  EXPECT_EQ(d.push(byte(0x82)), "\xF0\x9F\x99\x82");
  EXPECT_EQ(d.push(byte(0xC3)), "");
  EXPECT_EQ(d.push(*t.find_token("o")), "\xEF\xBF\xBDo");  // C3 can no longer complete
  EXPECT_EQ(d.push(byte(0xFF)), "\xEF\xBF\xBD");
  EXPECT_EQ(d.push(byte(0xED)), "");
  EXPECT_EQ(d.push(byte(0xA0)), "\xEF\xBF\xBD\xEF\xBF\xBD");  // ED A0 would be a surrogate
  EXPECT_EQ(d.push(byte(0xE2)), "");
  EXPECT_EQ(d.push(byte(0x82)), "");
  EXPECT_EQ(d.flush(), "\xEF\xBF\xBD");  // an unfinished tail is one replacement
  EXPECT_EQ(d.flush(), "");
}

// ---------------------------------------------------------------------------------------------------------
// Validation

TEST(VocabValidation, RejectsBadData) {
  const auto throws = [](VocabData v) { EXPECT_THROW(Tokenizer{std::move(v)}, Error); };
  VocabData ok = tiny_spm(true);
  EXPECT_NO_THROW(Tokenizer{ok});
  VocabData v = ok;
  v.model = "bert";
  throws(v);
  v = ok;
  v.scores.pop_back();
  throws(v);
  v = ok;
  v.token_types.push_back(1);
  throws(v);
  v = ok;
  v.eos_id = int32_t(v.tokens.size());
  throws(v);
  v = ok;
  v.bos_id = -1;  // add_bos without BOS
  throws(v);
  v = ok;
  v.tokens[5] = v.tokens[6];  // duplicate
  throws(v);
  v = ok;
  v.tokens.clear();
  v.scores.clear();
  v.token_types.clear();
  throws(v);
  EXPECT_THROW(Tokenizer(ok).token_text(-1), Error);
  EXPECT_THROW(Tokenizer(ok).decode({100000}), Error);
}

// ---------------------------------------------------------------------------------------------------------
// vocab_from_gguf on files built in memory

std::unique_ptr<gguf::File> parse(const gguf::Writer& w) {
  return gguf::File::parse(w.to_bytes(), "test.gguf");
}

TEST(VocabFromGguf, LlamaDefaults) {
  gguf::Writer w;
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>",
                                               "\xE2\x96\x81"
                                               "a"});
  w.add_f32_array("tokenizer.ggml.scores", {0, 0, 0, -1});
  w.add_i32_array("tokenizer.ggml.token_type", {2, 3, 3, 1});
  const VocabData v = vocab_from_gguf(*parse(w));
  EXPECT_EQ(v.bos_id, 1);
  EXPECT_EQ(v.eos_id, 2);
  EXPECT_EQ(v.unk_id, 0);
  EXPECT_TRUE(v.add_bos);
  EXPECT_FALSE(v.add_eos);
  EXPECT_TRUE(v.add_space_prefix);
  Tokenizer t(v);
  EXPECT_EQ(t.encode("a", true, false), (Ids{1, 3}));
}

TEST(VocabFromGguf, IntegerScoresAndKeyOverrides) {
  gguf::Writer w;
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "a"});
  w.add_i32_array("tokenizer.ggml.scores", {0, 0, 0, -7});
  w.add_bool("tokenizer.ggml.add_bos_token", false);
  w.add_bool("tokenizer.ggml.add_eos_token", true);
  w.add_bool("tokenizer.ggml.add_space_prefix", false);
  const VocabData v = vocab_from_gguf(*parse(w));
  EXPECT_EQ(v.scores, (std::vector<float>{0, 0, 0, -7}));
  EXPECT_EQ(v.token_types, (std::vector<int32_t>{1, 1, 1, 1}));
  Tokenizer t(v);
  EXPECT_EQ(t.encode("a", true, false), (Ids{3, 2}));
}

TEST(VocabFromGguf, Gpt2DefaultsAndKeys) {
  gguf::Writer w;
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", "llama-bpe");
  w.add_string_array("tokenizer.ggml.tokens", {"a", "b", "ab", "<|begin_of_text|>", "<|eot_id|>"});
  w.add_i32_array("tokenizer.ggml.token_type", {1, 1, 1, 3, 3});
  w.add_string_array("tokenizer.ggml.merges", {"a b"});
  w.add_u32("tokenizer.ggml.bos_token_id", 3);
  w.add_u32("tokenizer.ggml.eos_token_id", 4);
  w.add_string("tokenizer.chat_template", "{{ '<|start_header_id|>' }}");
  const VocabData v = vocab_from_gguf(*parse(w));
  EXPECT_TRUE(v.add_bos);  // llama-bpe adds BOS by default
  EXPECT_FALSE(v.add_space_prefix);
  EXPECT_EQ(v.eot_id, 4);  // found by text
  EXPECT_EQ(v.unk_id, -1);
  EXPECT_EQ(v.scores.size(), 5u);
  EXPECT_EQ(v.chat_template, "{{ '<|start_header_id|>' }}");
  Tokenizer t(v);
  EXPECT_EQ(t.encode("ab", true, false), (Ids{3, 2}));  // ignore_merges / merge: either way "ab"
}

TEST(VocabFromGguf, RejectsBadFiles) {
  const auto base = [](gguf::Writer& w, const std::string& model) {
    w.add_string("tokenizer.ggml.model", model);
    w.add_string_array("tokenizer.ggml.tokens", {"a", "b", "ab"});
  };
  {
    gguf::Writer w;  // no tokenizer at all
    w.add_string("general.architecture", "llama");
    EXPECT_THROW(vocab_from_gguf(*parse(w)), Error);
  }
  {
    gguf::Writer w;
    base(w, "gpt2");  // gpt2 without merges
    EXPECT_THROW(vocab_from_gguf(*parse(w)), Error);
  }
  {
    gguf::Writer w;
    base(w, "bert");
    EXPECT_THROW(vocab_from_gguf(*parse(w)), Error);
  }
  {
    gguf::Writer w;
    base(w, "llama");
    w.add_f32_array("tokenizer.ggml.scores", {0, 0});
    EXPECT_THROW(vocab_from_gguf(*parse(w)), Error);
  }
  {
    gguf::Writer w;
    base(w, "llama");
    w.add_u32("tokenizer.ggml.eos_token_id", 3);
    EXPECT_THROW(vocab_from_gguf(*parse(w)), Error);
  }
  {
    gguf::Writer w;
    base(w, "llama");
    w.add_i32_array("tokenizer.ggml.token_type", {1, 1, 9});
    EXPECT_THROW(vocab_from_gguf(*parse(w)), Error);
  }
}

// ---------------------------------------------------------------------------------------------------------
// SmolLM2 (real vocab; skipped without the model file)

std::string model_path() {
  if (const char* env = std::getenv("HIPSERVE_MODEL")) return env;
  return HIPSERVE_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

bool file_exists(const std::string& path) {
  return std::ifstream(path).good();
}

class SmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!file_exists(model_path())) return;
    tokenizer_ = new Tokenizer(vocab_from_gguf(*gguf::File::open(model_path())));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  void SetUp() override {
    if (!tokenizer_) GTEST_SKIP() << "model not found at " << model_path() << " (set HIPSERVE_MODEL)";
  }
  const Tokenizer& tok() const { return *tokenizer_; }
  static Tokenizer* tokenizer_;
};
Tokenizer* SmolLM2::tokenizer_ = nullptr;

TEST_F(SmolLM2, Metadata) {
  const VocabData& v = tok().vocab();
  EXPECT_EQ(v.model, "gpt2");
  EXPECT_EQ(v.pre, "smollm");
  EXPECT_EQ(tok().n_vocab(), 49152);
  EXPECT_EQ(tok().bos_id(), 1);
  EXPECT_EQ(tok().eos_id(), 2);
  EXPECT_FALSE(v.add_bos);
  EXPECT_EQ(tok().token_text(2), "<|im_end|>");
  EXPECT_TRUE(tok().is_end_of_generation(2));  // <|im_end|>
  EXPECT_TRUE(tok().is_end_of_generation(0));  // <|endoftext|>
  EXPECT_FALSE(tok().is_end_of_generation(1));
  EXPECT_FALSE(tok().is_end_of_generation(905));
}

TEST_F(SmolLM2, KnownIds) {
  // Reference ids from Hugging Face `tokenizers` built from the same GGUF vocab and merges.
  EXPECT_EQ(tok().encode("Hello world", false, false), (Ids{19556, 905}));
  EXPECT_EQ(tok().encode("Hello world", true, true), (Ids{19556, 905}));  // add_bos_token is false
  EXPECT_EQ(tok().encode(" Hello  world ", false, false), (Ids{38699, 216, 905, 216}));
  EXPECT_EQ(tok().encode("1234567890", false, false), (Ids{33, 34, 35, 36, 37, 38, 39, 40, 41, 32}));
  EXPECT_EQ(tok().encode("I'm don't  \t\n\nx", false, false),
            (Ids{57, 5248, 1326, 982, 256, 197, 198, 198, 104}));
  EXPECT_EQ(
      tok().encode("\xE3\x81\x93\xE3\x82\x93\xE3\x81\xAB\xE3\x81\xA1\xE3\x81\xAF\xE4\xB8\x96\xE7\x95\x8C "
                   "\xF0\x9F\x99\x82\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",
                   false, false),
      (Ids{7365, 237, 10391, 237,   41152, 7365, 111, 7365,  124, 7906, 240,
           178,  239, 230,   47526, 10813, 235,  231, 10813, 233, 138}));
}

TEST_F(SmolLM2, SpecialTokens) {
  EXPECT_EQ(tok().encode("<|im_start|>", false, true), Ids{1});
  EXPECT_EQ(tok().encode("<|im_start|>user\nHi<|im_end|>", false, true), (Ids{1, 4093, 198, 26843, 2}));
  const Ids plain = tok().encode("<|im_start|>", false, false);
  EXPECT_GT(plain.size(), 1u);
  for (int32_t id : plain) EXPECT_GT(id, 16);
  EXPECT_EQ(tok().decode(plain), "<|im_start|>");
  EXPECT_EQ(tok().token_to_bytes(1), "<|im_start|>");
  EXPECT_EQ(tok().find_token("<|im_end|>"), 2);
  EXPECT_EQ(tok().find_token("no such token"), std::nullopt);
}

TEST_F(SmolLM2, RoundTrips) {
  const std::vector<std::string> cases = {
      "",
      " ",
      "   ",
      "\t",
      "\n",
      " \n \n\n\t \t",
      "  leading and trailing  ",
      "1234567890",
      "3.14159 and 1,000,000 and 2024-01-01",
      "I'm you're we've they'll she'd it's DON'T",
      "hello\r\nworld\r\n",
      "\xF0\x9F\x98\x80\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",  // emoji,
                                                                                                   // ZWJ
      "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\xE3\x80\x82",  // 你好，世界。
      "e\xCC\x81 a\xCC\x8A\xCC\x81 \xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87",
      "<|im_start|>system\n<|im_end|>",
      std::string("nul\0byte", 8),
      "\x80\xBF invalid \xC3 bytes \xED\xA0\x80 here \xF0\x9F",  // invalid UTF-8 whose bytes have tokens
      std::string(5000, 'a'),
      std::string(3000, ' ') + "x" + std::string(3000, '\n'),
      "def f(x):\n    return x  # comment\n\n\n",
  };
  for (const std::string& s : cases) {
    for (bool parse : {false, true}) {
      const Ids ids = tok().encode(s, false, parse);
      EXPECT_EQ(tok().decode(ids), s) << "parse_special=" << parse << " input: " << s.substr(0, 60);
      for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok().n_vocab());
    }
  }
}

TEST_F(SmolLM2, BytesWithoutTokensAreDropped) {
  // SmolLM2's vocab lacks the byte-level characters of 21 bytes (0x04 0x06 0x13 0x14 0x16 0x1D 0xC0 0xC1 0xF1
  // 0xF2 0xF5..0xFF); like llama.cpp and Hugging Face we drop them rather than emit <|endoftext|> (unk id 0).
  EXPECT_EQ(tok().encode("\xFF", false, false), Ids{});
  EXPECT_EQ(tok().decode(tok().encode("a\x04"
                                      "b\xFE\xFF c",
                                      false, false)),
            "ab c");
}

TEST_F(SmolLM2, ConcurrentEncodeIsConsistent) {
  const std::string text = "The quick brown fox jumps over the lazy dog 12345. ";
  const Ids expected = tok().encode(text, false, false);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      int good = 0;
      for (int i = 0; i < 50; ++i)
        good += tok().encode(text + std::to_string(i % 3), false, false).size() > 0;
      ok[t] = good == 50 && tok().encode(text, false, false) == expected;
    });
  for (auto& th : threads) th.join();
  for (int v : ok) EXPECT_EQ(v, 1);
}

TEST_F(SmolLM2, StreamDecodeEqualsDecode) {
  const std::string text = "caf\xC3\xA9 \xF0\x9F\x99\x82 \xE4\xB8\x96\xE7\x95\x8C done";
  const Ids ids = tok().encode(text, false, false);
  StreamDecoder d(tok());
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = d.push(id);
    EXPECT_TRUE(is_valid_utf8(piece));
    streamed += piece;
  }
  streamed += d.flush();
  EXPECT_EQ(streamed, text);
}

// Reference ids produced by Hugging Face `tokenizers` (tests/fixtures/reference_tokens.json, written by
// tools/reference_logits.py): every case must match exactly.
TEST_F(SmolLM2, MatchesReferenceFixture) {
  const std::string path = HIPSERVE_SOURCE_DIR "/tests/fixtures/reference_tokens.json";
  std::ifstream in(path);
  if (!in) GTEST_SKIP() << "no fixture at " << path;
  const nlohmann::json doc = nlohmann::json::parse(in);
  int n = 0;
  for (const auto& c : doc.at("cases")) {
    std::string text;
    const std::string hex = c.value("utf8_hex", "");
    for (size_t i = 0; i + 1 < hex.size(); i += 2) text += char(std::stoi(hex.substr(i, 2), nullptr, 16));
    const bool parse = c.value("parse_special", false);
    const Ids expected = c.at("ids").get<Ids>();
    EXPECT_EQ(tok().encode(text, false, parse), expected) << c.value("name", "?");
    ++n;
  }
  EXPECT_GT(n, 0);
}

TEST_F(SmolLM2, BookSpeedAndRoundTrip) {
  // shared/ sits beside the checkout (/work/shared for developers, a copy beside the clone in CI).
  const std::string path = file_exists("/work/shared/data/texts/frankenstein.txt")
                               ? "/work/shared/data/texts/frankenstein.txt"
                               : HIPSERVE_SOURCE_DIR "/../shared/data/texts/frankenstein.txt";
  std::ifstream in(path, std::ios::binary);
  if (!in) GTEST_SKIP() << "no text at " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const auto t0 = std::chrono::steady_clock::now();
  const Ids ids = tok().encode(text, false, false);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ tokenizer ] %zu bytes -> %zu tokens in %.3f s (%.1f MB/s)\n", text.size(), ids.size(), s,
              text.size() / s / 1e6);
  EXPECT_EQ(tok().decode(ids), text);
}

}  // namespace
}  // namespace hs
