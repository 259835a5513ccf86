// Chat prompt rendering equal to the Jinja templates described in chat_template.h.
#include "model/chat_template.h"

#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "util/common.h"

namespace hs {

namespace {

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd = "<|im_end|>";

// Length of the whitespace character at s[i] as Python's str.isspace() (Jinja's trim / str.strip) sees it,
// 0 if none: ASCII \t\n\v\f\r, \x1c-\x1f and space, and the Unicode White_Space characters.
size_t space_len(std::string_view s, size_t i) {
  const unsigned char c = s[i];
  if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return 1;
  const auto at = [&](std::string_view seq) { return s.substr(i, seq.size()) == seq ? seq.size() : 0; };
  for (std::string_view u : {"\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80", "\xE2\x80\xA8", "\xE2\x80\xA9",
                             "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"})
    if (const size_t n = at(u)) return n;
  if (s.substr(i, 2) == "\xE2\x80" && i + 2 < s.size() && uint8_t(s[i + 2]) >= 0x80 &&
      uint8_t(s[i + 2]) <= 0x8A)
    return 3;  // U+2000..U+200A
  return 0;
}

// Python str.strip(): whitespace removed from both ends.
std::string strip(std::string_view s) {
  size_t b = 0;
  while (b < s.size()) {
    const size_t n = space_len(s, b);
    if (n == 0) break;
    b += n;
  }
  size_t e = s.size();
  while (e > b) {
    // Find the start of the last character (UTF-8 continuation bytes are 10xxxxxx).
    size_t k = e - 1;
    while (k > b && (uint8_t(s[k]) & 0xC0) == 0x80) --k;
    const size_t n = space_len(s, k);
    if (n == 0 || k + n != e) break;
    e = k;
  }
  return std::string(s.substr(b, e - b));
}

// The system prompt a ChatML Jinja template inserts: a string literal "<|im_start|>system\n...<|im_end|>"
// whose middle is plain text (no quotes or Jinja syntax, so it is not an expression like message['content']).
std::string extract_default_system(std::string_view jinja) {
  const std::string_view head = "<|im_start|>system";
  for (size_t pos = jinja.find(head); pos != std::string_view::npos; pos = jinja.find(head, pos + 1)) {
    size_t start = pos + head.size();
    if (jinja.substr(start, 1) == "\n")
      start += 1;
    else if (jinja.substr(start, 2) == "\\n")
      start += 2;  // "\n" written as an escape inside the literal
    else
      continue;
    const size_t end = jinja.find(kImEnd, start);
    if (end == std::string_view::npos) break;
    const std::string_view body = jinja.substr(start, end - start);
    if (body.empty() || body.find_first_of("'\"{}") != std::string_view::npos) continue;
    std::string out;
    for (size_t i = 0; i < body.size(); ++i) {
      if (body[i] == '\\' && i + 1 < body.size() && (body[i + 1] == 'n' || body[i + 1] == 't')) {
        out += body[i + 1] == 'n' ? '\n' : '\t';
        ++i;
      } else {
        out += body[i];
      }
    }
    return out;
  }
  return "";
}

std::string render_chatml(const ChatTemplate& t, const std::vector<ChatMessage>& messages, bool gen) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0 && messages[0].role != "system" && !t.default_system.empty()) {
      out.append(kImStart).append("system\n").append(t.default_system).append(kImEnd).append("\n");
    }
    out.append(kImStart).append(messages[i].role).append("\n").append(messages[i].content).append(kImEnd);
    out += '\n';
  }
  if (gen) out.append(kImStart).append("assistant\n");
  return out;
}

std::string render_llama3(const ChatTemplate& t, const std::vector<ChatMessage>& messages, bool gen) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0) out += t.bos_text;
    out.append("<|start_header_id|>").append(messages[i].role).append("<|end_header_id|>\n\n");
    out.append(strip(messages[i].content)).append("<|eot_id|>");
  }
  if (gen) out.append("<|start_header_id|>assistant<|end_header_id|>\n\n");
  return out;
}

std::string render_llama2(const ChatTemplate& t, const std::vector<ChatMessage>& messages) {
  size_t first = 0;
  const std::string* system = nullptr;
  if (!messages.empty() && messages[0].role == "system") {
    system = &messages[0].content;
    first = 1;
  }
  std::string out;
  for (size_t i = first; i < messages.size(); ++i) {
    const size_t turn = i - first;
    const ChatMessage& m = messages[i];
    const char* expected = turn % 2 == 0 ? "user" : "assistant";
    HS_CHECK(m.role == expected,
             "llama2 chat template: message %zu has role '%s' where '%s' belongs; roles must alternate "
             "user/assistant/user/assistant/... after an optional first system message",
             i, m.role.c_str(), expected);
    std::string content = m.content;
    if (turn == 0 && system) content = "<<SYS>>\n" + *system + "\n<</SYS>>\n\n" + content;
    if (turn % 2 == 0)
      out.append(t.bos_text).append("[INST] ").append(strip(content)).append(" [/INST]");
    else
      out.append(" ").append(strip(content)).append(" ").append(t.eos_text);
  }
  return out;
}

}  // namespace

std::optional<ChatTemplateKind> chat_template_from_name(std::string_view name) {
  if (name == "chatml") return ChatTemplateKind::ChatML;
  if (name == "llama3") return ChatTemplateKind::Llama3;
  if (name == "llama2") return ChatTemplateKind::Llama2;
  return std::nullopt;
}

const char* chat_template_name(ChatTemplateKind kind) {
  switch (kind) {
    case ChatTemplateKind::ChatML:
      return "chatml";
    case ChatTemplateKind::Llama3:
      return "llama3";
    case ChatTemplateKind::Llama2:
      return "llama2";
  }
  return "?";
}

std::optional<ChatTemplateKind> detect_chat_template(std::string_view jinja) {
  if (jinja.find("<|start_header_id|>") != std::string_view::npos) return ChatTemplateKind::Llama3;
  if (jinja.find(kImStart) != std::string_view::npos) return ChatTemplateKind::ChatML;
  if (jinja.find("[INST]") != std::string_view::npos) return ChatTemplateKind::Llama2;
  return std::nullopt;
}

ChatTemplate chat_template_for(const VocabData& vocab, std::optional<ChatTemplateKind> override_kind) {
  ChatTemplate t;
  const std::optional<ChatTemplateKind> detected = detect_chat_template(vocab.chat_template);
  if (override_kind) {
    t.kind = *override_kind;
  } else if (detected) {
    t.kind = *detected;
  } else {
    std::fprintf(
        stderr, "warning: %s; using the chatml chat template\n",
        vocab.chat_template.empty() ? "the model has no chat template" : "unrecognized chat template");
    t.kind = ChatTemplateKind::ChatML;
  }
  if (t.kind == ChatTemplateKind::ChatML && detected == ChatTemplateKind::ChatML)
    t.default_system = extract_default_system(vocab.chat_template);
  const auto text = [&](int32_t id) {
    return id >= 0 && size_t(id) < vocab.tokens.size() ? vocab.tokens[id] : std::string();
  };
  t.bos_text = text(vocab.bos_id);
  t.eos_text = text(vocab.eos_id);
  return t;
}

std::string render_chat(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt) {
  switch (t.kind) {
    case ChatTemplateKind::ChatML:
      return render_chatml(t, messages, add_generation_prompt);
    case ChatTemplateKind::Llama3:
      return render_llama3(t, messages, add_generation_prompt);
    case ChatTemplateKind::Llama2:
      return render_llama2(t, messages);
  }
  return "";
}

}  // namespace hs
