#include "model/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "util/common.h"

namespace hs {

KvCache::KvCache(const ModelConfig& c, int32_t n_ctx_max)
    : n_layer_(c.n_layer), n_head_kv_(c.n_head_kv), head_dim_(c.head_dim), n_ctx_max_(n_ctx_max) {
  HS_CHECK(n_ctx_max >= 1, "context size must be at least 1 (got %d)", n_ctx_max);
  k_.resize(n_layer_);
  v_.resize(n_layer_);
  hip_masks_.resize(n_layer_);
}

void KvCache::reserve(int32_t n) {
  HS_CHECK(n <= n_ctx_max_, "context overflow: %d positions needed but the context size is %d (raise -c)", n,
           n_ctx_max_);
  if (n <= capacity_) return;
  // Grow by 1.5x (rounded to 256 positions) so a long prefill in chunks copies O(T) in total.
  int64_t want = std::max<int64_t>(n, int64_t(capacity_) * 3 / 2);
  want = std::min<int64_t>((want + 255) / 256 * 256, n_ctx_max_);
  const int32_t new_cap = int32_t(std::max<int64_t>(want, n));
  for (auto* bufs : {&k_, &v_}) {
    for (auto& buf : *bufs) {
      std::vector<uint16_t> grown(size_t(n_head_kv_) * new_cap * head_dim_);
      for (int32_t h = 0; h < n_head_kv_ && n_past_ > 0; ++h)
        std::memcpy(grown.data() + size_t(h) * new_cap * head_dim_, buf.data() + size_t(h) * capacity_ * head_dim_,
                    size_t(n_past_) * head_dim_ * sizeof(uint16_t));
      buf.swap(grown);
    }
  }
  capacity_ = new_cap;
}

void KvCache::advance(int32_t n) {
  HS_CHECK(n >= 0 && n_past_ + n <= capacity_, "KV cache advance beyond capacity");
  n_past_ += n;
}

void KvCache::truncate(int32_t n) {
  HS_CHECK(n >= 0 && n <= n_past_, "KV cache truncate to %d beyond %d", n, n_past_);
  n_past_ = n;
  if (hip_refresh_pos_ >= n) hip_refresh_pos_ = -1;  // the cached masks were estimated for a position now gone
}

size_t KvCache::bytes() const { return size_t(2) * n_layer_ * n_head_kv_ * size_t(capacity_) * head_dim_ * 2; }

}  // namespace hs
