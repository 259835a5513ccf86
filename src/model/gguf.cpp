#include "model/gguf.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>

#include "util/common.h"
#include "util/mapped_file.h"

namespace hs::gguf {

static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes a little-endian host");
static_assert(sizeof(size_t) == 8, "the GGUF reader assumes 64-bit sizes");

namespace {

constexpr uint32_t kMaxValueTypeId = uint32_t(ValueType::F64);
constexpr size_t kDefaultAlignment = 32;
// Smallest possible encodings, used to reject counts that cannot fit in the bytes that remain before
// anything is allocated for them.
constexpr size_t kMinKvBytes = 8 + 4 + 1;                  // empty key, type tag, one-byte value
constexpr size_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // empty name, n_dims, one dim, type, offset
constexpr size_t kStringHeaderBytes = 8;
constexpr size_t kArrayHeaderBytes = 4 + 8;

// A checked count still only bounds the items by their smallest encoding, and an item in memory is several
// times larger (a 12-byte empty nested array becomes a 128-byte Value). Reserving at most this many up front
// keeps a lying count in a big file from allocating more than the items actually parsed.
size_t bounded_reserve(uint64_t count) {
  return size_t(std::min<uint64_t>(count, 1 << 16));
}

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
void append_pod(std::vector<uint8_t>* out, T v) {
  const size_t at = out->size();
  out->resize(at + sizeof(T));
  std::memcpy(out->data() + at, &v, sizeof(T));
}

bool is_fixed_size(ValueType t) {
  return value_type_size(t) != 0;
}

bool is_integer(ValueType t) {
  switch (t) {
    case ValueType::U8:
    case ValueType::I8:
    case ValueType::U16:
    case ValueType::I16:
    case ValueType::U32:
    case ValueType::I32:
    case ValueType::U64:
    case ValueType::I64:
      return true;
    default:
      return false;
  }
}

// p holds value_type_size(t) bytes.
std::optional<int64_t> decode_int(ValueType t, const uint8_t* p) {
  switch (t) {
    case ValueType::U8:
      return p[0];
    case ValueType::I8:
      return int8_t(p[0]);
    case ValueType::U16:
      return load<uint16_t>(p);
    case ValueType::I16:
      return load<int16_t>(p);
    case ValueType::U32:
      return load<uint32_t>(p);
    case ValueType::I32:
      return load<int32_t>(p);
    case ValueType::I64:
      return load<int64_t>(p);
    case ValueType::U64: {
      const uint64_t u = load<uint64_t>(p);
      if (u > uint64_t(INT64_MAX)) return std::nullopt;
      return int64_t(u);
    }
    default:
      return std::nullopt;
  }
}

std::optional<double> decode_float(ValueType t, const uint8_t* p) {
  switch (t) {
    case ValueType::F32:
      return load<float>(p);
    case ValueType::F64:
      return load<double>(p);
    case ValueType::U64:
      return double(load<uint64_t>(p));
    default:
      if (auto i = decode_int(t, p)) return double(*i);
      return std::nullopt;
  }
}

// Whole numbers below 1e15 print as integers (rope.freq_base 100000, not 1e+05); others as the shortest text
// that reads back as the same value, so 1e-05f prints as 1e-05, not 9.99999975e-06.
template <typename F>
std::string display_float(F v) {
  if (std::isfinite(v) && std::fabs(v) < F(1e15) && v == std::trunc(v)) return strfmt("%.0f", double(v));
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

std::string display_scalar(ValueType t, const uint8_t* p) {
  switch (t) {
    case ValueType::BOOL:
      return p[0] ? "true" : "false";
    case ValueType::U64:
      return strfmt("%llu", (unsigned long long)load<uint64_t>(p));
    case ValueType::F32:
      return display_float(load<float>(p));
    case ValueType::F64:
      return display_float(load<double>(p));
    default:
      return strfmt("%lld", (long long)decode_int(t, p).value_or(0));
  }
}

void append_escaped(std::string* out, std::string_view s) {
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          *out += strfmt("\\x%02x", c);
        } else {
          *out += char(c);
        }
    }
  }
}

// Longest prefix of at most max_bytes that does not end inside a UTF-8 sequence.
std::string_view utf8_prefix(std::string_view s, size_t max_bytes) {
  if (s.size() <= max_bytes) return s;
  size_t n = max_bytes;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xc0) == 0x80) --n;
  return s.substr(0, n);
}

