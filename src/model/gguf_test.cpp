#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>

#include "model/gguf.h"
#include "model/gguf_writer.h"
#include "util/common.h"

namespace hs::gguf {
namespace {

// Hand-assembled GGUF bytes, for files the Writer refuses to produce.
struct RawGguf {
  std::vector<uint8_t> bytes;

  template <typename T>
  RawGguf& pod(T v) {
    const size_t at = bytes.size();
    bytes.resize(at + sizeof(T));
    std::memcpy(bytes.data() + at, &v, sizeof(T));
    return *this;
  }
  RawGguf& u8(uint8_t v) { return pod(v); }
  RawGguf& u32(uint32_t v) { return pod(v); }
  RawGguf& u64(uint64_t v) { return pod(v); }
  RawGguf& str(std::string_view s) {
    u64(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
    return *this;
  }
  RawGguf& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    bytes.insert(bytes.end(), {'G', 'G', 'U', 'F'});
    return u32(version).u64(n_tensors).u64(n_kv);
  }
  RawGguf& kv_u32(std::string_view key, uint32_t v) { return str(key).u32(uint32_t(ValueType::U32)).u32(v); }
  RawGguf& kv_string(std::string_view key, std::string_view v) {
    return str(key).u32(uint32_t(ValueType::STRING)).str(v);
  }
  RawGguf& tensor(std::string_view name, const std::vector<uint64_t>& dims, uint32_t type, uint64_t offset) {
    str(name).u32(uint32_t(dims.size()));
    for (uint64_t d : dims) u64(d);
    return u32(type).u64(offset);
  }
  RawGguf& pad(size_t alignment = 32) {
    bytes.resize((bytes.size() + alignment - 1) / alignment * alignment, 0);
    return *this;
  }
  RawGguf& zeros(size_t n) {
    bytes.resize(bytes.size() + n, 0);
    return *this;
  }
};

// Parses bytes that must be rejected; returns the message after checking it is one line naming the file.
std::string parse_error(const std::vector<uint8_t>& bytes) {
  try {
    File::parse(bytes, "bad.gguf");
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.rfind("bad.gguf: ", 0), 0u) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    return message;
  }
  ADD_FAILURE() << "parse succeeded";
  return "";
}

#define EXPECT_PARSE_ERROR(bytes, substring)                         \
  do {                                                               \
    const std::string message_ = parse_error(bytes);                 \
    EXPECT_NE(message_.find(substring), std::string::npos)           \
        << "message: " << message_ << "\nexpected: " << (substring); \
  } while (0)

std::vector<uint8_t> pattern_bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uint8_t(seed + i * 7);
  return v;
}

// A file with one key of every value type, arrays, and tensors of several types and ranks.
Writer sample_writer() {
  Writer w;
  w.add_string("general.architecture", "llama");
  w.add_u8("t.u8", 200);
  w.add_i8("t.i8", -100);
  w.add_u16("t.u16", 60000);
  w.add_i16("t.i16", -30000);
  w.add_u32("t.u32", 4000000000u);
  w.add_i32("t.i32", -2000000000);
  w.add_u64("t.u64", std::numeric_limits<uint64_t>::max());
  w.add_i64("t.i64", std::numeric_limits<int64_t>::min());
  w.add_f32("t.f32", 1e-5f);
  w.add_f64("t.f64", -2.5e300);
  w.add_bool("t.bool_true", true);
  w.add_bool("t.bool_false", false);
  w.add_string("t.string", std::string("h\xc3\xa9llo\0world", 12));
  w.add_string("t.empty_string", "");
  w.add_string_array("t.strings", {"a", "", "\xe2\x96\x81the", "<|im_start|>"});
  w.add_f32_array("t.f32s", {0.5f, -1.0f, 3e38f});
  w.add_i32_array("t.i32s", {1, -2, 2147483647});
  w.add_i32_array("t.empty_i32s", {});
  const auto f32 = pattern_bytes(4 * 3, 1);
  const auto f16 = pattern_bytes(2 * 5 * 2, 2);
  const auto q41 = pattern_bytes(20 * 2 * 3, 3);
  const auto q80 = pattern_bytes(34 * 1 * 1 * 1 * 2, 4);
  const auto q4k = pattern_bytes(144, 5);
  w.add_tensor("f32.weight", {3}, GgmlType::F32, f32.data(), f32.size());
  w.add_tensor("f16.weight", {5, 2}, GgmlType::F16, f16.data(), f16.size());
  w.add_tensor("q4_1.weight", {64, 3}, GgmlType::Q4_1, q41.data(), q41.size());
  w.add_tensor("q8_0.weight", {32, 1, 1, 2}, GgmlType::Q8_0, q80.data(), q80.size());
  w.add_tensor("empty.weight", {0, 7}, GgmlType::F32, nullptr, 0);
  w.add_tensor("q4_k.weight", {256, 1, 1}, GgmlType::Q4_K, q4k.data(), q4k.size());
  return w;
}

