// GGUF v3 (or v2) writer: builds files the reader accepts, for tests, fuzz seeds and tools that write reduced
// models. Everything is held in memory until to_bytes() / write().
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "backends/ggml_type.h"
#include "model/gguf.h"

namespace hs::gguf {

class Writer {
 public:
  void set_version(uint32_t version);  // 2 or 3 (default 3); the layout is the same for little-endian files
  // Power of two up to 2^31; stored as the u32 key general.alignment (replacing an earlier one). Default 32.
  void set_alignment(size_t alignment);
  size_t alignment() const { return alignment_; }

  // Keys must be unique (hs::Error otherwise). general.alignment may also be given with add_u32.
  void add_u8(const std::string& key, uint8_t value);
  void add_i8(const std::string& key, int8_t value);
  void add_u16(const std::string& key, uint16_t value);
  void add_i16(const std::string& key, int16_t value);
  void add_u32(const std::string& key, uint32_t value);
  void add_i32(const std::string& key, int32_t value);
  void add_u64(const std::string& key, uint64_t value);
  void add_i64(const std::string& key, int64_t value);
  void add_f32(const std::string& key, float value);
  void add_f64(const std::string& key, double value);
  void add_bool(const std::string& key, bool value);
  void add_string(const std::string& key, const std::string& value);
  void add_string_array(const std::string& key, const std::vector<std::string>& values);
  void add_f32_array(const std::string& key, const std::vector<float>& values);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& values);
  // Any value, e.g. copied from File::metadata() when writing a reduced model.
  void add_value(const std::string& key, Value value);

  // Copies n_bytes of data, which must equal the size of dims (1..4, dims[0] a multiple of the block size)
  // in `type`. Names must be unique.
  void add_tensor(const std::string& name, const std::vector<int64_t>& dims, GgmlType type, const void* data,
                  size_t n_bytes);

  std::vector<uint8_t> to_bytes() const;
  void write(const std::string& path) const;  // throws hs::Error on I/O errors

 private:
  struct PendingTensor {
    std::string name;
    std::vector<int64_t> dims;
    GgmlType type;
    std::vector<uint8_t> data;
  };
  // Header, metadata, tensor infos and the padding up to the data section; tensor i's data goes at
  // data_offsets[i] bytes into the data section.
  std::vector<uint8_t> encode_header(std::vector<uint64_t>* data_offsets) const;

  uint32_t version_ = 3;
  size_t alignment_ = 32;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<PendingTensor> tensors_;
};

}  // namespace hs::gguf
