// `hipserve inspect FILE`: a GGUF file's metadata and tensor table.
#include <cstdio>

#include "apps/cli.h"
#include "apps/commands.h"
#include "backends/ggml_type.h"
#include "model/gguf.h"
#include "util/common.h"

namespace hs::cli {

int cmd_inspect(const std::vector<std::string>& args) {
  bool help = false, show_meta = true, show_tensors = true;
  int max_items = 8;
  std::string model;
  OptionTable t;
  t.add({"-m", "--model", "FILE", "the GGUF file (or give it as the positional argument)",
         [&](const std::string& v) { model = v; }});
  t.add({"", "--no-tensors", "", "print only the metadata", [&](const std::string&) { show_tensors = false; }});
  t.add({"", "--no-metadata", "", "print only the tensor table", [&](const std::string&) { show_meta = false; }});
  t.add({"", "--max-array", "N", "array items shown per metadata value (default: 8)",
         [&](const std::string& v) { max_items = parse_int("--max-array", v, 0, 1 << 30); }});
  t.add({"-h", "--help", "", "show this help", [&](const std::string&) { help = true; }});
  const std::vector<std::string> pos = t.parse(args);
  if (help) {
    std::printf("usage: hipserve inspect FILE [options]\n\n%s", t.help().c_str());
    return 0;
  }
  HS_CHECK(pos.size() <= 1, "inspect takes one file, got %zu arguments", pos.size());
  if (!pos.empty()) model = pos[0];
  if (model.empty()) model = default_model_path();

  const auto f = gguf::File::open(model);
  std::printf("file: %s\nGGUF version %u, %zu bytes, alignment %zu, data at offset %zu\n", model.c_str(), f->version(),
              f->file_size(), f->alignment(), f->data_offset());
  std::printf("%zu metadata keys, %zu tensors\n", f->metadata().size(), f->tensors().size());
  if (show_meta) {
    std::printf("\nmetadata:\n");
    for (const auto& [key, value] : f->metadata())
      std::printf("  %-45s %-8s %s\n", key.c_str(),
                  value.type() == gguf::ValueType::ARRAY
                      ? (std::string(gguf::value_type_name(value.array_type())) + "[]").c_str()
                      : gguf::value_type_name(value.type()),
                  value.to_display_string(size_t(max_items)).c_str());
  }
  if (show_tensors) {
    std::printf("\ntensors:\n  %-4s %-32s %-6s %-22s %12s %12s\n", "#", "name", "type", "shape", "bytes", "offset");
    size_t total = 0;
    int64_t params = 0;
    for (size_t i = 0; i < f->tensors().size(); ++i) {
      const auto& ti = f->tensors()[i];
      std::string shape = "[";
      for (size_t d = 0; d < ti.dims.size(); ++d) shape += (d ? ", " : "") + std::to_string(ti.dims[d]);
      shape += "]";
      std::printf("  %-4zu %-32s %-6s %-22s %12zu %12llu\n", i, ti.name.c_str(), ggml_type_name(ti.type_id).c_str(),
                  shape.c_str(), ti.n_bytes, (unsigned long long)ti.offset);
      total += ti.n_bytes;
      params += ti.n_elements;
    }
    std::printf("\n%zu tensors, %.2f M parameters, %.2f MiB of tensor data\n", f->tensors().size(), params / 1e6,
                double(total) / (1 << 20));
  }
  return 0;
}

}  // namespace hs::cli
