// Shared basics: the error type every layer throws, printf-style formatting, fp16/bf16 conversion.
#pragma once

#include <cstdarg>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace hs {

// Every user-facing failure (bad file, bad flag, prompt too long...) is an hs::Error with a one-line message.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// printf-style formatting into a std::string (g++ 12 has no <format>).
std::string strfmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

[[noreturn]] void fail(const std::string& message);

#define HS_CHECK(cond, ...)                 \
  do {                                      \
    if (!(cond)) ::hs::fail(::hs::strfmt(__VA_ARGS__)); \
  } while (0)

// IEEE half <-> float, exact for every half value (no F16C dependency in scalar code).
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);  // round to nearest even

inline float bf16_to_fp32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t fp32_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

}  // namespace hs
