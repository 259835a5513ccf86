// libFuzzer target for the GGUF reader (see fuzz/README.md).
//
// Any input must either parse or throw hs::Error; ASan/UBSan report anything else. A file that parses is then
// walked completely (every value through every accessor, every tensor's first and last data byte) and copied
// through the Writer: the copy must parse again and hold the same metadata and tensors, which checks that
// the reader accepts nothing the writer cannot reproduce.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "model/gguf.h"
#include "model/gguf_writer.h"
#include "util/common.h"

namespace {

using hs::gguf::File;
using hs::gguf::Value;
using hs::gguf::ValueType;

[[noreturn]] void fuzz_fail(const char* what) {
  std::fprintf(stderr, "gguf_fuzz: %s\n", what);
  std::abort();
}

size_t touch_value(const Value& v) {
  size_t sink = 0;
  sink += v.to_display_string().size();
  sink += v.to_display_string(0).size();
  sink += v.type_description().size();
  sink += v.as_int().value_or(0) != 0;
  sink += v.as_float().value_or(0) != 0;
  sink += v.as_bool().value_or(false);
  if (const std::string* s = v.as_string()) sink += s->size();
  if (v.type() != ValueType::ARRAY && v.array_size() != 0) fuzz_fail("scalar with array elements");
  if (const std::vector<std::string>* strings = v.as_string_array()) {
    if (strings->size() != v.array_size()) fuzz_fail("string array size mismatch");
    for (const std::string& s : *strings) sink += s.size();
  }
  if (auto f32 = v.as_f32_array()) {
    if (f32->size() != v.array_size()) fuzz_fail("f32 array size mismatch");
    for (float x : *f32) sink += x != 0;
  }
  if (auto i32 = v.as_i32_array()) {
    if (i32->size() != v.array_size()) fuzz_fail("i32 array size mismatch");
    for (int32_t x : *i32) sink += x != 0;
  }
  for (size_t i = 0; i <= v.array_size(); ++i) {  // one past the end must answer nullopt
    sink += v.array_int(i).value_or(0) != 0;
    sink += v.array_float(i).value_or(0) != 0;
  }
  if (v.array_int(v.array_size()) || v.array_float(v.array_size())) fuzz_fail("array access past the end");
  if (const std::vector<Value>* nested = v.as_nested_array()) {
    if (nested->size() != v.array_size()) fuzz_fail("nested array size mismatch");
    for (const Value& e : *nested) sink += touch_value(e);
  }
  return sink;
}

size_t touch_file(const File& f) {
  size_t sink = f.version() + f.alignment() + f.data_offset() + f.file_size();
  for (const auto& [key, value] : f.metadata()) {
    if (f.find(key) != &value) fuzz_fail("find() does not return the listed value");
    sink += touch_value(value);
    // The File getters throw hs::Error for the wrong type; anything else escapes and aborts.
    try {
      sink += size_t(f.get_int(key, 0));
    } catch (const hs::Error&) {
    }
    try {
      sink += size_t(f.get_float(key, 0) != 0);
    } catch (const hs::Error&) {
    }
    try {
      sink += f.get_bool(key, false);
    } catch (const hs::Error&) {
    }
    try {
      sink += f.get_string(key, "").size();
    } catch (const hs::Error&) {
    }
    try {
      sink += f.get_string_array(key).size();
    } catch (const hs::Error&) {
    }
    try {
      sink += f.get_f32_array(key).size();
    } catch (const hs::Error&) {
    }
    try {
      sink += f.get_i32_array(key).size();
    } catch (const hs::Error&) {
    }
  }
  for (const hs::gguf::TensorInfo& t : f.tensors()) {
    if (f.find_tensor(t.name) != &t) fuzz_fail("find_tensor() does not return the listed tensor");
    if (t.n_bytes > 0) sink += t.data[0] + t.data[t.n_bytes - 1];
    if (t.offset % f.alignment() != 0) fuzz_fail("unaligned tensor accepted");
  }
  return sink;
}

std::vector<uint8_t> encoded(const Value& v) {
  std::vector<uint8_t> out;
  v.append_encoded(&out);
  return out;
}

// Copy through the Writer and parse again; skipped when the copy would be large (a 2^31 alignment pads the
// data section to 2 GiB, and overlapping tensors can be listed many times over).
void check_copy(const File& f) {
  size_t data_bytes = 0;
  for (const hs::gguf::TensorInfo& t : f.tensors()) data_bytes += t.n_bytes + f.alignment();
  if (f.alignment() > 4096 || data_bytes > (size_t(1) << 20)) return;
  hs::gguf::Writer w;
  w.set_version(f.version());
  std::unique_ptr<File> copy;
  try {
    for (const auto& [key, value] : f.metadata()) w.add_value(key, value);
    for (const hs::gguf::TensorInfo& t : f.tensors()) w.add_tensor(t.name, t.dims, t.type, t.data, t.n_bytes);
    copy = File::parse(w.to_bytes(), "copy.gguf");
  } catch (const hs::Error& e) {
    std::fprintf(stderr, "gguf_fuzz: the copy of a valid file fails: %s\n", e.what());
    std::abort();
  }
  if (copy->metadata().size() != f.metadata().size() || copy->tensors().size() != f.tensors().size() ||
      copy->alignment() != f.alignment() || copy->version() != f.version())
    fuzz_fail("copy differs in counts, alignment or version");
  for (size_t i = 0; i < f.metadata().size(); ++i) {
    const auto& [key, value] = f.metadata()[i];
    const auto& [copy_key, copy_value] = copy->metadata()[i];
    if (key != copy_key || value.type() != copy_value.type() || encoded(value) != encoded(copy_value))
      fuzz_fail("copy differs in metadata");
  }
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const hs::gguf::TensorInfo& a = f.tensors()[i];
    const hs::gguf::TensorInfo& b = copy->tensors()[i];
    if (a.name != b.name || a.dims != b.dims || a.type_id != b.type_id || a.n_bytes != b.n_bytes ||
        (a.n_bytes > 0 && std::memcmp(a.data, b.data, a.n_bytes) != 0))
      fuzz_fail("copy differs in tensors");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<File> file;
  try {
    file = File::parse(std::vector<uint8_t>(data, data + size), "fuzz.gguf");
  } catch (const hs::Error&) {
    return 0;
  }
  volatile size_t sink = touch_file(*file);
  (void)sink;
  check_copy(*file);
  return 0;
}
