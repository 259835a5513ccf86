// GGML tensor types as stored in GGUF files: ids, block sizes and bytes per block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace hs {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
};

struct GgmlTypeTraits {
  const char* name;
  int64_t block_size;   // values per block
  size_t block_bytes;   // bytes per block
  bool supported;       // we can dequantize it
};

// Traits for a raw type id read from a file; nullptr for ids we do not know.
const GgmlTypeTraits* ggml_type_traits(uint32_t type_id);
const GgmlTypeTraits& ggml_traits(GgmlType t);  // t must be a known id
std::string ggml_type_name(uint32_t type_id);   // "Q4_1", or "type#NN" for unknown ids

// Bytes for n values of type t; n must be a multiple of the block size. Returns false on overflow or
// a partial block (so a file-provided shape can be rejected cleanly).
bool ggml_row_bytes(GgmlType t, int64_t n, size_t* bytes);

}  // namespace hs
