// `hipserve shrink`: writes a reduced copy of a llama-family GGUF that keeps its first N layers (and every
// non-layer tensor, the tokenizer and the metadata, with <arch>.block_count set to N). Weights are copied
// byte for byte, so the reduced model computes exactly what the first N layers of the original compute.
// Use: carrying a real model to a machine where the full file does not fit (the GPU tests), small fixtures.
#include <cstdio>
#include <string>

#include "apps/cli.h"
#include "apps/commands.h"
#include "model/gguf.h"
#include "model/gguf_writer.h"
#include "util/common.h"

namespace hs::cli {

int cmd_shrink(const std::vector<std::string>& args) {
  std::string in, out;
  int layers = 0;
  bool help = false;
  OptionTable t;
  t.add({"-m", "--model", "FILE", "input GGUF file", [&](const std::string& v) { in = v; }});
  t.add({"-o", "--output", "FILE", "output GGUF file (must differ from the input)", [&](const std::string& v) { out = v; }});
  t.add({"", "--layers", "N", "layers to keep (the first N)",
         [&](const std::string& v) { layers = parse_int("--layers", v, 1, 1 << 20); }});
  t.add({"-h", "--help", "", "show this help", [&](const std::string&) { help = true; }});
  const std::vector<std::string> pos = t.parse(args);
  if (help) {
    std::printf("usage: hipserve shrink -m IN.gguf -o OUT.gguf --layers N\n\n%s", t.help().c_str());
    return 0;
  }
  HS_CHECK(pos.empty(), "unexpected argument '%s'", pos[0].c_str());
  HS_CHECK(!in.empty() && !out.empty() && layers > 0, "shrink needs -m IN, -o OUT and --layers N");
  HS_CHECK(in != out, "the output must not overwrite the input");

  const auto f = gguf::File::open(in);
  const std::string arch = f->get_string("general.architecture", "");
  HS_CHECK(!arch.empty(), "%s has no general.architecture", in.c_str());
  const std::string count_key = arch + ".block_count";
  const int64_t n_layer = f->get_int(count_key, 0);
  HS_CHECK(n_layer > 0, "%s has no %s", in.c_str(), count_key.c_str());
  HS_CHECK(layers <= n_layer, "--layers %d exceeds the model's %lld layers", layers, (long long)n_layer);

  gguf::Writer w;
  for (const auto& [key, value] : f->metadata()) {
    if (key == "general.alignment") continue;  // the writer sets its own
    if (key == count_key)
      w.add_u32(key, uint32_t(layers));
    else
      w.add_value(key, value);
  }
  size_t kept = 0, bytes = 0;
  for (const gguf::TensorInfo& ti : f->tensors()) {
    if (ti.name.rfind("blk.", 0) == 0) {
      const int il = std::atoi(ti.name.c_str() + 4);
      if (il >= layers) continue;
    }
    w.add_tensor(ti.name, ti.dims, ti.type, ti.data, ti.n_bytes);
    ++kept;
    bytes += ti.n_bytes;
  }
  w.write(out);
  std::fprintf(stderr, "hipserve: wrote %s: %d of %lld layers, %zu tensors, %.1f MiB of weights\n", out.c_str(), layers,
               (long long)n_layer, kept, double(bytes) / (1 << 20));
  return 0;
}

}  // namespace hs::cli
