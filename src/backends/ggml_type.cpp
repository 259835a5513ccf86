#include "backends/ggml_type.h"

#include "util/common.h"

namespace hs {

namespace {
struct Entry {
  uint32_t id;
  GgmlTypeTraits traits;
};
// Sizes from ggml-common.h's static_asserts (FORMATS.md 4.4).
constexpr Entry kTypes[] = {
    {0, {"F32", 1, 4, true}},       {1, {"F16", 1, 2, true}},        {2, {"Q4_0", 32, 18, true}},
    {3, {"Q4_1", 32, 20, true}},    {6, {"Q5_0", 32, 22, false}},    {7, {"Q5_1", 32, 24, false}},
    {8, {"Q8_0", 32, 34, true}},    {9, {"Q8_1", 32, 36, false}},    {10, {"Q2_K", 256, 84, false}},
    {11, {"Q3_K", 256, 110, false}}, {12, {"Q4_K", 256, 144, true}}, {13, {"Q5_K", 256, 176, true}},
    {14, {"Q6_K", 256, 210, true}}, {15, {"Q8_K", 256, 292, false}}, {30, {"BF16", 1, 2, true}},
};
}  // namespace

const GgmlTypeTraits* ggml_type_traits(uint32_t type_id) {
  for (const Entry& e : kTypes)
    if (e.id == type_id) return &e.traits;
  return nullptr;
}

const GgmlTypeTraits& ggml_traits(GgmlType t) {
  const GgmlTypeTraits* tr = ggml_type_traits(uint32_t(t));
  HS_CHECK(tr != nullptr, "unknown ggml type id %u", uint32_t(t));
  return *tr;
}

std::string ggml_type_name(uint32_t type_id) {
  const GgmlTypeTraits* tr = ggml_type_traits(type_id);
  return tr ? std::string(tr->name) : strfmt("type#%u", type_id);
}

bool ggml_row_bytes(GgmlType t, int64_t n, size_t* bytes) {
  const GgmlTypeTraits* tr = ggml_type_traits(uint32_t(t));
  if (!tr || n < 0 || n % tr->block_size != 0) return false;
  const unsigned __int128 b = (unsigned __int128)(n / tr->block_size) * tr->block_bytes;
  if (b > (unsigned __int128)SIZE_MAX / 2) return false;
  *bytes = size_t(b);
  return true;
}

}  // namespace hs
