// Per-thread, grow-only, 64-byte aligned scratch buffers shared by the CPU matmul kernels. Each user owns
// distinct slots, so the int8 and fp32-activation paths never hand each other's buffers out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hs::cpu {

enum ScratchSlot : int {
  kScratchInt8Activations = 0,  // the caller's quantized activations (read by every worker)
  kScratchInt8Weights,          // each thread's packed weight tiles
  kScratchF32Activations,       // the caller's packed fp32 token tiles (read by every worker)
  kScratchF32Panel,             // each thread's dequantized weight panel
  kScratchF32Rows,              // each thread's row-major dequantized rows (generic types)
  kScratchSlots
};

constexpr size_t align64(size_t n) {
  return (n + 63) & ~size_t(63);
}

// At least `bytes` bytes, 64-byte aligned, valid until the same thread asks for the same slot again.
inline void* thread_scratch_bytes(ScratchSlot slot, size_t bytes) {
  thread_local std::vector<uint8_t> buffers[kScratchSlots];
  std::vector<uint8_t>& b = buffers[slot];
  if (b.size() < bytes + 64) b.resize(bytes + 64);
  return reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(b.data()) + 63) & ~uintptr_t(63));
}

}  // namespace hs::cpu
