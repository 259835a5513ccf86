// Causal attention over an fp16 KV cache on the CPU, built from one reusable piece: an online-softmax state
// (m, l, o) per query row that is updated one key block at a time and merged across disjoint key sets.
//
// Dense attention (attention_dense) packs the G query heads of one KV group for a few consecutive tokens into
// a QueryTile (so every fp16 K/V block converted to fp32 is reused by G heads), runs attention_update over
// the visible key blocks, and finalizes. Long key ranges with few tiles (decode) are split across threads
// (split-K) and the partial states merged. HiP attention drives the same QueryTile / SoftmaxState /
// attention_update over its sink, window and selected key blocks, with per-row key ranges for its masks.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>

#include "util/thread_pool.h"

namespace hs {

struct AttentionParams {
  // Q: n_q rows of one sequence; row i holds n_head heads of head_dim floats at q + i*q_stride + h*head_dim.
  const float* q = nullptr;
  int64_t q_stride = 0;
  // K/V cache of that sequence, IEEE fp16, positions [0, n_kv). Contiguous (page_table == nullptr): element
  // (kv head g, position p, dim d) at k + g*kv_head_stride + p*kv_pos_stride + d (same for v).
  // Paged: position p lives in page page_table[p / page_size] at row p % page_size, element at
  //   k + page_table[p / page_size]*kv_page_stride + g*kv_head_stride + (p % page_size)*kv_pos_stride + d.
  // A contiguous cache is the one-page case; both read the same keys in the same order, so results are
  // bit-identical. page_size is a multiple of kAttnKeyBlock (a key block never straddles two pages).
  const uint16_t* k = nullptr;
  const uint16_t* v = nullptr;
  int64_t kv_head_stride = 0;
  int64_t kv_pos_stride = 0;
  const int32_t* page_table = nullptr;  // [ceil(n_kv / page_size)] page ids, or nullptr: contiguous
  int32_t page_size = 0;
  int64_t kv_page_stride = 0;
  float* out = nullptr;  // same layout as q
  int64_t out_stride = 0;
  // Query i sits at position q_pos0 + i and sees keys [0, q_pos0 + i] (causal); q_pos0 + n_q <= n_kv.
  int32_t n_q = 0, n_kv = 0, q_pos0 = 0;
  // GQA: head h reads kv head h / (n_head / n_kv_head). head_dim: any multiple of 16 up to kMaxHeadDim.
  int32_t n_head = 0, n_kv_head = 0, head_dim = 0;
  float scale = 0.0f;  // usually 1/sqrt(head_dim)
};

// Dense causal attention, memory O(threads * (tile rows * head_dim + key block)); never n_q x n_kv.
void attention_dense(const AttentionParams& p, ThreadPool& pool);
// Several independent problems (e.g. one decode row for each of many sequences) in one parallel region over
// (problem, kv head, query tile, key range). The problems' outputs must not overlap.
void attention_dense_batch(const AttentionParams* problems, int n_problems, ThreadPool& pool);
// The obvious O(n_q * n_kv) reference in double precision (scores materialized). Tests only.
void attention_naive(const AttentionParams& p);

inline constexpr int32_t kMaxHeadDim = 512;
inline constexpr int32_t kAttnKeyBlock = 64;  // keys converted and scored together by attention_update

// Grow-only float buffer aligned to 64 bytes (contents are not preserved when it grows).
class AlignedFloats {
 public:
  void reserve(size_t n);  // ensures capacity >= n floats
  float* data() { return p_.get(); }
  const float* data() const { return p_.get(); }
  size_t capacity() const { return cap_; }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> p_;
  size_t cap_ = 0;
};

// Online-softmax partial state of n_rows query rows x dim values over some key set S (each row its own S).
// With s_rj = scale * q_r . k_j (the scaled logit, natural-log domain):
//   m[r] = max_{j in S} s_rj                    (-inf if S is empty)
//   l[r] = sum_{j in S} exp(s_rj - m[r])        (0 if S is empty)
//   o[r] = sum_{j in S} exp(s_rj - m[r]) * v_j  (dim floats, unnormalized; 0 if S is empty)
// Merging the states of disjoint key sets gives the state of their union (up to rounding), so partials over
// sink / window / selected blocks / split-K ranges combine without special cases. finalize() divides o by l.
class SoftmaxState {
 public:
  SoftmaxState() = default;
  SoftmaxState(int32_t n_rows, int32_t dim) { init(n_rows, dim); }

  void init(int32_t n_rows, int32_t dim);  // sizes (allocating only to grow) and reset()s
  void reset();                            // the empty key set: m = -inf, l = 0, o = 0
  // this := state of (this key set) U (other's), row by row; same n_rows and dim. Empty sides (m = -inf) are
  // exact no-ops, so fully masked pieces never produce NaN.
  void merge(const SoftmaxState& other);
  // The same for one row: row r := row r of this U row other_row of other (e.g. a head's row of a GQA group's
  // state into that head's own one-row state).
  void merge_row(int32_t r, const SoftmaxState& other, int32_t other_row);
  // out[d] = o[r][d] / l[r]; a row that saw no key (l == 0) gives zeros.
  void finalize_row(int32_t r, float* out) const;
  void finalize(float* out, int64_t out_stride) const;  // row r to out + r*out_stride

