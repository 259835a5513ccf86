#include "model/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "util/common.h"

namespace hs {

// ---------------------------------------------------------------------------------------------------------------
// Page pool

KvPagePool::KvPagePool(const ModelConfig& c, int32_t page_size, int32_t n_pages)
    : n_layer_(c.n_layer), n_head_kv_(c.n_head_kv), head_dim_(c.head_dim), page_size_(page_size),
      n_pages_(n_pages) {
  HS_CHECK(page_size > 0 && page_size % kAttnKeyBlock == 0, "KV page size %d must be a positive multiple of %d",
           page_size, kAttnKeyBlock);
  HS_CHECK(n_pages >= 1, "the KV page pool needs at least one page (got %d)", n_pages);
  const size_t per_layer = size_t(n_pages) * size_t(page_stride());
  for (int32_t l = 0; l < n_layer_; ++l) {
    // Mapped, not touched: pages become resident when first written.
    k_.emplace_back(per_layer * sizeof(uint16_t));
    v_.emplace_back(per_layer * sizeof(uint16_t));
  }
  free_.resize(size_t(n_pages));
  is_free_.assign(size_t(n_pages), 1);
  for (int32_t i = 0; i < n_pages; ++i) free_[size_t(i)] = n_pages - 1 - i;
  n_free_.store(n_pages);
}

size_t KvPagePool::bytes() const { return size_t(2) * n_layer_ * n_pages_ * size_t(page_stride()) * 2; }

bool KvPagePool::allocate(int32_t n, std::vector<int32_t>& out) {
  if (n < 0 || size_t(n) > free_.size()) return false;
  for (int32_t i = 0; i < n; ++i) {
    out.push_back(free_.back());
    is_free_[size_t(free_.back())] = 0;
    free_.pop_back();
  }
  n_free_.store(int32_t(free_.size()));
  return true;
}

void KvPagePool::release(const std::vector<int32_t>& pages) {
  for (int32_t p : pages) {  // check all first: a bad list changes nothing
    HS_CHECK(p >= 0 && p < n_pages_, "KV page %d is not in the pool of %d pages", p, n_pages_);
    HS_CHECK(!is_free_[size_t(p)], "KV page %d released twice", p);
  }
  for (int32_t p : pages) {
    is_free_[size_t(p)] = 1;
    free_.push_back(p);
  }
  // Highest first, so allocate() hands out the lowest ids.
  std::sort(free_.begin(), free_.end(), std::greater<int32_t>());
  n_free_.store(int32_t(free_.size()));
}

// ---------------------------------------------------------------------------------------------------------------
// Cache of one sequence

KvCache::KvCache(const ModelConfig& c, int32_t n_ctx_max)
    : n_layer_(c.n_layer), n_head_kv_(c.n_head_kv), head_dim_(c.head_dim), n_ctx_max_(n_ctx_max) {
  HS_CHECK(n_ctx_max >= 1, "context size must be at least 1 (got %d)", n_ctx_max);
  k_.resize(n_layer_);
  v_.resize(n_layer_);
  hip_masks_.resize(n_layer_);
}

KvCache::KvCache(const ModelConfig& c, int32_t n_ctx_max, KvPagePool& pool) : KvCache(c, n_ctx_max) {
  pool_ = &pool;
}

KvCache::~KvCache() { release(); }

void KvCache::reserve(int32_t n) {
  HS_CHECK(n <= n_ctx_max_, "context overflow: %d positions needed but the context size is %d (raise -c)", n,
           n_ctx_max_);
  if (n <= capacity_) return;
  if (pool_) {
    const int32_t ps = pool_->page_size();
    const int32_t want = (n + ps - 1) / ps - int32_t(block_table_.size());
    HS_CHECK(pool_->allocate(want, block_table_), "the KV page pool is full (%d pages needed, %d free)", want,
             pool_->n_free());
    capacity_ = int32_t(block_table_.size()) * ps;
    return;
  }
  // Grow by 1.5x (rounded to 256 positions) so a long prefill in chunks copies O(T) in total.
  int64_t want = std::max<int64_t>(n, int64_t(capacity_) * 3 / 2);
  want = std::min<int64_t>((want + 255) / 256 * 256, n_ctx_max_);
  const int32_t new_cap = int32_t(std::max<int64_t>(want, n));
  for (auto* bufs : {&k_, &v_}) {
    for (auto& buf : *bufs) {
      HugeBuffer grown(size_t(n_head_kv_) * new_cap * head_dim_ * sizeof(uint16_t));
      for (int32_t h = 0; h < n_head_kv_ && n_past_ > 0; ++h)
        std::memcpy(grown.as<uint16_t>() + size_t(h) * new_cap * head_dim_,
                    buf.as<uint16_t>() + size_t(h) * capacity_ * head_dim_, size_t(n_past_) * head_dim_ * sizeof(uint16_t));
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

void KvCache::release() {
  truncate(0);
  if (pool_) {
    pool_->release(block_table_);
    block_table_.clear();
  } else {
    for (auto& b : k_) b = HugeBuffer();
    for (auto& b : v_) b = HugeBuffer();
  }
  capacity_ = 0;
}

void KvCache::bind_attention(int32_t layer, AttentionParams& p) {
  p.k = k_base(layer);
  p.v = v_base(layer);
  p.kv_pos_stride = head_dim_;
  if (pool_) {
    p.kv_head_stride = pool_->head_stride();
    p.page_table = block_table_.data();
    p.page_size = pool_->page_size();
    p.kv_page_stride = pool_->page_stride();
  } else {
    p.kv_head_stride = head_stride();
    p.page_table = nullptr;
    p.page_size = 0;
    p.kv_page_stride = 0;
  }
}

uint16_t* KvCache::k(int32_t layer) {
  HS_CHECK(!pool_, "KvCache::k(): a paged cache has no contiguous layout (use bind_attention)");
  return k_[layer].as<uint16_t>();
}

uint16_t* KvCache::v(int32_t layer) {
  HS_CHECK(!pool_, "KvCache::v(): a paged cache has no contiguous layout (use bind_attention)");
  return v_[layer].as<uint16_t>();
}

size_t KvCache::bytes() const { return size_t(2) * n_layer_ * n_head_kv_ * size_t(capacity_) * head_dim_ * 2; }

}  // namespace hs
