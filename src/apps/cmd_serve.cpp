// `hipserve serve`: the OpenAI-compatible HTTP server (src/server/) with continuous batching.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "apps/cli.h"
#include "apps/commands.h"
#include "apps/gpu_commands.h"
#include "apps/loader.h"
#include "model/chat_template.h"
#include "server/http_server.h"
#include "util/common.h"

namespace hs::cli {

int cmd_serve(const std::vector<std::string>& args) {
  CommonArgs common;
  server::ServerOptions so;
  bool help = false;
  int kv_tokens = 0;
  bool kv_page_set = false;

  OptionTable t;
  add_common_options(t, common);
  t.add({"", "--host", "ADDR", "address to listen on (default: 127.0.0.1, loopback only; 0.0.0.0 for all)",
         [&](const std::string& v) { so.host = v; }});
  t.add({"", "--port", "N", "TCP port (default: 8080; 0 = any free port, printed in the log)",
         [&](const std::string& v) { so.port = parse_int("--port", v, 0, 65535); }});
  t.add({"-np", "--parallel", "N", "slots: sequences generated at once, batched in one forward pass (default: 4)",
         [&](const std::string& v) { so.engine.n_slots = parse_int("--parallel", v, 1, 256); }});
  t.add({"", "--api-key", "KEY", "require 'Authorization: Bearer KEY' (all routes but /health and /metrics)",
         [&](const std::string& v) { so.api_key = v; }});
  t.add({"", "--kv-size", "N",
         "KV pool size in tokens, shared by all slots (default: slots x context); smaller pools queue requests",
         [&](const std::string& v) { kv_tokens = parse_int("--kv-size", v, 1, 1 << 30); }});
  t.add({"", "--kv-page", "N", "tokens per KV page, a multiple of 64 (default: 256)",
         [&](const std::string& v) {
           so.engine.page_size = parse_int("--kv-page", v, 64, 1 << 20);
           kv_page_set = true;
         }});
  t.add({"", "--prefill-chunk", "N", "prompt tokens fed per engine step, between decode steps (default: 256)",
         [&](const std::string& v) { so.engine.prefill_chunk = parse_int("--prefill-chunk", v, 1, 1 << 16); }});
  t.add({"", "--max-queue", "N", "requests allowed to wait for a slot; more get 503 (default: 256)",
         [&](const std::string& v) { so.engine.max_queued = parse_int("--max-queue", v, 0, 1 << 20); }});
  t.add({"", "--http-threads", "N", "HTTP worker threads, one per open connection (default: 256)",
         [&](const std::string& v) { so.http_threads = parse_int("--http-threads", v, 4, 4096); }});
  t.add({"", "--shutdown-grace", "SEC",
         "on SIGINT/SIGTERM, let running requests finish for SEC seconds, then cancel them (default: 10)",
         [&](const std::string& v) { so.shutdown_grace_s = parse_int("--shutdown-grace", v, 0, 3600); }});
  t.add({"", "--chat-template", "NAME", "override the GGUF's chat template: chatml, llama3, llama2",
         [&](const std::string& v) {
           HS_CHECK(chat_template_from_name(v).has_value(), "unknown chat template '%s' (known: chatml, llama3, llama2)",
                    v.c_str());
           so.chat_template = v;
         }});
  add_sampling_options(t, so.sampling);
  t.add({"-h", "--help", "", "show this help", [&](const std::string&) { help = true; }});

  const std::vector<std::string> positional = t.parse(args);
  if (help) {
    std::printf(
        "usage: hipserve serve [options]\n\n"
        "OpenAI-compatible HTTP server with continuous batching: on the CPU (a paged KV cache shared by the slots)\n"
        "or, with --device cuda (the default when a GPU is present), on the GPU (one K/V region per slot).\n"
        "Routes: POST /v1/chat/completions, POST /v1/completions (stream or not), GET /v1/models, GET /health,\n"
        "GET /metrics (Prometheus), POST /tokenize, POST /detokenize. The sampling flags set the defaults for\n"
        "fields a request does not send. -c is the context of each sequence (prompt + max_tokens must fit).\n\n%s",
        t.help().c_str());
    return 0;
  }
  HS_CHECK(positional.empty(), "unexpected argument '%s' (see --help)", positional[0].c_str());
  HS_CHECK(so.engine.page_size % 64 == 0, "--kv-page must be a multiple of 64, got %d", so.engine.page_size);
  if (kv_tokens > 0) so.engine.n_pages = (kv_tokens + so.engine.page_size - 1) / so.engine.page_size;
  (void)common.attention();  // invalid attention flags fail now, not in the background load
  HS_CHECK(common.random_weights.empty(), "--random-weights has no tokenizer: use it with `hipserve bench`");
  // run_server() takes SIGINT/SIGTERM with sigwait() and blocks them in every thread; the device check below may
  // start the CUDA driver's threads, which must inherit that mask too, so block them before it.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  const bool on_gpu = common.use_cuda();  // --device cuda without a GPU fails now, before binding
  HS_CHECK(!on_gpu || (kv_tokens == 0 && !kv_page_set),
           "--kv-size and --kv-page shape the CPU's paged K/V pool; on the GPU each slot holds a whole context "
           "(-c): drop them, or add --device cpu");

  return server::run_server(so, [&]() {
    // Test hook: hold the load back so tests can see /health answer 503 while loading.
    if (const char* delay = std::getenv("HIPSERVE_TEST_LOAD_DELAY_MS"))
      std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(delay)));
    LoadedModel lm = load_model(common, false, on_gpu);
    server::LoadedForServe out;
    out.model_name = lm.model->config().name.empty() ? "hipserve" : lm.model->config().name;
    EngineOptions eo = so.engine;
    eo.n_ctx = lm.n_ctx;
    out.backend = make_slot_backend(common, lm, eo, on_gpu);
    out.model = std::move(lm.model);
    out.pool = std::move(lm.pool);
    return out;
  });
}

}  // namespace hs::cli
