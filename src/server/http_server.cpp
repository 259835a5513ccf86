#include "server/http_server.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <httplib.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <thread>

#include "model/chat_template.h"
#include "server/openai_api.h"
#include "util/common.h"

namespace hs::server {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Logging: one line per event, "HH:MM:SS.mmm srv  ...", like llama.cpp's server log.

std::mutex g_log_mu;

void logf(const char* fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  gmtime_r(&ts.tv_sec, &t);
  std::lock_guard<std::mutex> lock(g_log_mu);
  std::fprintf(stderr, "%02d:%02d:%02d.%03ld srv  %s\n", t.tm_hour, t.tm_min, t.tm_sec, ts.tv_nsec / 1000000, msg);
  std::fflush(stderr);
}

double ms_between(Clock::time_point a, Clock::time_point b) {
  if (a.time_since_epoch().count() == 0 || b.time_since_epoch().count() == 0) return 0.0;
  return std::chrono::duration<double, std::milli>(b - a).count();
}

enum class Phase { Loading, Ready, ShuttingDown, Failed };

struct State {
  ServerOptions opt;
  std::atomic<Phase> phase{Phase::Loading};
  LoadedForServe loaded;
  std::unique_ptr<BatchEngine> engine;
  std::atomic<const BatchEngine*> engine_for_metrics{nullptr};  // published once the engine runs
  ChatTemplate tmpl;
  std::time_t created = std::time(nullptr);
  std::atomic<int64_t> next_id{1};
  std::atomic<int32_t> active_streams{0};  // SSE responses still writing
  std::atomic<int64_t> http_requests{0};
};

void send_json(httplib::Response& res, int status, const std::string& body) {
  res.status = status;
  res.set_content(body, "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status, error_json(e)); }

ApiError make_error(int status, const std::string& message, const std::string& type, const std::string& code) {
  ApiError e;
  e.status = status;
  e.message = message;
  e.type = type;
  e.code = code;
  return e;
}

bool check_auth(const State& st, const httplib::Request& req, httplib::Response& res) {
  if (st.opt.api_key.empty()) return true;
  if (req.get_header_value("Authorization") == "Bearer " + st.opt.api_key) return true;
  send_error(res, make_error(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                             "authentication_error", "invalid_api_key"));
  return false;
}

bool require_ready(const State& st, httplib::Response& res) {
  switch (st.phase.load()) {
    case Phase::Ready: return true;
    case Phase::Loading:
      send_error(res, make_error(503, "the model is loading; retry shortly", "unavailable_error", "model_loading"));
      return false;
    default:
      send_error(res, make_error(503, "the server is shutting down", "unavailable_error", "server_shutting_down"));
      return false;
  }
}

json usage_json(const GenRequest& g) {
  return {{"prompt_tokens", g.n_prompt}, {"completion_tokens", g.n_generated},
          {"total_tokens", g.n_prompt + g.n_generated}};
}

void log_done(const std::string& id, const GenRequest& g, const char* how) {
  const double queue_ms = ms_between(g.t_submit, g.t_start);
  const double prompt_ms = ms_between(g.t_start, g.t_first_token);
  const double eval_ms = ms_between(g.t_first_token, g.t_done);
  const int n_eval = std::max(0, g.n_generated - 1);
  logf("%s %s | prompt %d tokens, queued %.1f ms, prompt eval %.1f ms (%.1f tok/s) | %d tokens generated, eval "
       "%.1f ms (%.1f tok/s) | total %.1f ms | %s",
       id.c_str(), how, g.n_prompt, queue_ms, prompt_ms, prompt_ms > 0 ? 1000.0 * g.n_prompt / prompt_ms : 0.0,
       g.n_generated, eval_ms, eval_ms > 0 ? 1000.0 * n_eval / eval_ms : 0.0, ms_between(g.t_submit, g.t_done),
       g.error.empty() ? (g.reason == StopReason::Cancelled ? "cancelled" : finish_reason(g.reason))
                       : g.error.c_str());
}

// The chunk of a stream ("chat.completion.chunk" / "text_completion").
json chunk_json(const State& st, const std::string& id, bool chat, const std::string& model, const json& delta_or_text,
                const json& finish) {
  json choice = {{"index", 0}, {"finish_reason", finish}, {"logprobs", nullptr}};
  if (chat)
    choice["delta"] = delta_or_text;
  else
    choice["text"] = delta_or_text;
  return {{"id", id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", int64_t(std::time(nullptr))},
          {"model", model},
          {"choices", json::array({choice})}};
}

void handle_completion(State& st, const httplib::Request& req, httplib::Response& res, bool chat) {
  if (!check_auth(st, req, res) || !require_ready(st, res)) return;
  CompletionRequest cr;
  try {
    cr = parse_completion_request(req.body, chat, st.opt.sampling);
  } catch (const ApiError& e) {
    send_error(res, e);
    return;
  }
  const Tokenizer& tok = st.loaded.model->tokenizer();
  auto g = std::make_shared<GenRequest>();
  // Tokenized as `hipserve run` does (--chat: the rendered template; special token texts are recognized).
  if (chat)
    g->prompt = tok.encode(render_chat(st.tmpl, cr.messages, true), true, true);
  else if (cr.prompt_is_tokens)
    g->prompt = cr.prompt_tokens;
  else
    g->prompt = tok.encode(cr.prompt_text, true, true);
  g->sampling = cr.sampling;
  g->max_tokens = cr.max_tokens;
  g->stop = cr.stop;
  g->ignore_eos = cr.ignore_eos;
  const BatchEngine::AdmitResult ar = st.engine->submit(g);
  if (ar.status != BatchEngine::Admit::Ok) {
    const bool busy = ar.status == BatchEngine::Admit::Busy;
    send_error(res, make_error(busy ? 503 : 400, ar.message, busy ? "unavailable_error" : "invalid_request_error",
                               ar.code));
    return;
  }
  const std::string id = strfmt("%s-%lld", chat ? "chatcmpl" : "cmpl", (long long)st.next_id++);
  const std::string model = cr.model.empty() ? st.loaded.model_name : cr.model;
  logf("%s %s from %s: %d prompt tokens, max_tokens %d%s", id.c_str(), req.path.c_str(), req.remote_addr.c_str(),
       g->n_prompt, g->max_tokens, cr.stream ? ", stream" : "");

  if (!cr.stream) {
    std::string text;
    for (;;) {
      GenRequest::Update u = g->wait(std::chrono::milliseconds(1000));
      text += u.text;
      if (u.done) break;
    }
    log_done(id, *g, "done");
    if (!g->error.empty()) {
      send_error(res, make_error(500, g->error, "server_error", "internal_error"));
      return;
    }
    if (g->reason == StopReason::Cancelled) {
      send_error(res, make_error(503, "the request was cancelled (the server is shutting down)", "unavailable_error",
                                 "cancelled"));
      return;
    }
    json choice = {{"index", 0}, {"finish_reason", finish_reason(g->reason)}, {"logprobs", nullptr}};
    if (chat)
      choice["message"] = {{"role", "assistant"}, {"content", text}};
    else
      choice["text"] = text;
    const json body = {{"id", id},
                       {"object", chat ? "chat.completion" : "text_completion"},
                       {"created", int64_t(std::time(nullptr))},
                       {"model", model},
                       {"choices", json::array({choice})},
                       {"usage", usage_json(*g)}};
    send_json(res, 200, dump_json(body));
    return;
  }

  // Server-sent events: one "data: {chunk}\n\n" per piece of text, then the finish chunk, the usage chunk
  // (stream_options.include_usage) and "data: [DONE]". A failed write means the client is gone: cancel, which
  // frees the slot at the engine's next step.
  struct Stream {
    State* st;
    std::shared_ptr<GenRequest> g;
    std::string id, model;
    bool chat, include_usage, started = false, finished = false;
    Stream(State* s) : st(s) { st->active_streams++; }
    ~Stream() { st->active_streams--; }
  };
  auto s = std::make_shared<Stream>(&st);
  s->g = g;
  s->id = id;
  s->model = model;
  s->chat = chat;
  s->include_usage = cr.include_usage;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [s](size_t, httplib::DataSink& sink) {
        auto send = [&](const json& j) {
          const std::string line = "data: " + dump_json(j) + "\n\n";
          return sink.write(line.data(), line.size());
        };
        if (!s->started) {
          s->started = true;
          if (s->chat &&
              !send(chunk_json(*s->st, s->id, true, s->model, {{"role", "assistant"}, {"content", ""}}, nullptr))) {
            s->g->cancel();
            return false;
          }
        }
        GenRequest::Update u = s->g->wait(std::chrono::milliseconds(100));
        if (!u.text.empty()) {
          const json piece = s->chat ? json{{"content", u.text}} : json(u.text);
          if (!send(chunk_json(*s->st, s->id, s->chat, s->model, piece, nullptr))) {
            s->g->cancel();
            return false;
          }
        }
        if (!u.done) return true;
        GenRequest& g = *s->g;
        bool ok = true;
        if (!g.error.empty() || g.reason == StopReason::Cancelled) {
          const ApiError e = g.error.empty()
                                 ? make_error(503, "the request was cancelled", "unavailable_error", "cancelled")
                                 : make_error(500, g.error, "server_error", "internal_error");
          const std::string line = "data: " + error_json(e) + "\n\n";
          ok = sink.write(line.data(), line.size());
        } else {
          ok = send(chunk_json(*s->st, s->id, s->chat, s->model, s->chat ? json::object() : json(""),
                               finish_reason(g.reason)));
          if (ok && s->include_usage) {
            json j = chunk_json(*s->st, s->id, s->chat, s->model, json::object(), nullptr);
            j["choices"] = json::array();
            j["usage"] = usage_json(g);
            ok = send(j);
          }
        }
        static const char kDone[] = "data: [DONE]\n\n";
        if (ok) ok = sink.write(kDone, sizeof kDone - 1);
        log_done(s->id, g, ok ? "done (stream)" : "done (stream; client gone before the end)");
        s->finished = true;
        if (ok) sink.done();
        return ok;
      },
      [s](bool success) {
        if (!success && !s->finished && !s->g->cancelled())
          logf("%s client disconnected; cancelling", s->id.c_str());
        s->g->cancel();  // no-op when finished
      });
}

std::string metrics_text(const State& st) {
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help, double value, const char* labels = "") {
    out += strfmt("# HELP %s %s\n# TYPE %s %s\n%s%s %.10g\n", name, help, name, type, name, labels, value);
  };
  metric("hipserve_ready", "gauge", "1 when the model is loaded and requests are served", st.phase == Phase::Ready);
  metric("hipserve_http_requests_total", "counter", "HTTP requests received", double(st.http_requests.load()));
  const BatchEngine* engine = st.engine_for_metrics.load();
  if (!engine) return out;
  const EngineStats s = engine->stats();
  metric("hipserve_prompt_tokens_total", "counter", "Prompt tokens processed", double(s.prompt_tokens));
  metric("hipserve_generation_tokens_total", "counter", "Tokens generated", double(s.generated_tokens));
  metric("hipserve_prompt_seconds_total", "counter", "Engine time in prefill forward passes", s.prompt_seconds);
  metric("hipserve_generation_seconds_total", "counter", "Engine time in batched decode forward passes",
         s.decode_seconds);
  metric("hipserve_prompt_tokens_per_second", "gauge", "Prefill throughput (prompt tokens / prefill time)",
         s.prompt_seconds > 0 ? s.prompt_tokens / s.prompt_seconds : 0.0);
  metric("hipserve_generation_tokens_per_second", "gauge",
         "Aggregate decode throughput (decode rows / batched decode time)",
         s.decode_seconds > 0 ? s.decode_rows / s.decode_seconds : 0.0);
  metric("hipserve_decode_steps_total", "counter", "Batched decode forward passes", double(s.decode_steps));
  metric("hipserve_decode_batch_size_mean", "gauge", "Mean sequences per decode forward pass",
         s.decode_steps > 0 ? double(s.decode_rows) / s.decode_steps : 0.0);
  metric("hipserve_requests_running", "gauge", "Requests holding a slot", s.running);
  metric("hipserve_requests_queued", "gauge", "Requests waiting for a slot or KV pages", s.queued);
  out += "# HELP hipserve_requests_total Requests ended, by outcome\n# TYPE hipserve_requests_total counter\n";
  out += strfmt("hipserve_requests_total{outcome=\"finished\"} %lld\n", (long long)s.requests_finished);
  out += strfmt("hipserve_requests_total{outcome=\"cancelled\"} %lld\n", (long long)s.requests_cancelled);
  out += strfmt("hipserve_requests_total{outcome=\"failed\"} %lld\n", (long long)s.requests_failed);
  // On the GPU a "page" is one slot's whole context (the memory unit of its SlotBackend).
  metric("hipserve_kv_cache_pages_used", "gauge", "KV cache pages held by sequences", s.kv_pages_used);
  metric("hipserve_kv_cache_pages_total", "gauge", "KV cache pages in the pool", s.kv_pages_total);
  metric("hipserve_kv_cache_page_tokens", "gauge", "Token positions per KV page", s.kv_page_size);
  metric("hipserve_decode_bit_exact_rows", "gauge",
         "Decode batches up to this many sequences give each its lone-run bits (a property of the backend's kernels)",
         s.bit_exact_decode_rows);
  metric("hipserve_kv_cache_usage_ratio", "gauge", "Fraction of the KV pool in use",
         s.kv_pages_total ? double(s.kv_pages_used) / s.kv_pages_total : 0.0);
  return out;
}

void setup_routes(httplib::Server& svr, State& st) {
  svr.set_pre_routing_handler([&st](const httplib::Request&, httplib::Response&) {
    st.http_requests++;
    return httplib::Server::HandlerResponse::Unhandled;
  });
  svr.Get("/health", [&st](const httplib::Request&, httplib::Response& res) {
    if (require_ready(st, res)) send_json(res, 200, R"({"status":"ok"})");
  });
  svr.Get("/metrics", [&st](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_text(st), "text/plain; version=0.0.4");
  });
  svr.Get("/v1/models", [&st](const httplib::Request& req, httplib::Response& res) {
    if (!check_auth(st, req, res) || !require_ready(st, res)) return;
    const json model = {{"id", st.loaded.model_name},
                        {"object", "model"},
                        {"created", int64_t(st.created)},
                        {"owned_by", "hipserve"},
                        {"meta",
                         {{"n_ctx", st.engine->options().n_ctx},
                          {"n_slots", st.engine->options().n_slots},
                          {"n_vocab", st.loaded.model->config().n_vocab}}}};
    send_json(res, 200, dump_json(json{{"object", "list"}, {"data", json::array({model})}}));
  });
  svr.Post("/v1/chat/completions", [&st](const httplib::Request& req, httplib::Response& res) {
    handle_completion(st, req, res, true);
  });
  svr.Post("/v1/completions", [&st](const httplib::Request& req, httplib::Response& res) {
    handle_completion(st, req, res, false);
  });
  // llama.cpp's shapes: {"content": text, "add_special": false, "parse_special": true, "with_pieces": false}
  // -> {"tokens": [ids]} (or [{"id", "piece"}]); {"tokens": [ids]} -> {"content": text}.
  svr.Post("/tokenize", [&st](const httplib::Request& req, httplib::Response& res) {
    if (!check_auth(st, req, res) || !require_ready(st, res)) return;
    try {
      const json j = parse_object_body(req.body, {"content", "add_special", "parse_special", "with_pieces"});
      if (!j.contains("content") || !j["content"].is_string())
        throw ApiError{400, "'content' is required and must be a string", "invalid_request_error", "invalid_type",
                       "content"};
      auto flag = [&](const char* k, bool def) {
        if (!j.contains(k) || j[k].is_null()) return def;
        if (!j[k].is_boolean())
          throw ApiError{400, std::string("'") + k + "' must be a boolean", "invalid_request_error", "invalid_type", k};
        return j[k].get<bool>();
      };
      const Tokenizer& tok = st.loaded.model->tokenizer();
      const std::vector<int32_t> ids =
          tok.encode(j["content"].get<std::string>(), flag("add_special", false), flag("parse_special", true));
      json tokens = json::array();
      const bool pieces = flag("with_pieces", false);
      for (int32_t id : ids)
        tokens.push_back(pieces ? json{{"id", id}, {"piece", tok.token_to_bytes(id)}} : json(id));
      send_json(res, 200, dump_json(json{{"tokens", tokens}}));
    } catch (const ApiError& e) {
      send_error(res, e);
    }
  });
  svr.Post("/detokenize", [&st](const httplib::Request& req, httplib::Response& res) {
    if (!check_auth(st, req, res) || !require_ready(st, res)) return;
    try {
      const json j = parse_object_body(req.body, {"tokens"});
      if (!j.contains("tokens") || !j["tokens"].is_array())
        throw ApiError{400, "'tokens' is required and must be an array of token ids", "invalid_request_error",
                       "invalid_type", "tokens"};
      const int32_t n_vocab = st.loaded.model->tokenizer().n_vocab();
      std::vector<int32_t> ids;
      for (const json& t : j["tokens"]) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= n_vocab)
          throw ApiError{400, strfmt("'tokens' must hold token ids in [0, %d)", n_vocab), "invalid_request_error",
                         "invalid_value", "tokens"};
        ids.push_back(int32_t(t.get<int64_t>()));
      }
      send_json(res, 200, dump_json(json{{"content", st.loaded.model->tokenizer().decode(ids)}}));
    } catch (const ApiError& e) {
      send_error(res, e);
    }
  });
  // Errors httplib makes itself (no route, bad HTTP, payload too large) get OpenAI's shape too.
  svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req,
                                                                 httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    ApiError e = make_error(res.status, strfmt("HTTP %d", res.status), "invalid_request_error", "");
    if (res.status == 404) {
      e.message = "unknown route: " + req.method + " " + req.path;
      e.code = "not_found";
    } else if (res.status == 413) {
      e.message = "the request body is too large";
      e.code = "payload_too_large";
    }
    res.set_content(error_json(e), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    logf("internal error: %s", what.c_str());
    send_error(res, make_error(500, "internal error: " + what, "server_error", "internal_error"));
  });
}

}  // namespace