std::string display_string(std::string_view s, size_t max_bytes) {
  std::string out = "\"";
  append_escaped(&out, utf8_prefix(s, max_bytes));
  if (s.size() > max_bytes) {
    out += strfmt("...\" (%zu bytes)", s.size());
  } else {
    out += '"';
  }
  return out;
}

}  // namespace

const char* value_type_name(ValueType type) {
  switch (type) {
    case ValueType::U8:
      return "u8";
    case ValueType::I8:
      return "i8";
    case ValueType::U16:
      return "u16";
    case ValueType::I16:
      return "i16";
    case ValueType::U32:
      return "u32";
    case ValueType::I32:
      return "i32";
    case ValueType::F32:
      return "f32";
    case ValueType::BOOL:
      return "bool";
    case ValueType::STRING:
      return "string";
    case ValueType::ARRAY:
      return "array";
    case ValueType::U64:
      return "u64";
    case ValueType::I64:
      return "i64";
    case ValueType::F64:
      return "f64";
  }
  return "unknown";
}

size_t value_type_size(ValueType type) {
  switch (type) {
    case ValueType::U8:
    case ValueType::I8:
    case ValueType::BOOL:
      return 1;
    case ValueType::U16:
    case ValueType::I16:
      return 2;
    case ValueType::U32:
    case ValueType::I32:
    case ValueType::F32:
      return 4;
    case ValueType::U64:
    case ValueType::I64:
    case ValueType::F64:
      return 8;
    default:
      return 0;
  }
}

