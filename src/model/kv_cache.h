// Key/value cache of one sequence, fp16 (IEEE half), the only state that grows with context length. Two
// storages behind one interface:
//
//  - Contiguous (run, chat, bench, eval): per layer, K and V each [n_head_kv][capacity][head_dim], so one KV
//    head's keys are contiguous over positions. Capacity grows geometrically up to n_ctx_max, so memory tracks
//    the tokens actually held (O(T)), not the configured context.
//  - Paged (the server): pages of a KvPagePool shared by every sequence; the sequence owns a block table
//    (page ids in position order). Position p is row p % page_size of page block_table[p / page_size].
//
// The attention ops read either through AttentionParams (see ops/attention.h), and read the same keys in the
// same order, so a paged sequence computes bit-for-bit what a contiguous one does.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "model/config.h"
#include "ops/attention.h"
#include "ops/hip_attention.h"
#include "util/huge_buffer.h"

namespace hs {

// Fixed-size pages of K/V shared by many sequences. Per layer one K and one V array laid out
// [n_pages][n_head_kv][page_size][head_dim] fp16, so inside a page one KV head's keys are contiguous (what the
// attention kernels stream, 64-key blocks never cross a page). Memory is allocated up front but not touched,
// so the resident size follows the pages actually written. Not thread-safe: one owner (the engine thread)
// allocates and releases; n_free() may be read from any thread.
class KvPagePool {
 public:
  // page_size: a positive multiple of kAttnKeyBlock. Throws hs::Error otherwise.
  KvPagePool(const ModelConfig& config, int32_t page_size, int32_t n_pages);

  int32_t page_size() const { return page_size_; }
  int32_t n_pages() const { return n_pages_; }
  int32_t n_free() const { return n_free_.load(std::memory_order_relaxed); }
  size_t bytes() const;  // memory reserved for all pages

  // Appends n free page ids to `out` and returns true, or returns false and takes nothing if fewer than n are
  // free. Pages come lowest id first (freed pages are reused first, so the footprint stays compact).
  bool allocate(int32_t n, std::vector<int32_t>& out);
  void release(const std::vector<int32_t>& pages);

  uint16_t* k(int32_t layer) { return k_[layer].as<uint16_t>(); }
  uint16_t* v(int32_t layer) { return v_[layer].as<uint16_t>(); }
  int64_t page_stride() const { return int64_t(n_head_kv_) * page_size_ * head_dim_; }  // elements per page
  int64_t head_stride() const { return int64_t(page_size_) * head_dim_; }  // between KV heads in a page
  int64_t pos_stride() const { return head_dim_; }

 private:
  int32_t n_layer_, n_head_kv_, head_dim_;
  int32_t page_size_, n_pages_;
  std::vector<HugeBuffer> k_, v_;  // per layer; huge pages (util/huge_buffer.h), resident when first written
  std::vector<int32_t> free_;  // free page ids, highest first (allocation pops from the back)
  std::vector<uint8_t> is_free_;  // [n_pages], catches double releases
  std::atomic<int32_t> n_free_{0};
};

class KvCache {
 public:
  // Contiguous, owning its memory.
  KvCache(const ModelConfig& config, int32_t n_ctx_max);
  // Paged: pages come from `pool` (which must outlive the cache) as reserve() needs them.
  KvCache(const ModelConfig& config, int32_t n_ctx_max, KvPagePool& pool);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  int32_t n_past() const { return n_past_; }  // positions [0, n_past) hold valid K/V
  int32_t n_ctx_max() const { return n_ctx_max_; }
  int32_t capacity() const { return capacity_; }
  bool paged() const { return pool_ != nullptr; }

  // Makes room for positions [0, n); throws hs::Error if n > n_ctx_max or (paged) the pool has too few free
  // pages (then nothing is taken).
  void reserve(int32_t n);
  // Marks positions [n_past, n_past + n) as written (after the forward pass stored them).
  void advance(int32_t n);
  // Forgets positions >= n (n <= n_past): rewinds a sequence, e.g. to reuse a common prefix. Keeps memory.
  void truncate(int32_t n);
  void clear() { truncate(0); }
  // Forgets everything and gives the memory back (paged: the pages return to the pool).
  void release();

  // Row of (layer, kv head, position) for K and V: head_dim fp16 values.
  uint16_t* k_row(int32_t layer, int32_t kv_head, int32_t pos) { return k_base(layer) + offset(kv_head, pos); }
  uint16_t* v_row(int32_t layer, int32_t kv_head, int32_t pos) { return v_base(layer) + offset(kv_head, pos); }
  // Fills the cache fields of AttentionParams (k, v, strides, page table) for `layer`.
  void bind_attention(int32_t layer, AttentionParams& p);

  // Contiguous caches only (tools that walk the cache directly): the layer's K / V base and strides.
  uint16_t* k(int32_t layer);
  uint16_t* v(int32_t layer);
  int64_t head_stride() const { return int64_t(capacity_) * head_dim_; }  // elements between KV heads
  int64_t pos_stride() const { return head_dim_; }                        // elements between positions

  const std::vector<int32_t>& block_table() const { return block_table_; }  // paged: page ids by position
  size_t bytes() const;  // memory held

  // HiP decode state: per layer, the masks estimated at the last refresh (one single-row query block per
  // head), and the position of that refresh (-1: none valid; prefill and truncation invalidate it).
  HipMask& hip_mask(int32_t layer) { return hip_masks_[layer]; }
  int32_t hip_refresh_pos() const { return hip_refresh_pos_; }
  void set_hip_refresh_pos(int32_t pos) { hip_refresh_pos_ = pos; }

 private:
  uint16_t* k_base(int32_t layer) { return pool_ ? pool_->k(layer) : k_[layer].as<uint16_t>(); }
  uint16_t* v_base(int32_t layer) { return pool_ ? pool_->v(layer) : v_[layer].as<uint16_t>(); }
  int64_t offset(int32_t kv_head, int32_t pos) const {
    if (!pool_) return int64_t(kv_head) * capacity_ * head_dim_ + int64_t(pos) * head_dim_;
    const int32_t ps = pool_->page_size();
    return int64_t(block_table_[pos / ps]) * pool_->page_stride() + kv_head * pool_->head_stride() +
           int64_t(pos % ps) * head_dim_;
  }

  int32_t n_layer_, n_head_kv_, head_dim_;
  int32_t n_ctx_max_;
  int32_t capacity_ = 0;
  int32_t n_past_ = 0;
  std::vector<HugeBuffer> k_, v_;  // contiguous storage, per layer, on huge pages (util/huge_buffer.h)
  KvPagePool* pool_ = nullptr;                // paged storage
  std::vector<int32_t> block_table_;
  std::vector<HipMask> hip_masks_;
  int32_t hip_refresh_pos_ = -1;
};

}  // namespace hs