void expect_sample_contents(const File& f, size_t extra_keys = 0) {
  EXPECT_EQ(f.metadata().size(), 19u + extra_keys);
  EXPECT_EQ(f.metadata()[0].first, "general.architecture");
  EXPECT_EQ(f.get_string("general.architecture", ""), "llama");
  EXPECT_EQ(f.find("t.u8")->type(), ValueType::U8);
  EXPECT_EQ(f.get_int("t.u8", 0), 200);
  EXPECT_EQ(f.get_int("t.i8", 0), -100);
  EXPECT_EQ(f.get_int("t.u16", 0), 60000);
  EXPECT_EQ(f.get_int("t.i16", 0), -30000);
  EXPECT_EQ(f.get_int("t.u32", 0), 4000000000LL);
  EXPECT_EQ(f.get_int("t.i32", 0), -2000000000);
  EXPECT_EQ(f.find("t.u64")->type(), ValueType::U64);
  EXPECT_EQ(f.find("t.u64")->as_int(), std::nullopt);
  EXPECT_EQ(f.find("t.u64")->as_float(), 18446744073709551615.0);
  EXPECT_EQ(f.get_int("t.i64", 0), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f.find("t.f32")->type(), ValueType::F32);
  EXPECT_EQ(float(f.get_float("t.f32", 0)), 1e-5f);
  EXPECT_EQ(f.get_float("t.f64", 0), -2.5e300);
  EXPECT_EQ(f.get_bool("t.bool_true", false), true);
  EXPECT_EQ(f.get_bool("t.bool_false", true), false);
  EXPECT_EQ(f.get_string("t.string", ""), std::string("h\xc3\xa9llo\0world", 12));
  EXPECT_EQ(f.get_string("t.empty_string", "x"), "");
  EXPECT_EQ(f.get_string_array("t.strings"),
            (std::vector<std::string>{"a", "", "\xe2\x96\x81the", "<|im_start|>"}));
  EXPECT_EQ(f.get_f32_array("t.f32s"), (std::vector<float>{0.5f, -1.0f, 3e38f}));
  EXPECT_EQ(f.get_i32_array("t.i32s"), (std::vector<int32_t>{1, -2, 2147483647}));
  EXPECT_EQ(f.find("t.empty_i32s")->array_size(), 0u);
  EXPECT_EQ(f.find("t.empty_i32s")->array_type(), ValueType::I32);

  ASSERT_EQ(f.tensors().size(), 6u);
  const struct {
    const char* name;
    std::vector<int64_t> dims;
    GgmlType type;
    size_t n_bytes;
    uint8_t seed;
  } expected[] = {
      {"f32.weight", {3}, GgmlType::F32, 12, 1},        {"f16.weight", {5, 2}, GgmlType::F16, 20, 2},
      {"q4_1.weight", {64, 3}, GgmlType::Q4_1, 120, 3}, {"q8_0.weight", {32, 1, 1, 2}, GgmlType::Q8_0, 68, 4},
      {"empty.weight", {0, 7}, GgmlType::F32, 0, 0},    {"q4_k.weight", {256, 1, 1}, GgmlType::Q4_K, 144, 5},
  };
  for (size_t i = 0; i < 6; ++i) {
    const TensorInfo& t = f.tensors()[i];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, expected[i].name);
    EXPECT_EQ(t.dims, expected[i].dims);
    EXPECT_EQ(t.type, expected[i].type);
    EXPECT_EQ(t.type_id, uint32_t(expected[i].type));
    EXPECT_EQ(t.n_bytes, expected[i].n_bytes);
    int64_t n = 1;
    for (int64_t d : t.dims) n *= d;
    EXPECT_EQ(t.n_elements, n);
    EXPECT_EQ(t.offset % f.alignment(), 0u);
    EXPECT_EQ(size_t(t.data - (f.tensors()[0].data - f.tensors()[0].offset)), t.offset);
    EXPECT_EQ(std::vector<uint8_t>(t.data, t.data + t.n_bytes), pattern_bytes(t.n_bytes, expected[i].seed));
    EXPECT_EQ(f.find_tensor(expected[i].name), &t);
  }
  EXPECT_EQ(f.find_tensor("missing"), nullptr);
}

TEST(GgufRoundTrip, EveryValueTypeAndTensor) {
  const std::vector<uint8_t> bytes = sample_writer().to_bytes();
  auto f = File::parse(bytes, "sample.gguf");
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->data_offset() % 32, 0u);
  EXPECT_EQ(f->file_size(), bytes.size());
  EXPECT_EQ(f->path(), "sample.gguf");
  expect_sample_contents(*f);
  // The last tensor ends the file: nothing pads it.
  const TensorInfo& last = f->tensors().back();
  EXPECT_EQ(f->data_offset() + last.offset + last.n_bytes, bytes.size());
}

TEST(GgufRoundTrip, VersionTwoHeader) {
  Writer w = sample_writer();
  w.set_version(2);
  const std::vector<uint8_t> bytes = w.to_bytes();
  EXPECT_EQ(bytes[4], 2);
  auto f = File::parse(bytes);
  EXPECT_EQ(f->version(), 2u);
  expect_sample_contents(*f);
}