int run_server(const ServerOptions& options, const std::function<LoadedForServe()>& load) {
  // SIGINT/SIGTERM are taken by sigwait() below, never by a handler: block them here, before any thread starts,
  // so every thread inherits the mask. SIGPIPE (writes to a vanished client) must not kill the process.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  State st;
  st.opt = options;
  httplib::Server svr;
  const int n_http = std::max(4, options.http_threads);
  svr.new_task_queue = [n_http] { return new httplib::ThreadPool(size_t(n_http)); };
  svr.set_keep_alive_max_count(1000);
  svr.set_keep_alive_timeout(5);
  svr.set_read_timeout(10);
  svr.set_write_timeout(10);
  svr.set_payload_max_length(size_t(16) << 20);
  setup_routes(svr, st);

  int port = options.port;
  if (port == 0) {
    port = svr.bind_to_any_port(options.host);
    if (port < 0) port = 0;
  } else if (!svr.bind_to_port(options.host, port)) {
    port = 0;
  }
  if (port == 0) {
    logf("error: cannot listen on %s:%d (in use, or not a local address?)", options.host.c_str(), options.port);
    return 1;
  }
  logf("server is listening on http://%s:%d (loading the model; /health answers 503 until it is ready)",
       options.host.c_str(), port);
  std::atomic<bool> listener_done{false};
  std::thread listener([&svr, &listener_done] {
    svr.listen_after_bind();
    listener_done = true;
  });

  std::atomic<bool> load_failed{false};
  std::thread loader([&] {
    try {
      st.loaded = load();
      st.tmpl = chat_template_for(st.loaded.model->tokenizer().vocab(),
                                  options.chat_template.empty()
                                      ? std::nullopt
                                      : chat_template_from_name(options.chat_template));
      EngineOptions eo_in = options.engine;
      eo_in.n_ctx = st.loaded.backend->n_ctx();
      st.engine = std::make_unique<BatchEngine>(*st.loaded.backend, st.loaded.model->tokenizer(), eo_in);
      st.engine->start();
      st.engine_for_metrics = st.engine.get();
      const EngineOptions& eo = st.engine->options();
      logf("model '%s' ready on %s: %d slots, context %d tokens per sequence, KV memory %d units x %d tokens "
           "(%.1f MiB reserved), prefill chunk %d, chat template %s; decode batches of <= %d sequences are "
           "bit-identical to lone runs",
           st.loaded.model_name.c_str(), st.loaded.backend->name().c_str(), eo.n_slots, eo.n_ctx, eo.n_pages,
           eo.page_size, double(st.loaded.backend->kv_bytes()) / double(1 << 20), eo.prefill_chunk,
           chat_template_name(st.tmpl.kind), st.engine->stats().bit_exact_decode_rows);
      Phase expected = Phase::Loading;
      st.phase.compare_exchange_strong(expected, Phase::Ready);
    } catch (const std::exception& e) {
      logf("error: loading failed: %s", e.what());
      load_failed = true;
      st.phase = Phase::Failed;
      kill(getpid(), SIGTERM);  // wakes the sigwait below
    }
  });

  int sig = 0;
  sigwait(&sigs, &sig);
  if (!load_failed) logf("received %s: shutting down (no new requests; running ones get %d s to finish)",
                         sig == SIGINT ? "SIGINT" : "SIGTERM", options.shutdown_grace_s);
  if (!load_failed) st.phase = Phase::ShuttingDown;
  loader.join();
  if (st.engine) st.engine->stop(std::chrono::seconds(options.shutdown_grace_s));
  // Let the SSE writers send their last chunks before the listener goes (httplib cuts streams on stop()).
  for (int i = 0; i < 200 && st.active_streams.load() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  // stop() only acts on a running listener: if the load failed at once, the listener may not be in its accept
  // loop yet, and stopping before it gets there would leave it running forever.
  while (!svr.is_running() && !listener_done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  svr.stop();
  listener.join();
  if (st.engine) {
    const EngineStats s = st.engine->stats();
    logf("stopped: %lld requests finished, %lld cancelled, %lld failed; %lld prompt and %lld generated tokens",
         (long long)s.requests_finished, (long long)s.requests_cancelled, (long long)s.requests_failed,
         (long long)s.prompt_tokens, (long long)s.generated_tokens);
  }
  st.engine_for_metrics = nullptr;
  st.engine.reset();
  return load_failed ? 1 : 0;
}

}  // namespace hs::server