  int32_t n_rows() const { return n_rows_; }
  int32_t dim() const { return dim_; }
  float* m() { return m_.data(); }
  const float* m() const { return m_.data(); }
  float* l() { return l_.data(); }
  const float* l() const { return l_.data(); }
  float* o_row(int32_t r) { return o_.data() + int64_t(r) * dim_; }  // rows are dim apart, 64-byte aligned
  const float* o_row(int32_t r) const { return o_.data() + int64_t(r) * dim_; }

 private:
  int32_t n_rows_ = 0, dim_ = 0;
  AlignedFloats m_, l_, o_;
};

// The query side of a tile: n_rows query vectors, pre-multiplied by the softmax scale and packed (row r at
// row(r), dim floats), and the key range [key_lo(r), key_hi(r)) each row may see (causal limit, HiP window).
// Rows can come from different heads and tokens as long as they read the same KV head.
class QueryTile {
 public:
  void init(int32_t n_rows, int32_t dim);  // dim: multiple of 16, <= kMaxHeadDim
  // Row r := scale * q[0..dim), seeing keys [key_lo, key_hi).
  void set_row(int32_t r, const float* q, float scale, int32_t key_lo, int32_t key_hi);
  void set_key_range(int32_t r, int32_t key_lo, int32_t key_hi) {
    lo_[r] = key_lo;
    hi_[r] = key_hi;
  }

  int32_t n_rows() const { return n_rows_; }
  int32_t dim() const { return dim_; }
  const float* row(int32_t r) const { return q_.data() + int64_t(r) * dim_; }
  int32_t key_lo(int32_t r) const { return lo_[r]; }
  int32_t key_hi(int32_t r) const { return hi_[r]; }

 private:
  int32_t n_rows_ = 0, dim_ = 0;
  AlignedFloats q_;
  std::unique_ptr<int32_t[]> lo_, hi_;
  int32_t cap_rows_ = 0;
};

// One KV head of a cache (fp16, dim values per position). Contiguous: key/value at position p at
// k + p*pos_stride, v + p*pos_stride. Paged (page_table set): at k + page_table[p / page_size]*page_stride +
// (p % page_size)*pos_stride (k, v point at this head's rows in page 0).
struct KvHeadView {
  const uint16_t* k = nullptr;
  const uint16_t* v = nullptr;
  int64_t pos_stride = 0;
  const int32_t* page_table = nullptr;
  int32_t page_size = 0;
  int64_t page_stride = 0;

  int64_t offset(int32_t pos) const {
    if (!page_table) return int64_t(pos) * pos_stride;
    return int64_t(page_table[pos / page_size]) * page_stride + int64_t(pos % page_size) * pos_stride;
  }
  const uint16_t* key(int32_t pos) const { return k + offset(pos); }
  const uint16_t* value(int32_t pos) const { return v + offset(pos); }
};

// Tiles as attention_dense builds them, for callers that drive attention_update themselves (HiP). Queries
// [tok0, tok0 + n_tok) of p for heads [head0, head0 + n_heads) (which must share one kv head) go to row
// i*n_heads + j (token-major), scaled by p.scale; row i*n_heads + j sees its causal range
// [0, p.q_pos0 + tok0 + i + 1).
void pack_query_tile(const AttentionParams& p, int32_t head0, int32_t n_heads, int32_t tok0, int32_t n_tok,
                     QueryTile& qt);
// Finalizes st's rows (laid out as pack_query_tile made them) into p.out.
void write_query_tile(const AttentionParams& p, int32_t head0, int32_t n_heads, int32_t tok0, int32_t n_tok,
                      const SoftmaxState& st);
inline KvHeadView kv_head_view(const AttentionParams& p, int32_t kv_head) {
  return {p.k + kv_head * p.kv_head_stride, p.v + kv_head * p.kv_head_stride, p.kv_pos_stride,
          p.page_table, p.page_size, p.kv_page_stride};
}

// The inner block loop: adds the keys [k0, k1) of kv to st, row r taking only the keys in
// [key_lo(r), key_hi(r)). Keys go in blocks of kAttnKeyBlock: fp16 -> fp32 once per block, scores for all
// rows, online-softmax update with exp_avx2 (<= 3e-7 relative), P.V accumulation; AVX2, or AVX-512 where
// cpu::simd_path() says so. Blocks no row can see are skipped without being read. st must be init()ed with
// q's n_rows and dim and may already hold the state of keys disjoint from these. Thread-safe for distinct st
// (the scratch is thread-local).
void attention_update(SoftmaxState& st, const QueryTile& q, const KvHeadView& kv, int32_t k0, int32_t k1);
// The same over an explicit list of key positions, sorted ascending, e.g. HiP's selected blocks; row r still
// takes only the positions in [key_lo(r), key_hi(r)).
void attention_update_gather(SoftmaxState& st, const QueryTile& q, const KvHeadView& kv, const int32_t* keys,
                             int32_t n_keys);

}  // namespace hs