TEST(GgufRoundTrip, Alignment) {
  for (size_t alignment : {1, 8, 64, 4096}) {
    SCOPED_TRACE(alignment);
    Writer w;
    const auto a = pattern_bytes(4 * 3, 9);
    const auto b = pattern_bytes(2 * 1, 10);
    w.add_tensor("a", {3}, GgmlType::F32, a.data(), a.size());
    w.set_alignment(alignment);
    w.add_tensor("b", {1}, GgmlType::F16, b.data(), b.size());
    auto f = File::parse(w.to_bytes());
    EXPECT_EQ(f->alignment(), alignment);
    EXPECT_EQ(f->get_int("general.alignment", 0), int64_t(alignment));
    EXPECT_EQ(f->data_offset() % alignment, 0u);
    EXPECT_EQ(f->tensors()[1].offset, (12 + alignment - 1) / alignment * alignment);
    EXPECT_EQ(std::vector<uint8_t>(f->tensors()[1].data, f->tensors()[1].data + 2), b);
  }
  Writer w;
  w.set_alignment(64);
  w.set_alignment(16);  // replaces the key
  auto f = File::parse(w.to_bytes());
  EXPECT_EQ(f->metadata().size(), 1u);
  EXPECT_EQ(f->alignment(), 16u);
  EXPECT_EQ(f->data_offset(), f->file_size());
  EXPECT_THROW(w.set_alignment(0), Error);
  EXPECT_THROW(w.set_alignment(48), Error);
  Writer by_key;
  by_key.add_u32("general.alignment", 128);
  EXPECT_EQ(by_key.alignment(), 128u);
  EXPECT_THROW(Writer().add_u64("general.alignment", 128), Error);
}

TEST(GgufRoundTrip, WriteAndOpenFile) {
  const std::string path = ::testing::TempDir() + "gguf_test_" + std::to_string(::getpid()) + ".gguf";
  Writer w = sample_writer();
  w.set_alignment(64);
  w.write(path);
  {
    auto f = File::open(path);
    EXPECT_EQ(f->path(), path);
    EXPECT_EQ(f->alignment(), 64u);
    std::ifstream in(path, std::ios::binary);
    std::vector<uint8_t> on_disk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(on_disk, w.to_bytes());
  }
  std::remove(path.c_str());
  EXPECT_THROW(w.write("/nonexistent-dir/x.gguf"), Error);
  try {
    File::open("/nonexistent-dir/x.gguf");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir/x.gguf"), std::string::npos);
  }
}

// Copying every key and tensor of a parsed file into a Writer reproduces the file byte for byte.
TEST(GgufRoundTrip, CopyThroughWriterIsByteExact) {
  Writer original = sample_writer();
  original.add_value("t.nested",
                     Value::make_nested_array({Value::make_i32_array({1, 2}), Value::make_string_array({"x"}),
                                               Value::make_nested_array({})}));
  const std::vector<uint8_t> bytes = original.to_bytes();
  auto f = File::parse(bytes);
  Writer copy;
  for (const auto& [key, value] : f->metadata()) copy.add_value(key, value);
  for (const TensorInfo& t : f->tensors()) copy.add_tensor(t.name, t.dims, t.type, t.data, t.n_bytes);
  EXPECT_EQ(copy.to_bytes(), bytes);
}

TEST(GgufRoundTrip, NestedArrays) {
  Writer w;
  w.add_value("nested",
              Value::make_nested_array({Value::make_i32_array({1, 2, 3}), Value::make_f32_array({}),
                                        Value::make_nested_array({Value::make_string_array({"q"})})}));
  auto f = File::parse(w.to_bytes());
  const Value* v = f->find("nested");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->array_type(), ValueType::ARRAY);
  ASSERT_NE(v->as_nested_array(), nullptr);
  EXPECT_EQ(v->array_size(), 3u);
  EXPECT_EQ((*v->as_nested_array())[0].as_i32_array(), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(v->as_i32_array(), std::nullopt);
  EXPECT_EQ(v->as_string_array(), nullptr);
  EXPECT_EQ(v->to_display_string(), "[[1, 2, 3], [], [[\"q\"]]]");
  EXPECT_EQ(v->type_description(), "array[array]");
  EXPECT_THROW(f->get_i32_array("nested"), Error);

  // Depth kMaxArrayDepth is the limit for both the writer and the reader.
  Value deep = Value::make_i32_array({7});
  for (int depth = 1; depth < kMaxArrayDepth; ++depth) deep = Value::make_nested_array({deep});
  EXPECT_THROW(Value::make_nested_array({deep}), Error);
  EXPECT_THROW(Value::make_nested_array({Value::make_u8(1)}), Error);
  RawGguf raw;
  raw.header(0, 1).str("deep").u32(uint32_t(ValueType::ARRAY));
  for (int depth = 0; depth < kMaxArrayDepth; ++depth) raw.u32(uint32_t(ValueType::ARRAY)).u64(1);
  raw.u32(uint32_t(ValueType::U8)).u64(0);
  EXPECT_PARSE_ERROR(raw.bytes, "arrays nested deeper than 4 levels");
}

