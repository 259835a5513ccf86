#include "model/chat_template.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "model/gguf.h"
#include "model/tokenizer.h"
#include "util/common.h"

namespace hs {
namespace {

// Expected strings below were rendered from the Jinja templates with Python's jinja2 (as transformers'
// apply_chat_template does).

// SmolLM2-135M-Instruct's tokenizer.chat_template.
const char* const kSmolTemplate =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' "
    "}}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

// Meta-Llama-3-8B-Instruct.
const char* const kLlama3Template =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}";

// Llama-2-7b-chat.
const char* const kLlama2Template =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
    "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == "
    "0) "
    "%}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif "
    "%}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif "
    "message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

const char* const kSmolSystem = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

const std::vector<ChatMessage> kUserOnly = {{"user", "Hi there"}};
const std::vector<ChatMessage> kSysUser = {{"system", "Be brief."}, {"user", "  What is 2+2?\n"}};
const std::vector<ChatMessage> kMulti = {{"user", "Hello"}, {"assistant", " Hi! \n"}, {"user", "Bye"}};
const std::vector<ChatMessage> kSysMulti = {
    {"system", "S"}, {"user", "A"}, {"assistant", "B"}, {"user", "C"}};

VocabData vocab_with(const char* jinja, std::vector<std::string> tokens, int32_t bos, int32_t eos) {
  VocabData v;
  v.model = "gpt2";
  v.tokens = std::move(tokens);
  v.bos_id = bos;
  v.eos_id = eos;
  v.chat_template = jinja;
  return v;
}

TEST(ChatTemplate, Names) {
  for (ChatTemplateKind k : {ChatTemplateKind::ChatML, ChatTemplateKind::Llama3, ChatTemplateKind::Llama2})
    EXPECT_EQ(chat_template_from_name(chat_template_name(k)), k);
  EXPECT_EQ(chat_template_from_name("vicuna"), std::nullopt);
}

TEST(ChatTemplate, Detection) {
  EXPECT_EQ(detect_chat_template(kSmolTemplate), ChatTemplateKind::ChatML);
  EXPECT_EQ(detect_chat_template(kLlama3Template), ChatTemplateKind::Llama3);
  EXPECT_EQ(detect_chat_template(kLlama2Template), ChatTemplateKind::Llama2);
  EXPECT_EQ(detect_chat_template(""), std::nullopt);
  EXPECT_EQ(detect_chat_template("{{ messages }}"), std::nullopt);
}

TEST(ChatTemplate, ChatMLWithDefaultSystem) {
  const ChatTemplate t =
      chat_template_for(vocab_with(kSmolTemplate, {"<|endoftext|>", "<|im_start|>"}, 1, 0), std::nullopt);
  EXPECT_EQ(t.kind, ChatTemplateKind::ChatML);
  EXPECT_EQ(t.default_system, kSmolSystem);
  const std::string sys = std::string("<|im_start|>system\n") + kSmolSystem + "<|im_end|>\n";
  EXPECT_EQ(render_chat(t, kUserOnly, false), sys + "<|im_start|>user\nHi there<|im_end|>\n");
  EXPECT_EQ(render_chat(t, kUserOnly, true),
            sys + "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(t, kSysUser, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n  What is 2+2?\n<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(t, kMulti, false),
            sys +
                "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n Hi! \n<|im_end|>\n"
                "<|im_start|>user\nBye<|im_end|>\n");
  EXPECT_EQ(render_chat(t, {}, false), "");
  EXPECT_EQ(render_chat(t, {}, true), "<|im_start|>assistant\n");
  // Other roles pass through.
  EXPECT_EQ(render_chat(t, {{"system", "x"}, {"tool", "42"}}, false),
            "<|im_start|>system\nx<|im_end|>\n<|im_start|>tool\n42<|im_end|>\n");
}

TEST(ChatTemplate, ChatMLWithoutDefaultSystem) {
  // A plain ChatML template whose system text comes from the messages only.
  const char* jinja =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
      "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% "
      "endif %}";
  const ChatTemplate t = chat_template_for(vocab_with(jinja, {"a"}, -1, -1), std::nullopt);
  EXPECT_EQ(t.default_system, "");
  EXPECT_EQ(render_chat(t, kUserOnly, true), "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n");
  // Escaped "\n" inside a Jinja literal and a system prompt that is an expression.
  const char* qwen_like =
      "{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + messages[0]['content'] + "
      "'<|im_end|>\\n' }}{% else %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
      "{% endif %}";
  EXPECT_EQ(chat_template_for(vocab_with(qwen_like, {"a"}, -1, -1), std::nullopt).default_system,
            "You are a helpful assistant.");
}

TEST(ChatTemplate, Llama3) {
  const ChatTemplate t =
      chat_template_for(vocab_with(kLlama3Template, {"<|begin_of_text|>", "<|eot_id|>"}, 0, 1), std::nullopt);
  EXPECT_EQ(t.kind, ChatTemplateKind::Llama3);
  EXPECT_EQ(t.bos_text, "<|begin_of_text|>");
  EXPECT_EQ(render_chat(t, kUserOnly, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>");
  EXPECT_EQ(render_chat(t, kSysUser, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render_chat(t, kMulti, true),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render_chat(t, {}, true), "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // trim is Python's str.strip: Unicode spaces too (U+3000, U+00A0).
  EXPECT_EQ(render_chat(t, {{"user", "\xE3\x80\x80 x\xC2\xA0\n"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
}

TEST(ChatTemplate, Llama2) {
  const ChatTemplate t =
      chat_template_for(vocab_with(kLlama2Template, {"<unk>", "<s>", "</s>"}, 1, 2), std::nullopt);
  EXPECT_EQ(t.kind, ChatTemplateKind::Llama2);
  EXPECT_EQ(render_chat(t, kUserOnly, true), "<s>[INST] Hi there [/INST]");
  EXPECT_EQ(render_chat(t, kSysUser, false),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n  What is 2+2? [/INST]");
  EXPECT_EQ(render_chat(t, kMulti, false), "<s>[INST] Hello [/INST] Hi! </s><s>[INST] Bye [/INST]");
  EXPECT_EQ(render_chat(t, kSysMulti, true),
            "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nA [/INST] B </s><s>[INST] C [/INST]");
  EXPECT_THROW(render_chat(t, {{"assistant", "x"}}, false), Error);
  EXPECT_THROW(render_chat(t, {{"user", "a"}, {"user", "b"}}, false), Error);
  EXPECT_THROW(render_chat(t, {{"user", "a"}, {"tool", "b"}}, false), Error);
}

TEST(ChatTemplate, OverrideAndFallback) {
  const VocabData smol = vocab_with(kSmolTemplate, {"<|endoftext|>"}, 0, 0);
  const ChatTemplate forced = chat_template_for(smol, ChatTemplateKind::Llama3);
  EXPECT_EQ(forced.kind, ChatTemplateKind::Llama3);
  EXPECT_EQ(forced.default_system, "");
  // An override of the detected kind keeps the template's system prompt.
  EXPECT_EQ(chat_template_for(smol, ChatTemplateKind::ChatML).default_system, kSmolSystem);
  const ChatTemplate none = chat_template_for(vocab_with("", {"a"}, -1, -1), std::nullopt);
  EXPECT_EQ(none.kind, ChatTemplateKind::ChatML);
  EXPECT_EQ(none.default_system, "");
  EXPECT_EQ(none.bos_text, "");
  EXPECT_EQ(chat_template_for(vocab_with("{{ unknown }}", {"a"}, -1, -1), std::nullopt).kind,
            ChatTemplateKind::ChatML);
}

TEST(ChatTemplate, SmolLM2FromGguf) {
  const char* env = std::getenv("HIPSERVE_MODEL");
  const std::string path = env ? env : HIPSERVE_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::ifstream(path).good()) GTEST_SKIP() << "model not found at " << path << " (set HIPSERVE_MODEL)";
  const VocabData vocab = vocab_from_gguf(*gguf::File::open(path));
  EXPECT_EQ(vocab.chat_template, kSmolTemplate);
  const ChatTemplate t = chat_template_for(vocab, std::nullopt);
  EXPECT_EQ(t.kind, ChatTemplateKind::ChatML);
  EXPECT_EQ(t.default_system, kSmolSystem);
  // The rendered prompt tokenizes with the control tokens as single ids.
  const Tokenizer tok(vocab);
  const std::string prompt = render_chat(t, kUserOnly, true);
  const std::vector<int32_t> ids = tok.encode(prompt, false, true);
  EXPECT_EQ(tok.decode(ids), prompt);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);                            // <|im_start|>
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 3);  // system, user, assistant
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 2);  // two <|im_end|>
}

}  // namespace
}  // namespace hs
