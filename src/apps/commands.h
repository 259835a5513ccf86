// The hipserve subcommands. Each takes the arguments after its name and returns the process exit code.
#pragma once

#include <string>
#include <vector>

namespace hs::cli {

int cmd_run(const std::vector<std::string>& args, bool interactive_chat);
int cmd_inspect(const std::vector<std::string>& args);
int cmd_bench(const std::vector<std::string>& args);
int cmd_eval(const std::vector<std::string>& args);
int cmd_serve(const std::vector<std::string>& args);
int cmd_shrink(const std::vector<std::string>& args);

}  // namespace hs::cli