TEST(GgufValue, DisplayStrings) {
  EXPECT_EQ(Value::make_u8(7).to_display_string(), "7");
  EXPECT_EQ(Value::make_i64(-5).to_display_string(), "-5");
  EXPECT_EQ(Value::make_u64(18446744073709551615ull).to_display_string(), "18446744073709551615");
  EXPECT_EQ(Value::make_f32(1e-5f).to_display_string(), "1e-05");
  EXPECT_EQ(Value::make_f32(0.1f).to_display_string(), "0.1");
  EXPECT_EQ(Value::make_f64(100000.0).to_display_string(), "100000");
  EXPECT_EQ(Value::make_bool(true).to_display_string(), "true");
  EXPECT_EQ(Value::make_string("a\"b\\c\n\x01").to_display_string(), "\"a\\\"b\\\\c\\n\\x01\"");
  const std::string long_text(100, 'x');
  EXPECT_EQ(Value::make_string(long_text).to_display_string(),
            "\"" + std::string(60, 'x') + "...\" (100 bytes)");
  // A cut never splits a UTF-8 sequence: 59 ASCII bytes then a 3-byte character straddling byte 60.
  const std::string utf8 = std::string(59, 'y') + "\xe2\x96\x81" + "tail";
  EXPECT_EQ(Value::make_string(utf8).to_display_string(), "\"" + std::string(59, 'y') + "...\" (66 bytes)");
  EXPECT_EQ(Value::make_i32_array({1, 2, 3}).to_display_string(), "[1, 2, 3]");
  EXPECT_EQ(Value::make_i32_array({}).to_display_string(), "[]");
  EXPECT_EQ(Value::make_i32_array({1, 2, 3, 4, 5}).to_display_string(2), "[1, 2, ... (5 items)]");
  EXPECT_EQ(Value::make_i32_array({1, 2}).to_display_string(0), "[... (2 items)]");
  EXPECT_EQ(Value::make_string_array({"a", "b\tc"}).to_display_string(), "[\"a\", \"b\\tc\"]");
  EXPECT_EQ(Value::make_f32_array({0.25f, -1}).to_display_string(), "[0.25, -1]");
  EXPECT_EQ(Value::make_raw_array(ValueType::BOOL, {1, 0}).to_display_string(), "[true, false]");
  EXPECT_THROW(Value::make_raw_array(ValueType::STRING, {}), Error);
  EXPECT_THROW(Value::make_raw_array(ValueType::U16, {1}), Error);
}

TEST(GgufValue, TypedAccess) {
  EXPECT_EQ(Value::make_bool(true).as_int(), std::nullopt);
  EXPECT_EQ(Value::make_bool(true).as_float(), std::nullopt);
  EXPECT_EQ(Value::make_bool(true).as_bool(), true);
  EXPECT_EQ(Value::make_u32(1).as_bool(), std::nullopt);
  EXPECT_EQ(Value::make_i16(-3).as_float(), -3.0);
  EXPECT_EQ(Value::make_f32(1.5f).as_int(), std::nullopt);
  EXPECT_EQ(Value::make_u64(uint64_t(INT64_MAX)).as_int(), INT64_MAX);
  EXPECT_EQ(Value::make_u64(uint64_t(INT64_MAX) + 1).as_int(), std::nullopt);
  EXPECT_EQ(Value::make_string("s").as_int(), std::nullopt);
  EXPECT_EQ(Value::make_u8(1).as_string(), nullptr);
  EXPECT_EQ(Value::make_u8(1).array_size(), 0u);
  EXPECT_EQ(Value::make_u8(1).as_f32_array(), std::nullopt);
  EXPECT_EQ(Value::make_f32_array({1}).as_i32_array(), std::nullopt);
  EXPECT_EQ(Value::make_i32_array({1}).as_f32_array(), std::nullopt);
  double f64s[2] = {0.5, 1e300};
  std::vector<uint8_t> raw(sizeof(f64s));
  std::memcpy(raw.data(), f64s, sizeof(f64s));
  EXPECT_EQ(Value::make_raw_array(ValueType::F64, raw).as_f32_array(),
            (std::vector<float>{0.5f, std::numeric_limits<float>::infinity()}));
  // u64 elements fit in int32 only when small.
  uint64_t u64s[2] = {5, 1ull << 40};
  raw.assign(sizeof(u64s), 0);
  std::memcpy(raw.data(), u64s, sizeof(u64s));
  const Value big = Value::make_raw_array(ValueType::U64, raw);
  EXPECT_EQ(big.as_i32_array(), std::nullopt);
  EXPECT_EQ(big.array_int(1), int64_t(1) << 40);
  EXPECT_EQ(big.array_int(2), std::nullopt);
  EXPECT_EQ(Value::make_raw_array(ValueType::U8, {1, 255}).as_i32_array(), (std::vector<int32_t>{1, 255}));
  EXPECT_EQ(Value::make_raw_array(ValueType::BOOL, {1}).as_i32_array(), std::nullopt);
}

