// `hipserve run` (one prompt) and `hipserve chat` (interactive, keeps the conversation's KV cache).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "apps/cli.h"
#include "apps/commands.h"
#include "apps/gpu_commands.h"
#include "apps/loader.h"
#include "engine/session.h"
#include "model/chat_template.h"
#include "util/common.h"

namespace hs::cli {

namespace {

std::string read_prompt_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  HS_CHECK(in.good(), "cannot open prompt file '%s'", path.c_str());
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  HS_CHECK(!in.bad(), "cannot read prompt file '%s'", path.c_str());
  return text;
}

void print_timings(const GenerationStats& s, double load_ms, double total_ms) {
  auto rate = [](double ms, int n) { return ms > 0 ? 1000.0 * n / ms : 0.0; };
  std::fprintf(stderr, "\n");
  std::fprintf(stderr, "hipserve:        load time = %10.2f ms\n", load_ms);
  std::fprintf(stderr,
               "hipserve: prompt eval time = %10.2f ms / %5d tokens (%8.2f ms per token, %8.2f tokens per second)%s\n",
               s.prompt_ms, s.n_prompt_tokens, s.n_prompt_tokens ? s.prompt_ms / s.n_prompt_tokens : 0.0,
               rate(s.prompt_ms, s.n_prompt_tokens),
               s.n_reused_tokens ? strfmt(" [%d cached]", s.n_reused_tokens).c_str() : "");
  std::fprintf(stderr, "hipserve:        eval time = %10.2f ms / %5d runs   (%8.2f ms per token, %8.2f tokens per second)\n",
               s.decode_ms, s.n_decoded, s.n_decoded ? s.decode_ms / s.n_decoded : 0.0, rate(s.decode_ms, s.n_decoded));
  std::fprintf(stderr, "hipserve:    sampling time = %10.2f ms / %5d runs   (%8.2f ms per token, %8.2f tokens per second)\n",
               s.sample_ms, s.n_generated, s.n_generated ? s.sample_ms / s.n_generated : 0.0,
               rate(s.sample_ms, s.n_generated));
  std::fprintf(stderr, "hipserve:       total time = %10.2f ms / %5d tokens\n", total_ms,
               s.n_prompt_tokens + s.n_generated);
}

}  // namespace

