#include "server/openai_api.h"

#include <cmath>
#include <set>

#include "model/tokenizer.h"
#include "util/common.h"

namespace hs::server {

using nlohmann::json;

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string error_json(const ApiError& e) {
  json err = {{"message", e.message}, {"type", e.type}};
  err["param"] = e.param.empty() ? json(nullptr) : json(e.param);
  err["code"] = e.code.empty() ? json(nullptr) : json(e.code);
  return dump_json(json{{"error", err}});
}

const char* finish_reason(StopReason r) {
  return (r == StopReason::Length || r == StopReason::ContextFull) ? "length" : "stop";
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message, const std::string& code = "invalid_value") {
  ApiError e;
  e.status = 400;
  e.message = message;
  e.code = code;
  e.param = param;
  throw e;
}

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    default: return "an unknown type";
  }
}

json parse_json_object(const std::string& body) {
  if (!is_valid_utf8(body)) bad("", "the request body is not valid UTF-8", "invalid_json");
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    bad("", std::string("the request body is not valid JSON: ") + e.what(), "invalid_json");
  }
  if (!j.is_object()) bad("", std::string("the request body must be a JSON object, got ") + type_name(j), "invalid_json");
  return j;
}

bool get_bool(const json& v, const std::string& name) {
  if (!v.is_boolean()) bad(name, "'" + name + "' must be a boolean, got " + type_name(v), "invalid_type");
  return v.get<bool>();
}

double get_number(const json& v, const std::string& name, double lo, double hi) {
  if (!v.is_number()) bad(name, "'" + name + "' must be a number, got " + type_name(v), "invalid_type");
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) bad(name, strfmt("'%s' must be in [%g, %g], got %g", name.c_str(), lo, hi, x));
  return x;
}

int64_t get_int(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && d >= double(lo) && d <= double(hi)) return int64_t(d);
  }
  if (!v.is_number_integer())
    bad(name, "'" + name + "' must be an integer, got " + type_name(v), "invalid_type");
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
    bad(name, strfmt("'%s' must be in [%lld, %lld]", name.c_str(), (long long)lo, (long long)hi));
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    bad(name, strfmt("'%s' must be in [%lld, %lld], got %lld", name.c_str(), (long long)lo, (long long)hi, (long long)x));
  return x;
}

std::string get_string(const json& v, const std::string& name) {
  if (!v.is_string()) bad(name, "'" + name + "' must be a string, got " + type_name(v), "invalid_type");
  return v.get<std::string>();
}

// Message content: a string, or an array of {"type": "text", "text": ...} parts (concatenated).
std::string message_content(const json& v, const std::string& name) {
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array())
    bad(name, "'" + name + "' must be a string or an array of text parts, got " + type_name(v), "invalid_type");
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    const json& part = v[i];
    const std::string pn = name + "[" + std::to_string(i) + "]";
    if (!part.is_object()) bad(pn, "'" + pn + "' must be an object", "invalid_type");
    for (const auto& [k, x] : part.items())
      if (k != "type" && k != "text") bad(pn + "." + k, "unknown field '" + k + "' in '" + pn + "'", "unknown_field");
    if (!part.contains("type") || get_string(part["type"], pn + ".type") != "text")
      bad(pn + ".type", "only text content parts are supported ('" + pn + ".type' must be \"text\")");
    if (!part.contains("text")) bad(pn + ".text", "'" + pn + ".text' is required", "missing_field");
    out += get_string(part["text"], pn + ".text");
  }
  return out;
}

}  // namespace

json parse_object_body(const std::string& body, const std::vector<std::string>& allowed) {
  json j = parse_json_object(body);
  for (const auto& [k, v] : j.items())
    if (std::find(allowed.begin(), allowed.end(), k) == allowed.end())
      bad(k, "unknown field '" + k + "'", "unknown_field");
  return j;
}