TEST(GgufFile, Getters) {
  Writer w;
  w.add_string("s", "text");
  w.add_u32("n", 7);
  w.add_f32("x", 0.5f);
  w.add_bool("b", true);
  w.add_u64("huge", std::numeric_limits<uint64_t>::max());
  w.add_i32_array("ints", {1, 2});
  w.add_f32_array("floats", {1.5f});
  w.add_string_array("strings", {"p", "q"});
  w.add_value("wide_ints", Value::make_raw_array(ValueType::I64, std::vector<uint8_t>(8, 0x7f)));
  auto f = File::parse(w.to_bytes(), "g.gguf");

  EXPECT_EQ(f->get_int("n", 0), 7);
  EXPECT_EQ(f->get_int("absent", -4), -4);
  EXPECT_EQ(f->get_float("n", 0), 7.0);
  EXPECT_EQ(f->get_float("x", 0), 0.5);
  EXPECT_EQ(f->get_float("absent", 2.5), 2.5);
  EXPECT_EQ(f->get_bool("b", false), true);
  EXPECT_EQ(f->get_bool("absent", true), true);
  EXPECT_EQ(f->get_string("s", ""), "text");
  EXPECT_EQ(f->get_string("absent", "def"), "def");
  EXPECT_EQ(f->require_int("n"), 7);
  EXPECT_EQ(f->require_float("x"), 0.5);
  EXPECT_EQ(f->require_string("s"), "text");
  EXPECT_EQ(f->get_i32_array("ints"), (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(f->get_f32_array("floats"), (std::vector<float>{1.5f}));
  EXPECT_EQ(f->get_string_array("strings"), (std::vector<std::string>{"p", "q"}));
  EXPECT_TRUE(f->get_i32_array("absent").empty());
  EXPECT_TRUE(f->get_f32_array("absent").empty());
  EXPECT_TRUE(f->get_string_array("absent").empty());

  auto message = [&](auto&& call) -> std::string {
    try {
      call();
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_EQ(message([&] { f->get_int("s", 0); }),
            "g.gguf: metadata key 's' has type string, expected integer");
  EXPECT_EQ(message([&] { f->get_int("x", 0); }), "g.gguf: metadata key 'x' has type f32, expected integer");
  EXPECT_EQ(message([&] { f->get_int("huge", 0); }),
            "g.gguf: metadata key 'huge' value 18446744073709551615 does not fit in int64");
  EXPECT_EQ(message([&] { f->get_float("s", 0); }),
            "g.gguf: metadata key 's' has type string, expected float");
  EXPECT_EQ(message([&] { f->get_bool("n", false); }),
            "g.gguf: metadata key 'n' has type u32, expected bool");
  EXPECT_EQ(message([&] { f->get_string("ints", ""); }),
            "g.gguf: metadata key 'ints' has type array[i32], expected string");
  EXPECT_EQ(message([&] { f->require_int("absent"); }), "g.gguf: missing required metadata key 'absent'");
  EXPECT_EQ(message([&] { f->require_float("absent"); }), "g.gguf: missing required metadata key 'absent'");
  EXPECT_EQ(message([&] { f->require_string("absent"); }), "g.gguf: missing required metadata key 'absent'");
  EXPECT_EQ(message([&] { f->require_string("n"); }),
            "g.gguf: metadata key 'n' has type u32, expected string");
  EXPECT_EQ(message([&] { f->get_string_array("ints"); }),
            "g.gguf: metadata key 'ints' has type array[i32], expected array[string]");
  EXPECT_EQ(message([&] { f->get_f32_array("strings"); }),
            "g.gguf: metadata key 'strings' has type array[string], expected array[f32]");
  EXPECT_EQ(message([&] { f->get_i32_array("s"); }),
            "g.gguf: metadata key 's' has type string, expected array of integers");
  EXPECT_EQ(message([&] { f->get_i32_array("wide_ints"); }),
            "g.gguf: metadata key 'wide_ints' element 0 (9187201950435737471) does not fit in int32");
}

TEST(GgufWriter, RejectsInvalidInput) {
  Writer w;
  w.add_u32("k", 1);
  EXPECT_THROW(w.add_string("k", "again"), Error);
  const float data[4] = {};
  w.add_tensor("t", {4}, GgmlType::F32, data, 16);
  EXPECT_THROW(w.add_tensor("t", {4}, GgmlType::F32, data, 16), Error);             // duplicate name
  EXPECT_THROW(w.add_tensor("u", {4}, GgmlType::F32, data, 12), Error);             // wrong byte count
  EXPECT_THROW(w.add_tensor("u", {}, GgmlType::F32, data, 4), Error);               // no dims
  EXPECT_THROW(w.add_tensor("u", {1, 1, 1, 1, 1}, GgmlType::F32, data, 4), Error);  // 5 dims
  EXPECT_THROW(w.add_tensor("u", {-1}, GgmlType::F32, data, 0), Error);
  EXPECT_THROW(w.add_tensor("u", {16}, GgmlType::Q8_0, data, 16), Error);          // partial block
  EXPECT_THROW(w.add_tensor("u", {1}, GgmlType(4), data, 4), Error);               // unknown type
  EXPECT_THROW(w.add_tensor("u", {INT64_MAX, 2}, GgmlType::F32, data, 0), Error);  // overflow
  EXPECT_THROW(w.set_version(1), Error);
}

// ---------------------------------------------------------------------------------------------------------
// Damaged files

TEST(GgufParse, RejectsBadMagicAndVersion) {
  EXPECT_PARSE_ERROR({}, "not a GGUF file: only 0 bytes long");
  EXPECT_PARSE_ERROR((std::vector<uint8_t>{'G', 'G', 'U'}), "not a GGUF file");
  EXPECT_PARSE_ERROR((std::vector<uint8_t>{'G', 'G', 'M', 'L', 0, 0, 0, 0}),
                     "it starts with 'GGML', expected 'GGUF'");
  EXPECT_PARSE_ERROR(RawGguf().header(0, 0, 1).bytes, "unsupported GGUF version 1 (supported: 2 and 3)");
  EXPECT_PARSE_ERROR(RawGguf().header(0, 0, 4).bytes, "unsupported GGUF version 4");
  EXPECT_PARSE_ERROR(RawGguf().header(0, 0, 0x03000000).bytes, "big-endian");
  EXPECT_PARSE_ERROR((std::vector<uint8_t>{'G', 'G', 'U', 'F', 3, 0}),
                     "the file is truncated: header: version");
  // The smallest valid files.
  EXPECT_EQ(File::parse(RawGguf().header(0, 0, 2).bytes)->version(), 2u);
  EXPECT_EQ(File::parse(RawGguf().header(0, 0, 3).bytes)->metadata().size(), 0u);
}

TEST(GgufParse, RejectsHugeCountsWithoutAllocating) {
  // Each of these would need terabytes if the count were trusted; the check happens before any allocation.
  EXPECT_PARSE_ERROR(RawGguf().header(0, uint64_t(1) << 62).bytes,
                     "metadata count 4611686018427387904 cannot fit");
  EXPECT_PARSE_ERROR(RawGguf().header(~uint64_t(0), 0).bytes, "tensor count 18446744073709551615 cannot fit");
  EXPECT_PARSE_ERROR(
      RawGguf().header(0, 1).str("k").u32(uint32_t(ValueType::ARRAY)).u32(0).u64(uint64_t(1) << 60).bytes,
      "array element count 1152921504606846976 cannot fit");
  EXPECT_PARSE_ERROR(
      RawGguf().header(0, 1).str("k").u32(uint32_t(ValueType::ARRAY)).u32(8).u64(1ull << 40).zeros(64).bytes,
      "array element count 1099511627776 cannot fit");
  EXPECT_PARSE_ERROR(
      RawGguf().header(0, 1).str("k").u32(uint32_t(ValueType::ARRAY)).u32(9).u64(1ull << 40).zeros(64).bytes,
      "array element count 1099511627776 cannot fit");
  EXPECT_PARSE_ERROR(
      RawGguf().header(0, 1).str("k").u32(uint32_t(ValueType::ARRAY)).u32(12).u64(5).zeros(32).bytes,
      "array element count 5 cannot fit in the 32 bytes");
  EXPECT_PARSE_ERROR(
      RawGguf().header(0, 1).u64(~uint64_t(0)).zeros(16).bytes,
      "metadata key #0: key at offset 32 has length 18446744073709551615, but only 16 bytes remain");
  EXPECT_PARSE_ERROR(RawGguf().header(0, 1).str("k").u32(uint32_t(ValueType::STRING)).u64(1ull << 50).bytes,
                     "metadata key 'k': string value at offset");
  EXPECT_PARSE_ERROR(RawGguf().header(1, 0).u64(1ull << 63).zeros(64).bytes, "tensor #0: name");
}

TEST(GgufParse, RejectsBadMetadata) {
  EXPECT_PARSE_ERROR(RawGguf().header(0, 2).kv_u32("a", 1).kv_u32("a", 2).bytes,
                     "duplicate metadata key 'a'");
  EXPECT_PARSE_ERROR(RawGguf().header(0, 1).str("k").u32(13).u64(0).bytes,
                     "metadata key 'k': unknown value type 13 at offset 33");
  EXPECT_PARSE_ERROR(RawGguf().header(0, 1).str("k").u32(uint32_t(ValueType::ARRAY)).u32(99).u64(0).bytes,
                     "unknown value type 99");
  EXPECT_PARSE_ERROR(RawGguf().header(0, 1).str("k").u32(uint32_t(ValueType::BOOL)).u8(2).bytes,
                     "metadata key 'k': bool value 2 at offset 37 is not 0 or 1");
  EXPECT_PARSE_ERROR(
      RawGguf().header(0, 1).str("k").u32(uint32_t(ValueType::ARRAY)).u32(7).u64(3).u8(0).u8(1).u8(9).bytes,
      "bool value 9 at offset 51");
  EXPECT_PARSE_ERROR(
      RawGguf().header(0, 1).str("k").u32(uint32_t(ValueType::U32)).u8(0).bytes,
      "the file is truncated: metadata key 'k': value at offset 37 needs 4 bytes, but only 1 remain");
  // Control characters in a key are escaped so the message stays on one line.
  EXPECT_PARSE_ERROR(RawGguf().header(0, 2).kv_u32("a\nb", 1).kv_u32("a\nb", 2).bytes,
                     "duplicate metadata key 'a\\nb'");
  EXPECT_PARSE_ERROR(RawGguf().header(0, 1).str("k").u32(uint32_t(ValueType::STRING)).bytes,
                     "metadata key 'k': string value at offset 37 needs 8 bytes");
}

TEST(GgufParse, RejectsBadAlignment) {
  EXPECT_PARSE_ERROR(
      RawGguf().header(0, 1).str("general.alignment").u32(uint32_t(ValueType::U64)).u64(32).bytes,
      "general.alignment has type u64, expected u32");
  EXPECT_PARSE_ERROR(RawGguf().header(0, 1).kv_u32("general.alignment", 0).bytes,
                     "general.alignment 0 is not a nonzero power of two");
  EXPECT_PARSE_ERROR(RawGguf().header(0, 1).kv_u32("general.alignment", 48).bytes,
                     "general.alignment 48 is not a nonzero power of two");
  auto f = File::parse(RawGguf().header(0, 1).kv_u32("general.alignment", 1u << 31).bytes);
  EXPECT_EQ(f->alignment(), size_t(1) << 31);
}

TEST(GgufParse, RejectsBadTensorInfo) {
  const uint32_t f32 = 0, q4_1 = 3;
  auto one_tensor = [](std::string_view name, const std::vector<uint64_t>& dims, uint32_t type,
                       uint64_t offset, size_t data_bytes) {
    return RawGguf().header(1, 0).tensor(name, dims, type, offset).pad().zeros(data_bytes).bytes;
  };
  EXPECT_NO_THROW(File::parse(one_tensor("t", {4}, f32, 0, 16)));
  EXPECT_PARSE_ERROR(one_tensor("t", {}, f32, 0, 16), "tensor 't' has 0 dimensions (supported: 1 to 4)");
  EXPECT_PARSE_ERROR(one_tensor("t", {1, 1, 1, 1, 1}, f32, 0, 16), "tensor 't' has 5 dimensions");
  EXPECT_PARSE_ERROR(one_tensor("t", {4, ~uint64_t(0)}, f32, 0, 16),
                     "tensor 't' dimension 1 is negative (-1)");
  EXPECT_PARSE_ERROR(one_tensor("t", {1ull << 32, 1ull << 32}, f32, 0, 16),
                     "tensor 't' has too many elements: the product of its dimensions overflows");
  EXPECT_PARSE_ERROR(one_tensor("t", {1ull << 62}, f32, 0, 16), "tensor 't' is too large");
  EXPECT_PARSE_ERROR(one_tensor("t", {4}, 4, 0, 16), "tensor 't' has unknown type id 4");
  EXPECT_PARSE_ERROR(one_tensor("t", {4}, 1000, 0, 16), "tensor 't' has unknown type id 1000");
  EXPECT_PARSE_ERROR(one_tensor("t", {48, 2}, q4_1, 0, 80),
                     "tensor 't' of type Q4_1 has dims[0] = 48, not a multiple of the block size 32");
  EXPECT_PARSE_ERROR(one_tensor("t", {4}, f32, 16, 64),
                     "tensor 't' offset 16 is not a multiple of the alignment 32");
  EXPECT_PARSE_ERROR(
      one_tensor("t", {4}, f32, 0, 15),
      "tensor 't' data [64, 80) lies beyond the end of the file (size 79): the file is truncated");
  EXPECT_PARSE_ERROR(one_tensor("t", {4}, f32, 1ull << 63, 16), "tensor 't' data [9223372036854775872, ");
  EXPECT_PARSE_ERROR(one_tensor("t", {4}, f32, ~uint64_t(31), 16),
                     "tensor 't' offset 18446744073709551584 lies beyond the end of the file");
  EXPECT_PARSE_ERROR(RawGguf().header(1, 0).tensor("t", {4}, f32, 0).bytes,
                     "the data section starts at offset 64, but the file has 57 bytes");
  EXPECT_PARSE_ERROR(
      RawGguf().header(2, 0).tensor("t", {4}, f32, 0).tensor("t", {4}, f32, 32).pad().zeros(64).bytes,
      "duplicate tensor name 't'");
  EXPECT_PARSE_ERROR(
      RawGguf().header(1, 0).str("tensor_with_long_name").u32(1).u64(4).bytes,
      "the file is truncated: tensor 'tensor_with_long_name': type at offset 65 needs 4 bytes, but "
      "only 0 remain");
  // Zero-sized dimensions are fine and need no data.
  auto f = File::parse(one_tensor("t", {0, 3}, q4_1, 0, 0));
  EXPECT_EQ(f->tensors()[0].n_elements, 0);
  EXPECT_EQ(f->tensors()[0].n_bytes, 0u);
}

// A metadata-only file may end without the padding of its empty data section.
TEST(GgufParse, MetadataOnlyFileWithoutPadding) {
  const std::vector<uint8_t> bytes = RawGguf().header(0, 1).kv_u32("a", 1).bytes;
  auto f = File::parse(bytes);
  EXPECT_EQ(f->data_offset(), bytes.size());
  EXPECT_TRUE(f->tensors().empty());
}

// Every proper prefix of a file whose last tensor holds data is rejected with hs::Error.
TEST(GgufParse, EveryTruncationIsRejected) {
  Writer w = sample_writer();
  w.add_value("t.nested",
              Value::make_nested_array({Value::make_i32_array({1}), Value::make_string_array({"s"})}));
  const std::vector<uint8_t> bytes = w.to_bytes();
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + n);
    EXPECT_THROW(File::parse(std::move(prefix)), Error) << "prefix of " << n << " bytes";
  }
  expect_sample_contents(*File::parse(bytes), 1);
}

// Damaging header, metadata and tensor-info bytes one at a time never crashes (ASan/UBSan in CI) and gives
// either a file or an hs::Error.
TEST(GgufParse, FlippedBytesNeverCrash) {
  const std::vector<uint8_t> bytes = sample_writer().to_bytes();
  const size_t data_offset = File::parse(bytes)->data_offset();
  size_t parsed = 0, rejected = 0;
  for (size_t i = 0; i < data_offset; ++i) {
    for (uint8_t replacement : {uint8_t(bytes[i] ^ 0xff), uint8_t(bytes[i] ^ 0x01), uint8_t(bytes[i] ^ 0x80),
                                uint8_t(0), uint8_t(0xff)}) {
      if (replacement == bytes[i]) continue;
      std::vector<uint8_t> damaged = bytes;
      damaged[i] = replacement;
      try {
        auto f = File::parse(std::move(damaged));
        for (const auto& [key, value] : f->metadata()) (void)value.to_display_string();
        ++parsed;
      } catch (const Error&) {
        ++rejected;
      }
    }
  }
  EXPECT_GT(rejected, 0u);
  EXPECT_GT(parsed, 0u);  // e.g. a changed character in a value or key
}

TEST(GgufParse, RandomGarbageNeverCrashes) {
  std::mt19937 rng(1234);
  const std::vector<uint8_t> valid = sample_writer().to_bytes();
  for (int iteration = 0; iteration < 2000; ++iteration) {
    std::vector<uint8_t> bytes = valid;
    const int n_edits = 1 + int(rng() % 8);
    for (int e = 0; e < n_edits; ++e) bytes[rng() % bytes.size()] = uint8_t(rng());
    bytes.resize(rng() % (bytes.size() + 1));
    try {
      File::parse(std::move(bytes));
    } catch (const Error&) {
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// The real model

std::string model_path() {
  if (const char* env = std::getenv("HIPSERVE_MODEL")) return env;
  return HIPSERVE_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

TEST(GgufModel, SmolLM2) {
  const std::string path = model_path();
  if (::access(path.c_str(), R_OK) != 0)
    GTEST_SKIP() << "model file " << path
                 << " not found (set HIPSERVE_MODEL or put SmolLM2-135M-Instruct.Q4_1.gguf in models/)";
  auto f = File::open(path);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->tensors().size(), 272u);
  EXPECT_EQ(f->get_string("general.architecture", ""), "llama");
  EXPECT_EQ(f->require_int("llama.block_count"), 30);
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  const TensorInfo* embd = f->find_tensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, GgmlType::Q8_0);
  EXPECT_EQ(embd->dims, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(embd->n_bytes, size_t(576) / 32 * 34 * 49152);
  for (const TensorInfo& t : f->tensors()) {
    EXPECT_NE(t.data, nullptr);
    EXPECT_LE(f->data_offset() + t.offset + t.n_bytes, f->file_size());
  }
  for (const auto& [key, value] : f->metadata()) EXPECT_FALSE(value.to_display_string().empty()) << key;
}

// Writes the libFuzzer seed corpus (fuzz/corpus) when HIPSERVE_WRITE_FUZZ_CORPUS names a directory:
//   HIPSERVE_WRITE_FUZZ_CORPUS=fuzz/corpus ./build/hipserve_tests --gtest_filter=GgufFuzzCorpus.*
TEST(GgufFuzzCorpus, Write) {
  const char* dir_env = std::getenv("HIPSERVE_WRITE_FUZZ_CORPUS");
  if (!dir_env) GTEST_SKIP() << "set HIPSERVE_WRITE_FUZZ_CORPUS=<dir> to write the fuzz seed corpus";
  const std::string dir = dir_env;
  auto save = [&](const std::string& name, const std::vector<uint8_t>& bytes) {
    std::ofstream out(dir + "/" + name, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    ASSERT_TRUE(out.good()) << dir << "/" << name;
  };
  save("empty_v3", RawGguf().header(0, 0).bytes);
  save("all_types", sample_writer().to_bytes());
  Writer v2 = sample_writer();
  v2.set_version(2);
  v2.set_alignment(8);
  save("all_types_v2_align8", v2.to_bytes());
  Writer nested;
  nested.add_value("nested",
                   Value::make_nested_array({Value::make_i32_array({1, 2}), Value::make_f32_array({1}),
                                             Value::make_nested_array({Value::make_string_array({"x"})})}));
  save("nested_arrays", nested.to_bytes());

  const std::string path = model_path();
  if (::access(path.c_str(), R_OK) != 0) GTEST_SKIP() << "model file " << path << " not found";
  // The real model's metadata and tensor names, with arrays cut to 8 entries and tensors shrunk to one block
  // per row: small, but every key and tensor type of a real file.
  auto model = File::open(path);
  Writer reduced;
  for (const auto& [key, value] : model->metadata()) {
    if (value.type() != ValueType::ARRAY || value.array_size() <= 8) {
      reduced.add_value(key, value);
    } else if (const std::vector<std::string>* strings = value.as_string_array()) {
      reduced.add_string_array(key, std::vector<std::string>(strings->begin(), strings->begin() + 8));
    } else if (value.array_type() != ValueType::ARRAY) {
      std::vector<uint8_t> raw;
      value.append_encoded(&raw);
      raw.erase(raw.begin(), raw.begin() + 12);  // element type and count
      raw.resize(8 * value_type_size(value.array_type()));
      reduced.add_value(key, Value::make_raw_array(value.array_type(), std::move(raw)));
    }
  }
  for (size_t i = 0; i < model->tensors().size() && i < 12; ++i) {
    const TensorInfo& t = model->tensors()[i];
    const GgmlTypeTraits& traits = ggml_traits(t.type);
    std::vector<int64_t> dims(t.dims.size(), 1);
    dims[0] = traits.block_size;
    reduced.add_tensor(t.name, dims, t.type, t.data, traits.block_bytes);
  }
  save("smollm2_reduced", reduced.to_bytes());
  std::vector<uint8_t> head(model->data_offset() < 4096 ? model->data_offset() : 4096);
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(head.data()), std::streamsize(head.size()));
  save("smollm2_first_4k", head);
}

}  // namespace
}  // namespace hs::gguf
