// GGUF reader (versions 2 and 3, little-endian). See /work/shared/docs/FORMATS.md section 4.1.
//
// Every count, length and offset read from a file is checked against the bytes that remain before it is
// used or allocated, so a damaged or hostile file fails with a one-line hs::Error naming the file; nothing
// is read out of bounds. Tensor data is used in place: TensorInfo::data points into the memory map
// (File::open) or into the owned byte buffer (File::parse) and stays valid while the File lives.
// Parsed metadata takes a bounded multiple of the bytes it occupies in the file (under 20x; worst case: tiny
// keys or empty nested arrays).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backends/ggml_type.h"

namespace hs {
class MappedFile;
}

namespace hs::gguf {

enum class ValueType : uint32_t { U8 = 0, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 };

// "u8", "i32", "f32", "bool", "string", "array", ...; "unknown" for ids outside the enum.
const char* value_type_name(ValueType type);

// Bytes of one element of a fixed-size type (U8..F64 except STRING and ARRAY); 0 for those two.
size_t value_type_size(ValueType type);

// Nested arrays (an array whose elements are arrays) are accepted up to this depth; deeper ones are rejected
// so that parsing and destruction stay shallow recursions.
inline constexpr int kMaxArrayDepth = 4;

// One metadata value. Arrays hold elements of one type; numeric and bool elements are kept as raw
// little-endian bytes (so a 49152-entry score table is one allocation), strings as std::string, nested arrays
// as Values.
class Value {
 public:
  Value() = default;  // a u8 zero; real values come from the parser or the make_* functions

  static Value make_u8(uint8_t v);
  static Value make_i8(int8_t v);
  static Value make_u16(uint16_t v);
  static Value make_i16(int16_t v);
  static Value make_u32(uint32_t v);
  static Value make_i32(int32_t v);
  static Value make_u64(uint64_t v);
  static Value make_i64(int64_t v);
  static Value make_f32(float v);
  static Value make_f64(double v);
  static Value make_bool(bool v);
  static Value make_string(std::string v);
  static Value make_string_array(std::vector<std::string> v);
  static Value make_f32_array(const std::vector<float>& v);
  static Value make_i32_array(const std::vector<int32_t>& v);
  // Array of a fixed-size element type from raw little-endian bytes (size a multiple of the element size).
  static Value make_raw_array(ValueType element_type, std::vector<uint8_t> raw);
  // Array of arrays; every element must be an ARRAY (depth limited by kMaxArrayDepth).
  static Value make_nested_array(std::vector<Value> elements);

  ValueType type() const { return type_; }
  ValueType array_type() const { return array_type_; }  // element type when type() == ARRAY
  size_t array_size() const { return array_size_; }     // 0 unless ARRAY

  std::optional<int64_t> as_int() const;   // any integer type (u64 > INT64_MAX -> nullopt); bool -> nullopt
  std::optional<double> as_float() const;  // F32/F64 and integer types
  std::optional<bool> as_bool() const;     // BOOL only
  const std::string* as_string() const;    // nullptr unless STRING

  const std::vector<std::string>* as_string_array() const;   // nullptr unless ARRAY of STRING
  std::optional<std::vector<float>> as_f32_array() const;    // ARRAY of F32 (or F64, rounded to float)
  std::optional<std::vector<int32_t>> as_i32_array() const;  // ARRAY of any integer type whose elements fit
  const std::vector<Value>* as_nested_array() const;         // nullptr unless ARRAY of ARRAY

  // Element i of an ARRAY of a fixed-size type, converted like as_int / as_float; nullopt if out of range.
  std::optional<int64_t> array_int(size_t i) const;
  std::optional<double> array_float(size_t i) const;

  // One line for `hipserve inspect`: strings quoted, escaped and cut after ~60 bytes with their full length,
  // arrays as "[a, b, ... (N items)]" showing at most max_items elements.
  std::string to_display_string(size_t max_items = 8) const;

  // Encoding of the value (type tag excluded) exactly as GGUF stores it; appended to out.
  void append_encoded(std::vector<uint8_t>* out) const;

  // Type name for messages: "u32", "string", "array[f32]", "array[array]".
  std::string type_description() const;

 private:
  friend class Parser;

  ValueType type_ = ValueType::U8;
  ValueType array_type_ = ValueType::U8;
  size_t array_size_ = 0;
  uint8_t scalar_[8] = {};             // little-endian bytes of a fixed-size scalar
  std::string string_;                 // STRING
  std::vector<uint8_t> raw_elements_;  // ARRAY of a fixed-size type: array_size_ * value_type_size bytes
  std::vector<std::string> strings_;   // ARRAY of STRING
  std::vector<Value> nested_;          // ARRAY of ARRAY
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> dims;      // dims[0] varies fastest (ggml ne[]), 1..4 dims
  uint32_t type_id = 0;           // raw id from the file
  GgmlType type = GgmlType::F32;  // == type_id, valid because ids are validated
  uint64_t offset = 0;            // relative to the data section
  size_t n_bytes = 0;
  int64_t n_elements = 0;
  const uint8_t* data = nullptr;  // points into the mapped file / owned buffer, n_bytes valid bytes
};

class File {
 public:
  static std::unique_ptr<File> open(const std::string& path);  // mmap; throws hs::Error
  // Owns the bytes; `name` stands in for the path in messages.
  static std::unique_ptr<File> parse(std::vector<uint8_t> bytes, std::string name = "<memory>");
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_offset_; }  // absolute offset of the data section
  size_t file_size() const { return size_; }
  const std::string& path() const { return path_; }

  const std::vector<std::pair<std::string, Value>>& metadata() const { return metadata_; }  // file order
  const Value* find(std::string_view key) const;

  // Convenience getters: `def` when the key is absent; hs::Error
  // "<path>: metadata key 'k' has type string, expected integer" when present with the wrong type.
  int64_t get_int(std::string_view key, int64_t def) const;
  double get_float(std::string_view key, double def) const;
  bool get_bool(std::string_view key, bool def) const;
  std::string get_string(std::string_view key, const std::string& def) const;
  // Throw "<path>: missing required metadata key 'k'" when absent.
  int64_t require_int(std::string_view key) const;
  double require_float(std::string_view key) const;
  std::string require_string(std::string_view key) const;
  // Empty when absent; throw when present with another type (or an integer element outside int32).
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<float> get_f32_array(std::string_view key) const;
  std::vector<int32_t> get_i32_array(std::string_view key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // Gives the resident pages of [p, p + n) back when the bytes come from a mapped file (MappedFile::
  // release_pages: they are read back from the file if touched again); a no-op for owned bytes.
  void release_pages(const void* p, size_t n) const;
  const TensorInfo* find_tensor(std::string_view name) const;

 private:
  friend class Parser;
  File() = default;
  [[noreturn]] void fail_wrong_type(std::string_view key, const Value& v, const char* expected) const;
  [[noreturn]] void fail_missing(std::string_view key) const;

  std::string path_;
  std::unique_ptr<MappedFile> map_;
  std::vector<uint8_t> owned_bytes_;
  const uint8_t* bytes_ = nullptr;
  size_t size_ = 0;

  uint32_t version_ = 0;
  size_t alignment_ = 32;
  size_t data_offset_ = 0;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::map<std::string, size_t, std::less<>> metadata_index_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// Quoted, escaped and shortened copy of a file-provided name for one-line messages.
std::string printable_name(std::string_view s, size_t max_bytes = 80);

}  // namespace hs::gguf