int cmd_run(const std::vector<std::string>& args, bool interactive_chat) {
  const auto t_start = std::chrono::steady_clock::now();
  CommonArgs common;
  GenerateOptions gen;
  std::string prompt, prompt_file, system_prompt, template_name;
  bool have_prompt = false, chat = interactive_chat, display_prompt = true, help = false;
  int n_predict = interactive_chat ? -1 : 128;

  OptionTable t;
  add_common_options(t, common);
  if (!interactive_chat) {
    t.add({"-p", "--prompt", "TEXT", "the prompt", [&](const std::string& v) { prompt = v, have_prompt = true; }});
    t.add({"-f", "--file", "FILE", "read the prompt from FILE (UTF-8)", [&](const std::string& v) { prompt_file = v; }});
    t.add({"", "--chat", "", "wrap the prompt in the model's chat template as a user message",
           [&](const std::string&) { chat = true; }});
    t.add({"", "--no-display-prompt", "", "do not echo the prompt before the generated text",
           [&](const std::string&) { display_prompt = false; }});
  }
  t.add({"-n", "--n-predict", "N",
         interactive_chat ? "max tokens per reply; -1 = until end of turn (default: -1)"
                          : "tokens to generate; -1 = until end of generation or full context (default: 128)",
         [&](const std::string& v) { n_predict = parse_int("--n-predict", v, -1, 1 << 30); }});
  t.add({"", "--system", "TEXT", "system message for chat (default: the template's own, if any)",
         [&](const std::string& v) { system_prompt = v; }});
  t.add({"", "--chat-template", "NAME", "override the GGUF's chat template: chatml, llama3, llama2",
         [&](const std::string& v) { template_name = v; }});
  t.add({"", "--stop", "TEXT", "stop when TEXT is generated (repeatable)",
         [&](const std::string& v) { gen.stop.push_back(v); }});
  t.add({"", "--ignore-eos", "", "keep generating past end-of-generation tokens",
         [&](const std::string&) { gen.ignore_eos = true; }});
  add_sampling_options(t, gen.sampling);
  t.add({"-h", "--help", "", "show this help", [&](const std::string&) { help = true; }});

  const std::vector<std::string> positional = t.parse(args);
  if (help) {
    std::printf("usage: hipserve %s [options]\n\n%s", interactive_chat ? "chat" : "run", t.help().c_str());
    return 0;
  }
  HS_CHECK(positional.empty(), "unexpected argument '%s' (see --help)", positional[0].c_str());
  if (!interactive_chat) {
    HS_CHECK(have_prompt || !prompt_file.empty(), "no prompt: give -p TEXT or -f FILE");
    HS_CHECK(!(have_prompt && !prompt_file.empty()), "give either -p or -f, not both");
    if (!prompt_file.empty()) prompt = read_prompt_file(prompt_file);
    HS_CHECK(is_valid_utf8(prompt), "the prompt%s is not valid UTF-8",
             prompt_file.empty() ? "" : (" file '" + prompt_file + "'").c_str());
  }
  std::optional<ChatTemplateKind> override_kind;
  if (!template_name.empty()) {
    override_kind = chat_template_from_name(template_name);
    HS_CHECK(override_kind.has_value(), "unknown chat template '%s' (known: chatml, llama3, llama2)",
             template_name.c_str());
  }
  gen.n_predict = n_predict;

  HS_CHECK(common.random_weights.empty(), "--random-weights has no tokenizer: use it with `hipserve bench`");
  const bool on_gpu = common.use_cuda();
  LoadedModel lm = load_model(common, false, on_gpu);
  const Tokenizer& tok = lm.model->tokenizer();
  std::unique_ptr<Sequence> seq = make_sequence(common, lm, on_gpu);
  Session session(*seq, tok);

  if (!interactive_chat) {
    std::string text = prompt;
    if (chat) {
      const ChatTemplate tmpl = chat_template_for(tok.vocab(), override_kind);
      std::vector<ChatMessage> msgs;
      if (!system_prompt.empty()) msgs.push_back({"system", system_prompt});
      msgs.push_back({"user", prompt});
      text = render_chat(tmpl, msgs, true);
    }
    const std::vector<int32_t> ids = tok.encode(text, /*add_special=*/true, /*parse_special=*/true);
    HS_CHECK(!ids.empty(), "the prompt is empty");
    HS_CHECK(int64_t(ids.size()) < lm.n_ctx,
             "the prompt is %zu tokens, which does not fit the context of %d tokens (raise -c or shorten it)",
             ids.size(), lm.n_ctx);
    if (display_prompt) {
      std::fwrite(prompt.data(), 1, prompt.size(), stdout);
      if (chat) std::fputc('\n', stdout);
      std::fflush(stdout);
    }
    const GenerationResult r = session.generate(ids, gen, [](const std::string& s) {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::fputc('\n', stdout);
    std::fflush(stdout);
    const double total = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_start).count();
    print_timings(r.stats, lm.load_ms, total);
    std::fprintf(stderr, "hipserve: device: %s\n", seq->backend_name().c_str());
    std::fprintf(stderr, "hipserve: stop reason: %s\n", stop_reason_name(r.reason));
    return 0;
  }

  // Interactive chat: every turn re-renders the whole conversation; the session reuses the cached prefix.
  const ChatTemplate tmpl = chat_template_for(tok.vocab(), override_kind);
  std::vector<ChatMessage> msgs;
  if (!system_prompt.empty()) msgs.push_back({"system", system_prompt});
  const bool tty = isatty(STDIN_FILENO);
  std::fprintf(stderr, "hipserve chat: template %s, context %d tokens. Type a message; /reset clears, /exit or Ctrl-D quits.\n",
               chat_template_name(tmpl.kind), lm.n_ctx);
  std::string line;
  for (;;) {
    if (tty) std::fputs("\n> ", stdout), std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      msgs.erase(msgs.begin() + (system_prompt.empty() ? 0 : 1), msgs.end());
      continue;
    }
    if (line.empty()) continue;
    if (!is_valid_utf8(line)) {
      std::fprintf(stderr, "hipserve chat: the message is not valid UTF-8; try again\n");
      continue;
    }
    msgs.push_back({"user", line});
    const std::vector<int32_t> ids = tok.encode(render_chat(tmpl, msgs, true), true, true);
    if (int64_t(ids.size()) >= lm.n_ctx) {
      std::fprintf(stderr, "hipserve chat: the conversation (%zu tokens) no longer fits the context of %d tokens; "
                   "use /reset or a larger -c\n", ids.size(), lm.n_ctx);
      msgs.pop_back();
      continue;
    }
    const GenerationResult r = session.generate(ids, gen, [](const std::string& s) {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::fputc('\n', stdout);
    msgs.push_back({"assistant", r.text});
    if (common.verbose) {
      const GenerationStats& s = r.stats;
      std::fprintf(stderr, "[prompt %d tokens (%d cached) %.1f tok/s, reply %d tokens %.1f tok/s]\n", s.n_prompt_tokens,
                   s.n_reused_tokens, s.prompt_ms > 0 ? 1000.0 * s.n_prompt_tokens / s.prompt_ms : 0.0,
                   s.n_generated, s.decode_ms > 0 ? 1000.0 * s.n_decoded / s.decode_ms : 0.0);
    }
  }
  return 0;
}

}  // namespace hs::cli
