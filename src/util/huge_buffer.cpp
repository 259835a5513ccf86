#include "util/huge_buffer.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "util/common.h"

namespace hs {

namespace {
constexpr size_t kHugePage = size_t(2) << 20;
// HIPSERVE_HUGE_PAGES=0 turns the request off (e.g. where THP compaction stalls are unwelcome, or to measure).
bool huge_pages_wanted() {
  static const bool wanted = [] {
    const char* e = std::getenv("HIPSERVE_HUGE_PAGES");
    return !(e && std::string(e) == "0");
  }();
  return wanted;
}
}  // namespace

HugeBuffer::HugeBuffer(size_t bytes, bool huge_pages) {
  if (bytes == 0) return;
  // A buffer of a huge page or more: whole huge pages at a 2 MiB-aligned address (map one page more, unmap the
  // unaligned head and the tail), so that every page of it can be huge. Smaller ones: a plain mapping.
  const bool huge = bytes >= kHugePage;
  const size_t len = huge ? (bytes + kHugePage - 1) / kHugePage * kHugePage : bytes;
  const size_t ask = huge ? len + kHugePage : len;
  void* p = mmap(nullptr, ask, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail(strfmt("cannot allocate %zu bytes: %s", bytes, std::strerror(errno)));
  char* base = static_cast<char*>(p);
  if (huge) {
    char* aligned = base + (kHugePage - reinterpret_cast<uintptr_t>(base) % kHugePage) % kHugePage;
    if (aligned > base) munmap(base, size_t(aligned - base));
    const size_t tail = size_t(base + ask - (aligned + len));
    if (tail > 0) munmap(aligned + len, tail);
    base = aligned;
#ifdef MADV_HUGEPAGE
    if (huge_pages && huge_pages_wanted()) madvise(base, len, MADV_HUGEPAGE);  // advisory: if refused, 4 KiB pages
#endif
  }
  data_ = base;
  size_ = bytes;
  mapped_ = len;
}

HugeBuffer::~HugeBuffer() {
  if (data_) munmap(data_, mapped_);
}

}  // namespace hs
