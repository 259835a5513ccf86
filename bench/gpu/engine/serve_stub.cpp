// The GPU machine's standalone build has no cpp-httplib: `hipserve serve` there says so instead.
#include <string>
#include <vector>

#include "apps/commands.h"
#include "util/common.h"

namespace hs::cli {
int cmd_serve(const std::vector<std::string>&) { fail("this build has no HTTP server (cpp-httplib missing)"); }
}  // namespace hs::cli