std::string printable_name(std::string_view s, size_t max_bytes) {
  std::string out;
  append_escaped(&out, utf8_prefix(s, max_bytes));
  if (s.size() > max_bytes) out += strfmt("...(%zu bytes)", s.size());
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Value

#define HS_GGUF_MAKE_SCALAR(fn, ctype, vtype) \
  Value Value::fn(ctype v) {                  \
    Value out;                                \
    out.type_ = ValueType::vtype;             \
    std::memcpy(out.scalar_, &v, sizeof(v));  \
    return out;                               \
  }
HS_GGUF_MAKE_SCALAR(make_u8, uint8_t, U8)
HS_GGUF_MAKE_SCALAR(make_i8, int8_t, I8)
HS_GGUF_MAKE_SCALAR(make_u16, uint16_t, U16)
HS_GGUF_MAKE_SCALAR(make_i16, int16_t, I16)
HS_GGUF_MAKE_SCALAR(make_u32, uint32_t, U32)
HS_GGUF_MAKE_SCALAR(make_i32, int32_t, I32)
HS_GGUF_MAKE_SCALAR(make_u64, uint64_t, U64)
HS_GGUF_MAKE_SCALAR(make_i64, int64_t, I64)
HS_GGUF_MAKE_SCALAR(make_f32, float, F32)
HS_GGUF_MAKE_SCALAR(make_f64, double, F64)
#undef HS_GGUF_MAKE_SCALAR

Value Value::make_bool(bool v) {
  Value out;
  out.type_ = ValueType::BOOL;
  out.scalar_[0] = v ? 1 : 0;
  return out;
}

Value Value::make_string(std::string v) {
  Value out;
  out.type_ = ValueType::STRING;
  out.string_ = std::move(v);
  return out;
}

Value Value::make_string_array(std::vector<std::string> v) {
  Value out;
  out.type_ = ValueType::ARRAY;
  out.array_type_ = ValueType::STRING;
  out.array_size_ = v.size();
  out.strings_ = std::move(v);
  return out;
}

Value Value::make_f32_array(const std::vector<float>& v) {
  std::vector<uint8_t> raw(v.size() * sizeof(float));
  if (!v.empty()) std::memcpy(raw.data(), v.data(), raw.size());
  return make_raw_array(ValueType::F32, std::move(raw));
}

Value Value::make_i32_array(const std::vector<int32_t>& v) {
  std::vector<uint8_t> raw(v.size() * sizeof(int32_t));
  if (!v.empty()) std::memcpy(raw.data(), v.data(), raw.size());
  return make_raw_array(ValueType::I32, std::move(raw));
}

Value Value::make_raw_array(ValueType element_type, std::vector<uint8_t> raw) {
  const size_t element_bytes = value_type_size(element_type);
  HS_CHECK(element_bytes != 0, "make_raw_array: element type %s is not a fixed-size type",
           value_type_name(element_type));
  HS_CHECK(raw.size() % element_bytes == 0, "make_raw_array: %zu bytes is not a whole number of %s elements",
           raw.size(), value_type_name(element_type));
  Value out;
  out.type_ = ValueType::ARRAY;
  out.array_type_ = element_type;
  out.array_size_ = raw.size() / element_bytes;
  out.raw_elements_ = std::move(raw);
  return out;
}

namespace {
int array_depth(const Value& v) {
  if (v.type() != ValueType::ARRAY) return 0;
  int deepest = 0;
  if (const std::vector<Value>* nested = v.as_nested_array())
    for (const Value& e : *nested) deepest = std::max(deepest, array_depth(e));
  return 1 + deepest;
}
}  // namespace

Value Value::make_nested_array(std::vector<Value> elements) {
  int deepest = 0;
  for (const Value& e : elements) {
    HS_CHECK(e.type() == ValueType::ARRAY, "make_nested_array: element has type %s, expected array",
             e.type_description().c_str());
    deepest = std::max(deepest, array_depth(e));
  }
  HS_CHECK(deepest + 1 <= kMaxArrayDepth, "make_nested_array: arrays nested deeper than %d levels",
           kMaxArrayDepth);
  Value out;
  out.type_ = ValueType::ARRAY;
  out.array_type_ = ValueType::ARRAY;
  out.array_size_ = elements.size();
  out.nested_ = std::move(elements);
  return out;
}

std::optional<int64_t> Value::as_int() const {
  return decode_int(type_, scalar_);
}

std::optional<double> Value::as_float() const {
  return decode_float(type_, scalar_);
}

std::optional<bool> Value::as_bool() const {
  if (type_ != ValueType::BOOL) return std::nullopt;
  return scalar_[0] != 0;
}

const std::string* Value::as_string() const {
  return type_ == ValueType::STRING ? &string_ : nullptr;
}

const std::vector<std::string>* Value::as_string_array() const {
  return type_ == ValueType::ARRAY && array_type_ == ValueType::STRING ? &strings_ : nullptr;
}

const std::vector<Value>* Value::as_nested_array() const {
  return type_ == ValueType::ARRAY && array_type_ == ValueType::ARRAY ? &nested_ : nullptr;
}

std::optional<std::vector<float>> Value::as_f32_array() const {
  if (type_ != ValueType::ARRAY) return std::nullopt;
  std::vector<float> out(array_size_);
  if (array_type_ == ValueType::F32) {
    if (array_size_ != 0) std::memcpy(out.data(), raw_elements_.data(), array_size_ * sizeof(float));
  } else if (array_type_ == ValueType::F64) {
    for (size_t i = 0; i < array_size_; ++i) out[i] = float(load<double>(&raw_elements_[i * 8]));
  } else {
    return std::nullopt;
  }
  return out;
}

std::optional<std::vector<int32_t>> Value::as_i32_array() const {
  if (type_ != ValueType::ARRAY || !is_integer(array_type_)) return std::nullopt;
  const size_t element_bytes = value_type_size(array_type_);
  std::vector<int32_t> out(array_size_);
  for (size_t i = 0; i < array_size_; ++i) {
    const std::optional<int64_t> v = decode_int(array_type_, &raw_elements_[i * element_bytes]);
    if (!v || *v < INT32_MIN || *v > INT32_MAX) return std::nullopt;
    out[i] = int32_t(*v);
  }
  return out;
}

std::optional<int64_t> Value::array_int(size_t i) const {
  if (type_ != ValueType::ARRAY || !is_fixed_size(array_type_) || i >= array_size_) return std::nullopt;
  return decode_int(array_type_, &raw_elements_[i * value_type_size(array_type_)]);
}

std::optional<double> Value::array_float(size_t i) const {
  if (type_ != ValueType::ARRAY || !is_fixed_size(array_type_) || i >= array_size_) return std::nullopt;
  return decode_float(array_type_, &raw_elements_[i * value_type_size(array_type_)]);
}

std::string Value::type_description() const {
  if (type_ != ValueType::ARRAY) return value_type_name(type_);
  return strfmt("array[%s]", value_type_name(array_type_));
}

std::string Value::to_display_string(size_t max_items) const {
  constexpr size_t kMaxStringBytes = 60;
  constexpr size_t kMaxElementStringBytes = 32;
  if (type_ == ValueType::STRING) return display_string(string_, kMaxStringBytes);
  if (type_ != ValueType::ARRAY) return display_scalar(type_, scalar_);
  const size_t shown = std::min(max_items, array_size_);
  std::string out = "[";
  for (size_t i = 0; i < shown; ++i) {
    if (i > 0) out += ", ";
    if (array_type_ == ValueType::STRING) {
      out += display_string(strings_[i], kMaxElementStringBytes);
    } else if (array_type_ == ValueType::ARRAY) {
      out += nested_[i].to_display_string(max_items);
    } else {
      out += display_scalar(array_type_, &raw_elements_[i * value_type_size(array_type_)]);
    }
  }
  if (shown < array_size_) out += strfmt("%s... (%zu items)", shown > 0 ? ", " : "", array_size_);
  out += "]";
  return out;
}

void Value::append_encoded(std::vector<uint8_t>* out) const {
  if (is_fixed_size(type_)) {
    out->insert(out->end(), scalar_, scalar_ + value_type_size(type_));
    return;
  }
  if (type_ == ValueType::STRING) {
    append_pod<uint64_t>(out, string_.size());
    out->insert(out->end(), string_.begin(), string_.end());
    return;
  }
  append_pod<uint32_t>(out, uint32_t(array_type_));
  append_pod<uint64_t>(out, array_size_);
  if (array_type_ == ValueType::STRING) {
    for (const std::string& s : strings_) {
      append_pod<uint64_t>(out, s.size());
      out->insert(out->end(), s.begin(), s.end());
    }
  } else if (array_type_ == ValueType::ARRAY) {
    for (const Value& v : nested_) v.append_encoded(out);
  } else {
    out->insert(out->end(), raw_elements_.begin(), raw_elements_.end());
  }
}

// ---------------------------------------------------------------------------------------------------------
// Parser: one pass over header, metadata and tensor infos; then the data section is checked against them.

class Parser {
 public:
  explicit Parser(File& file) : file_(file), bytes_(file.bytes_), size_(file.size_) {}

  void run() {
    read_header();
    read_metadata();
    apply_alignment();
    read_tensor_infos();
    place_tensor_data();
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    ::hs::fail(strfmt("%s: %s", file_.path_.c_str(), what.c_str()));
  }

  size_t remaining() const { return size_ - pos_; }

  // `what` names the field being read ("value", "array length"); where_ names the key or tensor around it.
  void need(size_t n, const char* what) const {
    if (n > remaining())
      fail(strfmt("the file is truncated: %s%s at offset %zu needs %zu bytes, but only %zu remain",
                  where_.c_str(), what, pos_, n, remaining()));
  }

  // Rejects a count that cannot fit in the remaining bytes at min_bytes_each, before anything is allocated.
  void check_count(uint64_t count, size_t min_bytes_each, const char* what) const {
    if (count > remaining() / min_bytes_each)
      fail(
          strfmt("%s%s count %llu cannot fit in the %zu bytes that remain at offset %zu (at least %zu bytes "
                 "each): the file is truncated or corrupt",
                 where_.c_str(), what, (unsigned long long)count, remaining(), pos_, min_bytes_each));
  }

  uint32_t read_u32(const char* what) {
    need(4, what);
    const uint32_t v = load<uint32_t>(bytes_ + pos_);
    pos_ += 4;
    return v;
  }

  uint64_t read_u64(const char* what) {
    need(8, what);
    const uint64_t v = load<uint64_t>(bytes_ + pos_);
    pos_ += 8;
    return v;
  }

  std::string read_string(const char* what) {
    const uint64_t length = read_u64(what);
    if (length > remaining())
      fail(strfmt("the file is truncated: %s%s at offset %zu has length %llu, but only %zu bytes remain",
                  where_.c_str(), what, pos_, (unsigned long long)length, remaining()));
    std::string s(reinterpret_cast<const char*>(bytes_ + pos_), size_t(length));
    pos_ += size_t(length);
    return s;
  }

  ValueType read_value_type(const char* what) {
    const size_t at = pos_;
    const uint32_t id = read_u32(what);
    if (id > kMaxValueTypeId) fail(strfmt("%sunknown value type %u at offset %zu", where_.c_str(), id, at));
    return ValueType(id);
  }

  void check_bools(const uint8_t* p, size_t n) const {
    for (size_t i = 0; i < n; ++i)
      if (p[i] > 1)
        fail(strfmt("%sbool value %u at offset %zu is not 0 or 1", where_.c_str(), p[i],
                    size_t(p + i - bytes_)));
  }

  // depth: number of arrays enclosing this value.
  Value read_value(ValueType type, int depth) {
    Value v;
    v.type_ = type;
    if (is_fixed_size(type)) {
      const size_t n = value_type_size(type);
      need(n, "value");
      std::memcpy(v.scalar_, bytes_ + pos_, n);
      if (type == ValueType::BOOL) check_bools(bytes_ + pos_, 1);
      pos_ += n;
      return v;
    }
    if (type == ValueType::STRING) {
      v.string_ = read_string("string value");
      return v;
    }
    // ARRAY
    if (depth >= kMaxArrayDepth)
      fail(strfmt("%sarrays nested deeper than %d levels at offset %zu", where_.c_str(), kMaxArrayDepth,
                  pos_));
    v.array_type_ = read_value_type("array element type");
    const uint64_t count = read_u64("array length");
    if (is_fixed_size(v.array_type_)) {
      const size_t element_bytes = value_type_size(v.array_type_);
      check_count(count, element_bytes, "array element");
      const size_t n_bytes = size_t(count) * element_bytes;
      if (v.array_type_ == ValueType::BOOL) check_bools(bytes_ + pos_, n_bytes);
      v.raw_elements_.assign(bytes_ + pos_, bytes_ + pos_ + n_bytes);
      pos_ += n_bytes;
    } else if (v.array_type_ == ValueType::STRING) {
      check_count(count, kStringHeaderBytes, "array element");
      v.strings_.reserve(bounded_reserve(count));
      for (uint64_t i = 0; i < count; ++i) v.strings_.push_back(read_string("array string"));
    } else {
      check_count(count, kArrayHeaderBytes, "array element");
      v.nested_.reserve(bounded_reserve(count));
      for (uint64_t i = 0; i < count; ++i) v.nested_.push_back(read_value(ValueType::ARRAY, depth + 1));
    }
    v.array_size_ = size_t(count);
    return v;
  }

  void read_header() {
    if (size_ < 4) fail(strfmt("not a GGUF file: only %zu bytes long", size_));
    if (std::memcmp(bytes_, "GGUF", 4) != 0) {
      std::string shown(reinterpret_cast<const char*>(bytes_), 4);
      fail(strfmt("not a GGUF file: it starts with '%s', expected 'GGUF'", printable_name(shown).c_str()));
    }
    pos_ = 4;
    where_ = "header: ";
    const uint32_t version = read_u32("version");
    if (version != 2 && version != 3) {
      const uint32_t swapped = __builtin_bswap32(version);
      if (swapped >= 1 && swapped <= 3)
        fail(strfmt(
            "unsupported GGUF version %u: this is a big-endian GGUF v%u file, only little-endian files are "
            "supported",
            version, swapped));
      fail(strfmt("unsupported GGUF version %u (supported: 2 and 3)", version));
    }
    file_.version_ = version;
    tensor_count_ = read_u64("tensor count");
    kv_count_ = read_u64("metadata count");
  }

  void read_metadata() {
    where_ = "header: ";
    check_count(kv_count_, kMinKvBytes, "metadata");
    file_.metadata_.reserve(bounded_reserve(kv_count_));
    for (uint64_t i = 0; i < kv_count_; ++i) {
      where_ = strfmt("metadata key #%llu: ", (unsigned long long)i);
      std::string key = read_string("key");
      where_ = strfmt("metadata key '%s': ", printable_name(key).c_str());
      if (file_.metadata_index_.count(key))
        fail(strfmt("duplicate metadata key '%s'", printable_name(key).c_str()));
      const ValueType type = read_value_type("value type");
      Value value = read_value(type, 0);
      file_.metadata_index_.emplace(key, file_.metadata_.size());
      file_.metadata_.emplace_back(std::move(key), std::move(value));
    }
    where_.clear();
  }

  void apply_alignment() {
    file_.alignment_ = kDefaultAlignment;
    const Value* v = file_.find("general.alignment");
    if (!v) return;
    if (v->type() != ValueType::U32)
      fail(strfmt("general.alignment has type %s, expected u32", v->type_description().c_str()));
    const uint32_t a = uint32_t(*v->as_int());
    if (a == 0 || (a & (a - 1)) != 0) fail(strfmt("general.alignment %u is not a nonzero power of two", a));
    file_.alignment_ = a;
  }

  void read_tensor_infos() {
    where_ = "header: ";
    check_count(tensor_count_, kMinTensorInfoBytes, "tensor");
    file_.tensors_.reserve(bounded_reserve(tensor_count_));
    for (uint64_t i = 0; i < tensor_count_; ++i) {
      where_ = strfmt("tensor #%llu: ", (unsigned long long)i);
      TensorInfo t;
      t.name = read_string("name");
      const std::string name = printable_name(t.name);
      where_ = strfmt("tensor '%s': ", name.c_str());
      if (file_.tensor_index_.count(t.name)) fail(strfmt("duplicate tensor name '%s'", name.c_str()));

      const uint32_t n_dims = read_u32("dimension count");
      if (n_dims < 1 || n_dims > 4)
        fail(strfmt("tensor '%s' has %u dimensions (supported: 1 to 4)", name.c_str(), n_dims));
      t.dims.resize(n_dims);
      int64_t n_elements = 1;
      bool overflow = false;
      for (uint32_t d = 0; d < n_dims; ++d) {
        const uint64_t dim = read_u64("dimension");
        if (dim > uint64_t(INT64_MAX))
          fail(strfmt("tensor '%s' dimension %u is negative (%lld)", name.c_str(), d,
                      (long long)int64_t(dim)));
        t.dims[d] = int64_t(dim);
        overflow = overflow || __builtin_mul_overflow(n_elements, t.dims[d], &n_elements);
      }
      t.type_id = read_u32("type");
      t.offset = read_u64("offset");

      if (overflow)
        fail(strfmt("tensor '%s' has too many elements: the product of its dimensions overflows",
                    name.c_str()));
      const GgmlTypeTraits* traits = ggml_type_traits(t.type_id);
      if (!traits) fail(strfmt("tensor '%s' has unknown type id %u", name.c_str(), t.type_id));
      t.type = GgmlType(t.type_id);
      if (t.dims[0] % traits->block_size != 0)
        fail(strfmt("tensor '%s' of type %s has dims[0] = %lld, not a multiple of the block size %lld",
                    name.c_str(), traits->name, (long long)t.dims[0], (long long)traits->block_size));
      t.n_elements = n_elements;
      if (!ggml_row_bytes(t.type, n_elements, &t.n_bytes))
        fail(strfmt("tensor '%s' is too large (%lld elements of type %s)", name.c_str(),
                    (long long)n_elements, traits->name));
      if (t.offset % file_.alignment_ != 0)
        fail(strfmt("tensor '%s' offset %llu is not a multiple of the alignment %zu", name.c_str(),
                    (unsigned long long)t.offset, file_.alignment_));
      file_.tensor_index_.emplace(t.name, file_.tensors_.size());
      file_.tensors_.push_back(std::move(t));
    }
    where_.clear();
  }

  void place_tensor_data() {
    // pos_ <= size_ and the alignment is at most 2^31, so this cannot overflow.
    const size_t aligned = (pos_ + file_.alignment_ - 1) / file_.alignment_ * file_.alignment_;
    if (file_.tensors_.empty()) {
      // Metadata-only files (vocab files) need not carry the padding of an empty data section.
      file_.data_offset_ = std::min(aligned, size_);
      return;
    }
    if (aligned > size_)
      fail(strfmt("the file is truncated: the data section starts at offset %zu, but the file has %zu bytes",
                  aligned, size_));
    file_.data_offset_ = aligned;
    const size_t data_bytes = size_ - aligned;
    for (TensorInfo& t : file_.tensors_) {
      const std::string name = printable_name(t.name);
      if (t.offset > data_bytes || t.n_bytes > data_bytes - t.offset) {
        unsigned long long begin = 0, end = 0;
        if (__builtin_add_overflow(aligned, t.offset, &begin) ||
            __builtin_add_overflow(begin, t.n_bytes, &end))
          fail(strfmt(
              "tensor '%s' offset %llu lies beyond the end of the file (size %zu): the file is truncated "
              "or corrupt",
              name.c_str(), (unsigned long long)t.offset, size_));
        fail(strfmt(
            "tensor '%s' data [%llu, %llu) lies beyond the end of the file (size %zu): the file is truncated",
            name.c_str(), begin, end, size_));
      }
      t.data = bytes_ + aligned + t.offset;
    }
  }

  File& file_;
  const uint8_t* bytes_;
  size_t size_;
  size_t pos_ = 0;
  std::string where_;  // prefix naming the item being read, for messages
  uint64_t tensor_count_ = 0;
  uint64_t kv_count_ = 0;
};

// ---------------------------------------------------------------------------------------------------------
// File

File::~File() = default;

std::unique_ptr<File> File::open(const std::string& path) {
  std::unique_ptr<File> file(new File());
  file->path_ = path;
  file->map_ = std::make_unique<MappedFile>(path);
  file->bytes_ = file->map_->data();
  file->size_ = file->map_->size();
  Parser(*file).run();
  return file;
}

std::unique_ptr<File> File::parse(std::vector<uint8_t> bytes, std::string name) {
  std::unique_ptr<File> file(new File());
  file->path_ = std::move(name);
  file->owned_bytes_ = std::move(bytes);
  file->bytes_ = file->owned_bytes_.data();
  file->size_ = file->owned_bytes_.size();
  Parser(*file).run();
  return file;
}

const Value* File::find(std::string_view key) const {
  auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

void File::release_pages(const void* p, size_t n) const {
  if (map_) map_->release_pages(p, n);
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

void File::fail_wrong_type(std::string_view key, const Value& v, const char* expected) const {
  ::hs::fail(strfmt("%s: metadata key '%s' has type %s, expected %s", path_.c_str(),
                    printable_name(key).c_str(), v.type_description().c_str(), expected));
}

void File::fail_missing(std::string_view key) const {
  ::hs::fail(strfmt("%s: missing required metadata key '%s'", path_.c_str(), printable_name(key).c_str()));
}

int64_t File::get_int(std::string_view key, int64_t def) const {
  const Value* v = find(key);
  if (!v) return def;
  if (std::optional<int64_t> i = v->as_int()) return *i;
  if (v->type() == ValueType::U64)
    ::hs::fail(strfmt("%s: metadata key '%s' value %s does not fit in int64", path_.c_str(),
                      printable_name(key).c_str(), v->to_display_string().c_str()));
  fail_wrong_type(key, *v, "integer");
}

double File::get_float(std::string_view key, double def) const {
  const Value* v = find(key);
  if (!v) return def;
  if (std::optional<double> f = v->as_float()) return *f;
  fail_wrong_type(key, *v, "float");
}

bool File::get_bool(std::string_view key, bool def) const {
  const Value* v = find(key);
  if (!v) return def;
  if (std::optional<bool> b = v->as_bool()) return *b;
  fail_wrong_type(key, *v, "bool");
}

std::string File::get_string(std::string_view key, const std::string& def) const {
  const Value* v = find(key);
  if (!v) return def;
  if (const std::string* s = v->as_string()) return *s;
  fail_wrong_type(key, *v, "string");
}

int64_t File::require_int(std::string_view key) const {
  if (!find(key)) fail_missing(key);
  return get_int(key, 0);
}

double File::require_float(std::string_view key) const {
  if (!find(key)) fail_missing(key);
  return get_float(key, 0);
}

std::string File::require_string(std::string_view key) const {
  if (!find(key)) fail_missing(key);
  return get_string(key, "");
}

std::vector<std::string> File::get_string_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return {};
  if (const std::vector<std::string>* a = v->as_string_array()) return *a;
  fail_wrong_type(key, *v, "array[string]");
}

std::vector<float> File::get_f32_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return {};
  if (std::optional<std::vector<float>> a = v->as_f32_array()) return std::move(*a);
  fail_wrong_type(key, *v, "array[f32]");
}

std::vector<int32_t> File::get_i32_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return {};
  if (std::optional<std::vector<int32_t>> a = v->as_i32_array()) return std::move(*a);
  if (v->type() == ValueType::ARRAY && is_integer(v->array_type())) {
    for (size_t i = 0; i < v->array_size(); ++i) {
      const std::optional<int64_t> e = v->array_int(i);
      if (!e || *e < INT32_MIN || *e > INT32_MAX)
        ::hs::fail(strfmt("%s: metadata key '%s' element %zu (%s) does not fit in int32", path_.c_str(),
                          printable_name(key).c_str(), i,
                          e ? strfmt("%lld", (long long)*e).c_str() : "above INT64_MAX"));
    }
  }
  fail_wrong_type(key, *v, "array of integers");
}

}  // namespace hs::gguf
