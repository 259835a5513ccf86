// hipserve: the command-line entry point. `hipserve COMMAND [options]`.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "util/common.h"

namespace {

const char* kUsage =
    "usage: hipserve COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  run      generate text from a prompt (-p TEXT or -f FILE)\n"
    "  chat     interactive chat that keeps the conversation's KV cache\n"
    "  inspect  print a GGUF file's metadata and tensor table\n"
    "  bench    measure prefill and decode speed (llama-bench style)\n"
    "  eval     quality of the attention: perplexity, passkey retrieval, HiP mask recall\n"
    "  serve    OpenAI-compatible HTTP server with continuous batching\n"
    "  shrink   write a copy of a GGUF model that keeps only its first N layers\n"
    "\n"
    "`hipserve COMMAND --help` lists the options of a command.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 1 : 0;
  }
  const std::string cmd = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (cmd == "run") return hs::cli::cmd_run(args, false);
    if (cmd == "chat") return hs::cli::cmd_run(args, true);
    if (cmd == "inspect") return hs::cli::cmd_inspect(args);
    if (cmd == "bench") return hs::cli::cmd_bench(args);
    if (cmd == "eval") return hs::cli::cmd_eval(args);
    if (cmd == "serve") return hs::cli::cmd_serve(args);
    if (cmd == "shrink") return hs::cli::cmd_shrink(args);
    std::fprintf(stderr, "hipserve: error: unknown command '%s' (commands: run, chat, inspect, bench, eval, serve, shrink; see --help)\n",
                 cmd.c_str());
    return 1;
  } catch (const hs::Error& e) {
    std::fprintf(stderr, "hipserve %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "hipserve %s: error: out of memory\n", cmd.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hipserve %s: internal error: %s\n", cmd.c_str(), e.what());
    return 2;
  }
}
