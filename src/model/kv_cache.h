// Per-sequence key/value cache, fp16 (IEEE half), the only state that grows with context length.
//
// Layout per layer: K and V each [n_head_kv][capacity][head_dim], so one KV head's keys are contiguous over
// positions (what the attention kernels stream). Capacity grows geometrically up to n_ctx_max, so memory
// tracks the tokens actually held (O(T)), not the configured context.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"
#include "ops/hip_attention.h"

namespace hs {

class KvCache {
 public:
  KvCache(const ModelConfig& config, int32_t n_ctx_max);

  int32_t n_past() const { return n_past_; }  // positions [0, n_past) hold valid K/V
  int32_t n_ctx_max() const { return n_ctx_max_; }
  int32_t capacity() const { return capacity_; }

  // Makes room for positions [0, n); throws hs::Error if n > n_ctx_max.
  void reserve(int32_t n);
  // Marks positions [n_past, n_past + n) as written (after the forward pass stored them).
  void advance(int32_t n);
  // Forgets positions >= n (n <= n_past): rewinds a sequence, e.g. to reuse a common prefix.
  void truncate(int32_t n);
  void clear() { truncate(0); }

  uint16_t* k(int32_t layer) { return k_[layer].data(); }
  uint16_t* v(int32_t layer) { return v_[layer].data(); }
  int64_t head_stride() const { return int64_t(capacity_) * head_dim_; }  // elements between KV heads
  int64_t pos_stride() const { return head_dim_; }                        // elements between positions

  size_t bytes() const;  // memory held

  // HiP decode state: per layer, the masks estimated at the last refresh (one single-row query block per
  // head), and the position of that refresh (-1: none valid; prefill and truncation invalidate it).
  HipMask& hip_mask(int32_t layer) { return hip_masks_[layer]; }
  int32_t hip_refresh_pos() const { return hip_refresh_pos_; }
  void set_hip_refresh_pos(int32_t pos) { hip_refresh_pos_ = pos; }

 private:
  int32_t n_layer_, n_head_kv_, head_dim_;
  int32_t n_ctx_max_;
  int32_t capacity_ = 0;
  int32_t n_past_ = 0;
  std::vector<std::vector<uint16_t>> k_, v_;
  std::vector<HipMask> hip_masks_;
  int32_t hip_refresh_pos_ = -1;
};

}  // namespace hs
