// `hipserve serve`: an OpenAI-compatible HTTP server (Debian's cpp-httplib) in front of a BatchEngine.
//
// Threads: httplib's worker pool runs the handlers (parse, tokenize, submit, then wait on the request and
// write the reply or the SSE stream); one engine thread runs every forward pass; the model loads in the
// background after the socket is listening, so /health answers 503 "loading" until it is ready.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "engine/batch_engine.h"
#include "engine/sampler.h"
#include "model/llama.h"

namespace hs::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;        // non-empty: every route but /health and /metrics needs "Authorization: Bearer KEY"
  int http_threads = 256;     // httplib workers: one per open connection (idle keep-alive ones included)
  int shutdown_grace_s = 10;  // on SIGINT/SIGTERM, running requests may finish for this long, then are cancelled
  SamplingParams sampling;    // defaults for fields a request does not send
  std::string chat_template;  // override: chatml, llama3, llama2; empty: from the GGUF
  EngineOptions engine;
};

// Loads the model with `load` (called on a background thread once the socket listens; returns the model, the
// thread pool and the slot backend the engine runs on), serves until SIGINT/SIGTERM, shuts down gracefully.
// Returns the exit code. The engine's context per sequence is the backend's n_ctx().
struct LoadedForServe {
  std::unique_ptr<Model> model;  // the tokenizer and, on the CPU, the weights
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<SlotBackend> backend;  // what the engine runs: CpuSlotBackend over model, or the GPU's
  std::string model_name;
};
int run_server(const ServerOptions& options, const std::function<LoadedForServe()>& load);

}  // namespace hs::server
