#include "util/huge_buffer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

namespace hs {
namespace {

TEST(HugeBuffer, ZeroFilledWritableAndMovable) {
  for (size_t bytes : {size_t(1), size_t(4096) + 3, (size_t(2) << 20) - 1, (size_t(5) << 20) + 7}) {
    HugeBuffer b(bytes);
    ASSERT_NE(b.data(), nullptr);
    EXPECT_EQ(b.size(), bytes);
    const auto* c = b.as<unsigned char>();
    size_t nonzero = 0;
    for (size_t i = 0; i < bytes; i += 997) nonzero += c[i] != 0;
    EXPECT_EQ(nonzero, 0u) << bytes;
    std::memset(b.data(), 0xab, bytes);  // every byte writable (ASan/segfault otherwise)
    if (bytes >= (size_t(2) << 20))
      EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % (size_t(2) << 20), 0u) << "huge buffers start on a 2 MiB boundary";
    HugeBuffer moved(std::move(b));
    EXPECT_EQ(b.data(), nullptr);
    EXPECT_EQ(moved.as<unsigned char>()[bytes - 1], 0xab);
    HugeBuffer assigned;
    assigned = std::move(moved);
    EXPECT_EQ(assigned.as<unsigned char>()[0], 0xab);
  }
  HugeBuffer empty(0);
  EXPECT_EQ(empty.data(), nullptr);
}

}  // namespace
}  // namespace hs
