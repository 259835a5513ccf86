#include "model/gguf_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "util/common.h"

namespace hs::gguf {

namespace {

template <typename T>
void append_pod(std::vector<uint8_t>* out, T v) {
  const size_t at = out->size();
  out->resize(at + sizeof(T));
  std::memcpy(out->data() + at, &v, sizeof(T));
}

void append_string(std::vector<uint8_t>* out, const std::string& s) {
  append_pod<uint64_t>(out, s.size());
  out->insert(out->end(), s.begin(), s.end());
}

size_t align_up(size_t n, size_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

bool is_valid_alignment(uint64_t a) {
  return a != 0 && a <= (uint64_t(1) << 31) && (a & (a - 1)) == 0;
}

}  // namespace

void Writer::set_version(uint32_t version) {
  HS_CHECK(version == 2 || version == 3, "GGUF writer: unsupported version %u (supported: 2 and 3)", version);
  version_ = version;
}

void Writer::set_alignment(size_t alignment) {
  HS_CHECK(is_valid_alignment(alignment), "GGUF writer: alignment %zu is not a power of two up to 2^31",
           alignment);
  alignment_ = alignment;
  for (auto& [key, value] : metadata_) {
    if (key == "general.alignment") {
      value = Value::make_u32(uint32_t(alignment));
      return;
    }
  }
  metadata_.emplace_back("general.alignment", Value::make_u32(uint32_t(alignment)));
}

void Writer::add_value(const std::string& key, Value value) {
  for (const auto& kv : metadata_)
    HS_CHECK(kv.first != key, "GGUF writer: duplicate metadata key '%s'", printable_name(key).c_str());
  if (key == "general.alignment") {
    HS_CHECK(value.type() == ValueType::U32, "GGUF writer: general.alignment must be a u32, got %s",
             value.type_description().c_str());
    const uint64_t a = uint64_t(*value.as_int());
    HS_CHECK(is_valid_alignment(a), "GGUF writer: general.alignment %llu is not a power of two",
             (unsigned long long)a);
    alignment_ = size_t(a);
  }
  metadata_.emplace_back(key, std::move(value));
}

void Writer::add_u8(const std::string& key, uint8_t value) {
  add_value(key, Value::make_u8(value));
}
void Writer::add_i8(const std::string& key, int8_t value) {
  add_value(key, Value::make_i8(value));
}
void Writer::add_u16(const std::string& key, uint16_t value) {
  add_value(key, Value::make_u16(value));
}
void Writer::add_i16(const std::string& key, int16_t value) {
  add_value(key, Value::make_i16(value));
}
void Writer::add_u32(const std::string& key, uint32_t value) {
  add_value(key, Value::make_u32(value));
}
void Writer::add_i32(const std::string& key, int32_t value) {
  add_value(key, Value::make_i32(value));
}
void Writer::add_u64(const std::string& key, uint64_t value) {
  add_value(key, Value::make_u64(value));
}
void Writer::add_i64(const std::string& key, int64_t value) {
  add_value(key, Value::make_i64(value));
}
void Writer::add_f32(const std::string& key, float value) {
  add_value(key, Value::make_f32(value));
}
void Writer::add_f64(const std::string& key, double value) {
  add_value(key, Value::make_f64(value));
}
void Writer::add_bool(const std::string& key, bool value) {
  add_value(key, Value::make_bool(value));
}
void Writer::add_string(const std::string& key, const std::string& value) {
  add_value(key, Value::make_string(value));
}
void Writer::add_string_array(const std::string& key, const std::vector<std::string>& values) {
  add_value(key, Value::make_string_array(values));
}
void Writer::add_f32_array(const std::string& key, const std::vector<float>& values) {
  add_value(key, Value::make_f32_array(values));
}
void Writer::add_i32_array(const std::string& key, const std::vector<int32_t>& values) {
  add_value(key, Value::make_i32_array(values));
}

void Writer::add_tensor(const std::string& name, const std::vector<int64_t>& dims, GgmlType type,
                        const void* data, size_t n_bytes) {
  const std::string shown = printable_name(name);
  for (const PendingTensor& t : tensors_)
    HS_CHECK(t.name != name, "GGUF writer: duplicate tensor name '%s'", shown.c_str());
  HS_CHECK(dims.size() >= 1 && dims.size() <= 4,
           "GGUF writer: tensor '%s' has %zu dimensions (supported: 1 to 4)", shown.c_str(), dims.size());
  const GgmlTypeTraits* traits = ggml_type_traits(uint32_t(type));
  HS_CHECK(traits != nullptr, "GGUF writer: tensor '%s' has unknown type id %u", shown.c_str(),
           uint32_t(type));
  int64_t n_elements = 1;
  for (int64_t d : dims) {
    HS_CHECK(d >= 0, "GGUF writer: tensor '%s' has a negative dimension %lld", shown.c_str(), (long long)d);
    HS_CHECK(!__builtin_mul_overflow(n_elements, d, &n_elements),
             "GGUF writer: tensor '%s' has too many elements", shown.c_str());
  }
  HS_CHECK(dims[0] % traits->block_size == 0,
           "GGUF writer: tensor '%s' of type %s has dims[0] = %lld, not a multiple of the block size %lld",
           shown.c_str(), traits->name, (long long)dims[0], (long long)traits->block_size);
  size_t expected_bytes = 0;
  HS_CHECK(ggml_row_bytes(type, n_elements, &expected_bytes), "GGUF writer: tensor '%s' is too large",
           shown.c_str());
  HS_CHECK(n_bytes == expected_bytes,
           "GGUF writer: tensor '%s' has %zu bytes of data, its shape and type need %zu", shown.c_str(),
           n_bytes, expected_bytes);
  HS_CHECK(data != nullptr || n_bytes == 0, "GGUF writer: tensor '%s' has no data", shown.c_str());
  PendingTensor t{name, dims, type, {}};
  if (n_bytes > 0)
    t.data.assign(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + n_bytes);
  tensors_.push_back(std::move(t));
}

std::vector<uint8_t> Writer::encode_header(std::vector<uint64_t>* data_offsets) const {
  std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
  append_pod<uint32_t>(&out, version_);
  append_pod<uint64_t>(&out, tensors_.size());
  append_pod<uint64_t>(&out, metadata_.size());
  for (const auto& [key, value] : metadata_) {
    append_string(&out, key);
    append_pod<uint32_t>(&out, uint32_t(value.type()));
    value.append_encoded(&out);
  }
  data_offsets->clear();
  uint64_t offset = 0;
  for (const PendingTensor& t : tensors_) {
    append_string(&out, t.name);
    append_pod<uint32_t>(&out, uint32_t(t.dims.size()));
    for (int64_t d : t.dims) append_pod<uint64_t>(&out, uint64_t(d));
    append_pod<uint32_t>(&out, uint32_t(t.type));
    append_pod<uint64_t>(&out, offset);
    data_offsets->push_back(offset);
    offset = align_up(offset + t.data.size(), alignment_);
  }
  out.resize(align_up(out.size(), alignment_), 0);
  return out;
}

// No padding follows the last tensor: a file truncated anywhere is then detectably short.
std::vector<uint8_t> Writer::to_bytes() const {
  std::vector<uint64_t> data_offsets;
  std::vector<uint8_t> out = encode_header(&data_offsets);
  const size_t data_start = out.size();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    out.resize(data_start + data_offsets[i], 0);
    out.insert(out.end(), tensors_[i].data.begin(), tensors_[i].data.end());
  }
  return out;
}

void Writer::write(const std::string& path) const {
  std::vector<uint64_t> data_offsets;
  const std::vector<uint8_t> header = encode_header(&data_offsets);
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) fail(strfmt("cannot create '%s': %s", path.c_str(), std::strerror(errno)));
  // fwrite with a null pointer is undefined even for 0 bytes (an empty tensor's vector has no buffer).
  auto put = [f](const uint8_t* p, size_t n) { return n == 0 || std::fwrite(p, 1, n, f) == n; };
  bool ok = put(header.data(), header.size());
  uint64_t written = 0;  // bytes of the data section so far
  const std::vector<uint8_t> zeros(alignment_, 0);
  for (size_t i = 0; ok && i < tensors_.size(); ++i) {
    ok = put(zeros.data(), size_t(data_offsets[i] - written)) &&
         put(tensors_[i].data.data(), tensors_[i].data.size());
    written = data_offsets[i] + tensors_[i].data.size();
  }
  const int write_errno = errno;
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed)
    fail(strfmt("cannot write '%s': %s", path.c_str(), std::strerror(ok ? errno : write_errno)));
}

}  // namespace hs::gguf
