// UTF-8 validation/decoding and the GPT-2 byte-level alphabet (see tokenizer_impl.h).
#include <array>
#include <string>
#include <string_view>
#include <unordered_map>

#include "model/tokenizer_impl.h"

namespace hs {
namespace tok {

namespace {

// Allowed range of the second byte for each lead byte (Unicode Table 3-7); the remaining continuation bytes
// are always 0x80..0xBF. Returns the sequence length, 0 for a byte that cannot start a sequence.
size_t lead_info(uint8_t b, uint8_t* lo, uint8_t* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (b < 0x80) return 1;
  if (b < 0xC2) return 0;  // continuation byte, or overlong 2-byte lead C0/C1
  if (b < 0xE0) return 2;
  if (b < 0xF0) {
    if (b == 0xE0) *lo = 0xA0;  // overlong
    if (b == 0xED) *hi = 0x9F;  // surrogates
    return 3;
  }
  if (b < 0xF5) {
    if (b == 0xF0) *lo = 0x90;  // overlong
    if (b == 0xF4) *hi = 0x8F;  // > U+10FFFF
    return 4;
  }
  return 0;
}

}  // namespace

size_t utf8_valid_len(std::string_view s, size_t i) {
  uint8_t lo, hi;
  const size_t n = lead_info(uint8_t(s[i]), &lo, &hi);
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const uint8_t c = uint8_t(s[i + k]);
    if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) return 0;
  }
  return n;
}

Utf8Invalid utf8_invalid_prefix(std::string_view s, size_t i) {
  uint8_t lo, hi;
  const size_t n = lead_info(uint8_t(s[i]), &lo, &hi);
  if (n <= 1) return {1, false};  // bad lead byte (n == 1 never reaches here for valid input)
  size_t k = 1;
  for (; k < n && i + k < s.size(); ++k) {
    const uint8_t c = uint8_t(s[i + k]);
    if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) return {k, false};
  }
  return {k, k < n};  // k < n: every byte present was fine, the end of s cut it off
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

uint32_t utf8_decode(std::string_view s, size_t i, size_t len) {
  const uint8_t b = uint8_t(s[i]);
  uint32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (uint8_t(s[i + k]) & 0x3F);
  return cp;
}

namespace {

struct ByteTables {
  std::array<std::string, 256> to_unicode;
  std::unordered_map<uint32_t, int> to_byte;
  ByteTables() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? uint32_t(b) : next++;
      append_utf8(to_unicode[b], cp);
      to_byte[cp] = b;
    }
  }
};

const ByteTables& byte_tables() {
  static const ByteTables tables;
  return tables;
}

}  // namespace

const std::array<std::string, 256>& byte_to_unicode() {
  return byte_tables().to_unicode;
}

int unicode_to_byte(uint32_t cp) {
  if (cp < 0x21 || cp > 0x143) return -1;  // the alphabet spans U+0021..U+0143
  const auto& m = byte_tables().to_byte;
  const auto it = m.find(cp);
  return it == m.end() ? -1 : it->second;
}

}  // namespace tok

bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = tok::utf8_valid_len(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

}  // namespace hs
