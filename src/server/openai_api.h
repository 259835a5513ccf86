// The OpenAI wire format (https://platform.openai.com/docs/api-reference): request parsing with validation,
// and the JSON of responses, stream chunks and errors. No HTTP here (see http_server.h), so it is unit-tested
// on its own.
//
// Validation policy: every field OpenAI documents for these endpoints is either honoured or, when we cannot
// honour it, answered with a 400 that names it (e.g. n > 1, logprobs, tools); fields that change nothing for
// us (user, store, metadata, ...) are accepted and ignored; any other field is a 400 "unknown field", so a
// typo (`max_token`) never silently runs with defaults. null means "not given" for optional fields, as in
// OpenAI's API.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/sampler.h"
#include "engine/session.h"
#include "model/chat_template.h"

namespace hs::server {

// An error for the client: HTTP status and OpenAI's {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string code;   // e.g. "invalid_value", "context_length_exceeded"; may be empty (null)
  std::string param;  // the offending field, or empty (null)
};

std::string error_json(const ApiError& e);

// A parsed /v1/chat/completions or /v1/completions body.
struct CompletionRequest {
  bool chat = false;
  std::vector<ChatMessage> messages;  // chat
  std::string prompt_text;            // completions, text prompt
  std::vector<int32_t> prompt_tokens; // completions, token-id prompt (used when prompt_is_tokens)
  bool prompt_is_tokens = false;
  std::string model;                  // as sent (we serve one model whatever the name)
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage
  int32_t max_tokens = -1;            // -1: not given (up to the context)
  std::vector<std::string> stop;
  bool ignore_eos = false;            // extension (llama.cpp)
  SamplingParams sampling;
};

// Parses a body; `defaults` supplies the sampling values for fields the client did not send (the server's
// command-line sampling flags). Throws ApiError (400) on malformed JSON, invalid UTF-8, wrong types,
// out-of-range values, unknown or unsupported fields.
CompletionRequest parse_completion_request(const std::string& body, bool chat, const SamplingParams& defaults);

// Parses a JSON object body for the small routes (/tokenize, /detokenize); throws ApiError on malformed input
// or fields outside `allowed`.
nlohmann::json parse_object_body(const std::string& body, const std::vector<std::string>& allowed);

const char* finish_reason(StopReason r);  // "stop" or "length"

// Serializes with invalid UTF-8 replaced by U+FFFD (model text may end mid-character in /detokenize).
std::string dump_json(const nlohmann::json& j);

}  // namespace hs::server
