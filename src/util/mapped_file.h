// Read-only memory map of a whole file (RAII). Model weights are used in place from the map.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace hs {

class MappedFile {
 public:
  // Throws hs::Error ("cannot open model file 'x': No such file or directory") on failure.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Drops the whole pages inside [p, p + n) from this process's resident memory (madvise DONTNEED; the map
  // is private and read-only, so a later read faults them back in from the file). Parts outside the map
  // and partial pages at the ends are left alone.
  void release_pages(const void* p, size_t n) const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace hs
