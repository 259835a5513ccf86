// Large zero-filled buffers on transparent huge pages where the kernel offers them.
//
// Why: attention reads keys scattered over caches of many megabytes (HiP's selected blocks, the estimator's
// representatives), one layer after another, so in the model they are never in the CPU's caches. With 4 KiB
// pages most such reads also miss the TLB. bench/hip_decode_cold_bench measured HiP decode at 8K with every
// layer's cache cold: 2 MiB pages cut a cached-mask step by 12 % (2 threads) to 25 % (1 thread). Debian's
// default THP mode is "madvise", so anonymous memory gets huge pages only when asked. The request is advisory:
// where THP is off the buffer simply has ordinary pages; HIPSERVE_HUGE_PAGES=0 turns the request off. Memory is committed as it is touched (mmap), so a
// large reservation costs nothing until used.
#pragma once

#include <cstddef>
#include <utility>

namespace hs {

class HugeBuffer {
 public:
  HugeBuffer() = default;
  // Zero-filled; throws hs::Error when the memory cannot be mapped. huge_pages = false: the same mapping without
  // the THP request (benchmarks compare the two).
  explicit HugeBuffer(size_t bytes, bool huge_pages = true);
  ~HugeBuffer();
  HugeBuffer(HugeBuffer&& o) noexcept { swap(o); }
  HugeBuffer& operator=(HugeBuffer&& o) noexcept {
    HugeBuffer tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;

  void* data() const { return data_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t size() const { return size_; }  // bytes asked for (the mapping may be rounded up)
  void swap(HugeBuffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(mapped_, o.mapped_);
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;
};

}  // namespace hs