CompletionRequest parse_completion_request(const std::string& body, bool chat, const SamplingParams& defaults) {
  const json j = parse_json_object(body);
  CompletionRequest r;
  r.chat = chat;
  r.sampling = defaults;

  // Accepted and ignored: they change nothing in what we generate.
  static const std::set<std::string> kIgnored = {"user", "store", "metadata", "service_tier", "parallel_tool_calls",
                                                 "prediction", "modalities", "reasoning_effort"};
  bool have_prompt = false;
  for (const auto& [key, v] : j.items()) {
    if (kIgnored.count(key)) continue;
    if (v.is_null() && key != "messages" && key != "prompt") continue;  // optional field not given
    if (key == "model") {
      r.model = get_string(v, key);
    } else if (chat && key == "messages") {
      if (!v.is_array()) bad(key, std::string("'messages' must be an array, got ") + type_name(v), "invalid_type");
      if (v.empty()) bad(key, "'messages' must contain at least one message");
      for (size_t i = 0; i < v.size(); ++i) {
        const json& m = v[i];
        const std::string mn = "messages[" + std::to_string(i) + "]";
        if (!m.is_object()) bad(mn, "'" + mn + "' must be an object, got " + type_name(m), "invalid_type");
        ChatMessage msg;
        bool have_role = false, have_content = false;
        for (const auto& [mk, mv] : m.items()) {
          if (mk == "role") {
            msg.role = get_string(mv, mn + ".role");
            have_role = true;
          } else if (mk == "content") {
            msg.content = message_content(mv, mn + ".content");
            have_content = true;
          } else if (mk == "name") {
            get_string(mv, mn + ".name");  // accepted, not used by the chat templates
          } else {
            bad(mn + "." + mk, "unknown or unsupported field '" + mk + "' in '" + mn + "'", "unknown_field");
          }
        }
        if (!have_role) bad(mn + ".role", "'" + mn + ".role' is required", "missing_field");
        if (msg.role == "developer") msg.role = "system";  // OpenAI's newer name for the system role
        if (msg.role != "system" && msg.role != "user" && msg.role != "assistant")
          bad(mn + ".role", "'" + mn + ".role' must be \"system\", \"user\" or \"assistant\", got \"" + msg.role + "\"");
        if (!have_content) bad(mn + ".content", "'" + mn + ".content' is required", "missing_field");
        r.messages.push_back(std::move(msg));
      }
      have_prompt = true;
    } else if (!chat && key == "prompt") {
      // A string, an array of one string, or an array of token ids. Several prompts per request: no (like n).
      if (v.is_string()) {
        r.prompt_text = v.get<std::string>();
      } else if (v.is_array() && v.size() == 1 && v[0].is_string()) {
        r.prompt_text = v[0].get<std::string>();
      } else if (v.is_array() && !v.empty() && v[0].is_number()) {
        for (size_t i = 0; i < v.size(); ++i)
          r.prompt_tokens.push_back(int32_t(get_int(v[i], "prompt[" + std::to_string(i) + "]", 0, INT32_MAX)));
        r.prompt_is_tokens = true;
      } else if (v.is_array() && v.size() > 1) {
        bad(key, "only one prompt per request is supported (send several requests)");
      } else {
        bad(key, std::string("'prompt' must be a string or an array of token ids, got ") + type_name(v),
            "invalid_type");
      }
      have_prompt = true;
    } else if (key == "stream") {
      r.stream = get_bool(v, key);
    } else if (key == "stream_options") {
      if (!v.is_object()) bad(key, "'stream_options' must be an object", "invalid_type");
      for (const auto& [sk, sv] : v.items()) {
        if (sk == "include_usage")
          r.include_usage = get_bool(sv, "stream_options.include_usage");
        else
          bad("stream_options." + sk, "unknown field 'stream_options." + sk + "'", "unknown_field");
      }
    } else if (key == "max_tokens" || key == "max_completion_tokens") {
      r.max_tokens = int32_t(get_int(v, key, 1, INT32_MAX));
    } else if (key == "temperature") {
      r.sampling.temperature = float(get_number(v, key, 0, 2));
    } else if (key == "top_p") {
      r.sampling.top_p = float(get_number(v, key, 0, 1));
      if (r.sampling.top_p <= 0) bad(key, "'top_p' must be > 0");
    } else if (key == "top_k") {
      r.sampling.top_k = int32_t(get_int(v, key, 0, INT32_MAX));
    } else if (key == "min_p") {
      r.sampling.min_p = float(get_number(v, key, 0, 1));
    } else if (key == "seed") {
      r.sampling.seed = uint64_t(get_int(v, key, 0, INT64_MAX));
    } else if (key == "presence_penalty") {
      r.sampling.presence_penalty = float(get_number(v, key, -2, 2));
    } else if (key == "frequency_penalty") {
      r.sampling.frequency_penalty = float(get_number(v, key, -2, 2));
    } else if (key == "repeat_penalty") {
      r.sampling.repeat_penalty = float(get_number(v, key, 0.01, 100));
    } else if (key == "repeat_last_n") {
      r.sampling.repeat_last_n = int32_t(get_int(v, key, -1, INT32_MAX));
    } else if (key == "ignore_eos") {
      r.ignore_eos = get_bool(v, key);
    } else if (key == "stop") {
      if (v.is_string()) {
        r.stop.push_back(v.get<std::string>());
      } else if (v.is_array()) {
        if (v.size() > 16) bad(key, "'stop' may hold at most 16 strings");
        for (size_t i = 0; i < v.size(); ++i) r.stop.push_back(get_string(v[i], "stop[" + std::to_string(i) + "]"));
      } else {
        bad(key, std::string("'stop' must be a string or an array of strings, got ") + type_name(v), "invalid_type");
      }
    } else if (key == "n" || key == "best_of") {
      if (get_int(v, key, 0, INT32_MAX) != 1)
        bad(key, "'" + key + "' must be 1: one completion per request is supported (send several requests)");
    } else if (key == "logprobs") {
      // chat: a boolean; completions: an integer count. Only "off" is supported.
      if ((v.is_boolean() && v.get<bool>()) || (v.is_number() && get_int(v, key, 0, 20) != 0) ||
          (!v.is_boolean() && !v.is_number()))
        bad(key, "'logprobs' is not supported by this server");
    } else if (key == "top_logprobs") {
      if (get_int(v, key, 0, 20) != 0) bad(key, "'top_logprobs' is not supported by this server");
    } else if (key == "echo") {
      if (get_bool(v, key)) bad(key, "'echo' is not supported by this server");
    } else if (key == "suffix") {
      if (!get_string(v, key).empty()) bad(key, "'suffix' is not supported by this server");
    } else if (key == "logit_bias") {
      if (!v.is_object()) bad(key, "'logit_bias' must be an object", "invalid_type");
      if (!v.empty()) bad(key, "'logit_bias' is not supported by this server");
    } else if (chat && key == "response_format") {
      if (!v.is_object() || !v.contains("type") || v["type"] != "text")
        bad(key, "only {\"type\": \"text\"} is supported for 'response_format'");
    } else if (chat && (key == "tools" || key == "tool_choice" || key == "functions" || key == "function_call" ||
                        key == "audio")) {
      bad(key, "'" + key + "' is not supported by this server");
    } else {
      bad(key, "unknown field '" + key + "'", "unknown_field");
    }
  }
  if (!have_prompt) {
    const char* f = chat ? "messages" : "prompt";
    bad(f, std::string("'") + f + "' is required", "missing_field");
  }
  if (!r.stream && r.include_usage) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
  const std::string why = r.sampling.validate();
  if (!why.empty()) bad("", why);
  return r;
}

}  // namespace hs::server
