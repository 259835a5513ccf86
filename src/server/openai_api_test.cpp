// Request validation of the OpenAI routes: what is accepted, and that every kind of bad input is a 400 that
// names the field.
#include "server/openai_api.h"

#include <gtest/gtest.h>

namespace hs::server {
namespace {

CompletionRequest chat(const std::string& body) { return parse_completion_request(body, true, SamplingParams()); }
CompletionRequest completion(const std::string& body) {
  return parse_completion_request(body, false, SamplingParams());
}

// The ApiError of a bad body (fails the test if the body is accepted).
ApiError error_of(const std::string& body, bool is_chat = true) {
  try {
    parse_completion_request(body, is_chat, SamplingParams());
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return {};
}

TEST(OpenAiApi, ParsesAChatRequestWithEveryHonouredField) {
  const CompletionRequest r = chat(R"({"model": "x", "messages": [{"role": "system", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}],
      "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 7, "temperature": 0.5,
      "top_p": 0.9, "top_k": 5, "min_p": 0.1, "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5,
      "repeat_penalty": 1.1, "stop": ["\n", "END"], "n": 1, "user": "u", "logprobs": false,
      "response_format": {"type": "text"}, "logit_bias": {}})");
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[1].content, "hi there");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 5);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.1f);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -0.5f);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n", "END"}));
}

TEST(OpenAiApi, NullMeansNotGivenAndDefaultsComeFromTheServer) {
  SamplingParams defaults;
  defaults.temperature = 0.0f;
  const CompletionRequest r = parse_completion_request(
      R"({"prompt": "a", "max_tokens": null, "temperature": null, "stop": null})", false, defaults);
  EXPECT_EQ(r.max_tokens, -1);
  EXPECT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_TRUE(r.stop.empty());
}

TEST(OpenAiApi, CompletionPromptsTextOrTokenIds) {
  EXPECT_EQ(completion(R"({"prompt": "hello"})").prompt_text, "hello");
  EXPECT_EQ(completion(R"({"prompt": ["hello"]})").prompt_text, "hello");
  const CompletionRequest ids = completion(R"({"prompt": [1, 2, 3]})");
  EXPECT_TRUE(ids.prompt_is_tokens);
  EXPECT_EQ(ids.prompt_tokens, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(error_of(R"({"prompt": ["a", "b"]})", false).param, "prompt");
  EXPECT_EQ(error_of(R"({"prompt": [1, -2]})", false).param, "prompt[1]");
  EXPECT_EQ(error_of(R"({"echo": false})", false).param, "prompt");  // required
}

TEST(OpenAiApi, BadInputIsA400NamingTheField) {
  EXPECT_EQ(error_of("{not json").code, "invalid_json");
  EXPECT_EQ(error_of("[1, 2]").code, "invalid_json");
  EXPECT_EQ(error_of("{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}").code, "invalid_json");
  EXPECT_EQ(error_of(R"({"messages": [{"role": "user", "content": "\ud800"}]})").code, "invalid_json");
  EXPECT_EQ(error_of(R"({"messages": []})").param, "messages");
  EXPECT_EQ(error_of(R"({"messages": "hi"})").code, "invalid_type");
  EXPECT_EQ(error_of(R"({"model": "x"})").param, "messages");
  EXPECT_EQ(error_of(R"({"messages": [{"role": "user"}]})").param, "messages[0].content");
  EXPECT_EQ(error_of(R"({"messages": [{"role": "wizard", "content": "x"}]})").param, "messages[0].role");
  EXPECT_EQ(error_of(R"({"messages": [{"role": "user", "content": 5}]})").code, "invalid_type");
  EXPECT_EQ(error_of(R"({"messages": [{"role": "user", "content": "x", "mood": 1}]})").code, "unknown_field");
  const std::string msg = R"("messages": [{"role": "user", "content": "x"}])";
  EXPECT_EQ(error_of("{" + msg + R"(, "max_token": 5})").code, "unknown_field");
  EXPECT_EQ(error_of("{" + msg + R"(, "max_token": 5})").param, "max_token");
  EXPECT_EQ(error_of("{" + msg + R"(, "max_tokens": "5"})").code, "invalid_type");
  EXPECT_EQ(error_of("{" + msg + R"(, "max_tokens": 0})").param, "max_tokens");
  EXPECT_EQ(error_of("{" + msg + R"(, "max_tokens": 99999999999999})").param, "max_tokens");
  EXPECT_EQ(error_of("{" + msg + R"(, "temperature": 3})").param, "temperature");
  EXPECT_EQ(error_of("{" + msg + R"(, "temperature": "hot"})").code, "invalid_type");
  EXPECT_EQ(error_of("{" + msg + R"(, "top_p": 0})").param, "top_p");
  EXPECT_EQ(error_of("{" + msg + R"(, "n": 2})").param, "n");
  EXPECT_EQ(error_of("{" + msg + R"(, "stream": "yes"})").param, "stream");
  EXPECT_EQ(error_of("{" + msg + R"(, "stop": [1]})").param, "stop[0]");
  EXPECT_EQ(error_of("{" + msg + R"(, "logprobs": true})").param, "logprobs");
  EXPECT_EQ(error_of("{" + msg + R"(, "tools": []})").param, "tools");
  EXPECT_EQ(error_of("{" + msg + R"(, "stream_options": {"include_usage": true}})").param, "stream_options");
}

TEST(OpenAiApi, ErrorsHaveOpenAisShape) {
  const ApiError e = error_of(R"({"messages": []})");
  const nlohmann::json j = nlohmann::json::parse(error_json(e));
  ASSERT_TRUE(j.contains("error"));
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "messages");
  EXPECT_TRUE(j["error"]["message"].is_string());
  EXPECT_TRUE(j["error"].contains("code"));
}

}  // namespace
}  // namespace hs::server
