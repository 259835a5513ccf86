// Chat prompt formats. We do not run Jinja: the GGUF's tokenizer.chat_template is recognized by its markers
// and rendered by hand-written code that produces exactly what the Jinja templates below produce.
//
//   ChatML (SmolLM2, Qwen): "<|im_start|>{role}\n{content}<|im_end|>\n" per message; when the first message
//   is
//     not a system message and the template has a built-in system prompt, that prompt goes first as a system
//     message. Generation prompt: "<|im_start|>assistant\n". Any role is passed through.
//   Llama-3 (Meta-Llama-3-Instruct): BOS, then "<|start_header_id|>{role}<|end_header_id|>\n\n{trim(content)}
//     <|eot_id|>" per message. Generation prompt: "<|start_header_id|>assistant<|end_header_id|>\n\n". Any
//     role (e.g. "ipython") is passed through.
//   Llama-2 (Llama-2-chat): an optional leading system message is folded into the first user turn as
//     "<<SYS>>\n{system}\n<</SYS>>\n\n"; user turns are "{bos}[INST] {strip(content)} [/INST]", assistant
//     turns " {strip(content)} {eos}". Roles must alternate user/assistant/...: anything else throws
//     hs::Error (the Jinja raises too). The generation prompt adds nothing (the text already ends with
//     "[/INST]").
//
// Templates that write BOS themselves (Llama-2/3) start the prompt with its text: encode the rendered prompt
// with add_special = false and parse_special = true, or BOS appears twice.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"

namespace hs {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

enum class ChatTemplateKind { ChatML, Llama3, Llama2 };

std::optional<ChatTemplateKind> chat_template_from_name(
    std::string_view name);  // "chatml", "llama3", "llama2"
const char* chat_template_name(ChatTemplateKind kind);

// Recognizes a tokenizer.chat_template Jinja string by its markers: <|start_header_id|> -> Llama3,
// <|im_start|> -> ChatML, [INST] -> Llama2; nullopt if none is present.
std::optional<ChatTemplateKind> detect_chat_template(std::string_view jinja);

struct ChatTemplate {
  ChatTemplateKind kind = ChatTemplateKind::ChatML;
  // ChatML only: the system prompt the Jinja inserts when the conversation does not start with a system
  // message (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face"); empty if none.
  std::string default_system;
  std::string bos_text;  // the BOS token's text (Llama-2/3 write it); empty when the vocab has no BOS
  std::string eos_text;  // the EOS token's text (Llama-2 closes assistant turns with it)
};

// The template for a model: override_kind if given, else the kind detected from vocab.chat_template, else
// ChatML with a warning on stderr (no template, or one we do not recognize).
ChatTemplate chat_template_for(const VocabData& vocab, std::optional<ChatTemplateKind> override_kind);

std::string render_chat(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt);

}  // namespace hs
