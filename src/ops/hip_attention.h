// HiP attention (ICLR 2025, "hierarchically pruned attention", block-approximated form) on the CPU: for every
// (query head, query block) a hierarchical top-k search over key blocks estimates which k keys score highest,
// then block-sparse attention runs over those keys plus an always-kept sink and sliding window.
// Specification: /work/shared/docs/HIP_REFERENCE.md sections 2, 3 and 7; what this file decides on its own
// (tie rule, partial query blocks, decode refresh overlap, tail fix) is listed below.
//
// Positions are 0-based; the query at position t sees keys 0..t. Per row t the keys split into three disjoint
// sets, so no key counts twice:
//   sink     [0, n_sink)                     keys <= t - w only (the rest are in the window)
//   selected the mask's blocks (>= n_sink)   keys <= t - w only
//   window   (t - w, t]
//
// Mask estimation of query block m (rows [m*b_q, min((m+1)*b_q, n_q)) of the call, last row at t_max):
//  - searchable range R = [n_sink, hi) with hi = t_max + 1 - w; if |R| <= k every key block of R is taken;
//  - otherwise N = ceil(|R| / b_k) key blocks (relative to n_sink) are cut into K_b = k / b_k aligned nodes
//    (A = ceil(2^floor(log2 N) / K_b), boundary_j = min(floor(floor(j*N/K_b) / A) * A, N)), and each
//    iteration halves every node (a size-1 node passes through as itself), scores every child by its center
//    key block r = c + floor(h/2) and keeps the K_b best children over all nodes together, until all nodes
//    are single blocks; the K_b block indices are returned ascending.
//  - Child score: max over the sampled rows i and the sampled keys j of the representative block of the fp32
//    dot q_i . k_j (unscaled q: the softmax scale is positive and cannot change the order), where a key later
//    than t_i - w scores -32000 for row i (and is not read). Fast and reference estimators accumulate the dot
//    in the same order, so their scores agree bit for bit and so do their selections: with R >= 8 sampled
//    rows one FMA chain over d = 0..dim-1 (the SIMD kernel puts rows in lanes), with R < 8 (decode) 8 partial
//    sums, lane l over d = l mod 8, reduced as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)) (dims in lanes).
//  - Sampled rows: the last row of each b_sq group, m*b_q + i*b_sq + (b_sq-1), i < b_q/b_sq, as far as the
//    block has rows; a partial block (the end of a chunk, a decode row) whose last row is not among them also
//    samples its last row, so the row that defines R always votes.
//  - Sampled keys of block r: n_sink + r*b_k + j*b_sk + (b_sk-1), j < b_k/b_sk.
//
// Decisions and deviations from the reference / the official code [C]:
//  - Tie rule (top-K_b selection): higher score first, then the lower child start block. -0 and +0 are equal.
//  - Tail fix: the last initial boundary is N itself ([C] rounds it down to a multiple of A as well, leaving
//    up to A-1 blocks just behind the window that can never be selected); so the last node may hold up to
//    3A-1 blocks, which the halving handles like any other size (at worst one more iteration, in which the
//    single-block nodes pass through and only that node's descendants are scored).
//  - n_sink must be a multiple of b_k, so that the searchable blocks are aligned key blocks of the cache
//    (block j = keys [j*b_k, (j+1)*b_k)); the last block of R may reach past hi: its keys beyond t - w are
//    masked in scoring and attention like any other.
//  - Decode (a call with n_q == 1) closes the trailing-edge gap of a cached mask (reference section 3): the
//    estimate runs with the window shrunk by refresh - 1 tokens, i.e. hi = t0 + 1 - w + (refresh - 1) and a
//    key scores for the row iff it is <= t0 - w + (refresh - 1). Blocks selected in that overlap add nothing
//    at step t0 (the window has those keys and selected keys count only up to t - w), but as the window
//    slides over the next refresh - 1 steps the keys leaving it stay attended if their blocks were selected.
//    With refresh = 1 decode estimates exactly like prefill.
//  - [C]'s "an exactly-zero score means masked" quirk is not copied.
//
// The fast estimator computes what the reference computes, faster: no sort per iteration (a radix select
// of the K_b best on (score, block) keys, one sort of the survivors at the end), a size-1 node keeps the
// score it got as a child (re-scoring it would give the same bits), keys no sampled row may see are not
// read, fp16 keys are converted once per scored child, and the per-thread scratch only grows.
//
// Cost: per (head, query block) ~log2(N/K_b) iterations of <= 2*K_b child scores, each (rows sampled) x
// (b_k/b_sk) dots of head_dim, i.e. ~(2k/b_sk) log2(T/k) key reads; block-sparse attention then touches
// <= k + n_sink + w keys per row (plus b_q - 1 window keys per block that early rows mask).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "util/thread_pool.h"

namespace hs {

struct HipConfig {
  int32_t k = 512;       // tokens kept per query block (multiple of block_k); K_b = k / block_k nodes
  int32_t block_q = 32;  // b_q: query rows sharing one mask
  int32_t block_k = 2;   // b_k: key block, the unit of selection
  int32_t stride_q = 2;  // b_sq: sampled query rows are m*b_q + i*b_sq + (b_sq-1)
  int32_t stride_k = 1;  // b_sk: sampled keys of the representative block r: r*b_k + j*b_sk + (b_sk-1)
  int32_t n_sink = 16;   // multiple of block_k
  int32_t window = 256;
  int32_t refresh = 8;  // decode: re-estimate the mask every `refresh` steps (r_m); <= window unless 1
  // "" if usable, else a one-line reason.
  std::string validate() const;
};

// Block-sparse rows: for head h and query block m, the selected key blocks are
// indices[indptr[h*n_qblocks + m] .. indptr[h*n_qblocks + m + 1]), ascending; block j covers keys
// [j*block_k, (j+1)*block_k). Every block index is >= n_sink / block_k.
struct HipMask {
  int32_t n_head = 0, n_qblocks = 0;
  std::vector<int32_t> indptr, indices;
  int32_t estimated_at = -1;  // position of the last query row when the mask was estimated (decode cache)
};

// Counters of hip_attention / hip_estimate_blocks; calls add to them (so one struct can sum a whole forward).
struct HipStats {
  int64_t scored_keys = 0;          // key reads of the estimator: sampled keys of every scored child
  int64_t iterations = 0;           // tree iterations, summed over (head, query block)
  int64_t attended_keys = 0;        // (row, key) pairs of the sparse attention, summed over heads
  double mask_ms = 0, attn_ms = 0;  // wall time of the two phases of hip_attention
};

// HiP attention for one sequence (same AttentionParams as attention_dense; GQA: head h reads KV head
// h / (n_head / n_kv_head); one mask per query head). Query block m = rows [m*block_q, min((m+1)*block_q,
// n_q)) of this call, so a prefill chunk of n_q rows has ceil(n_q / block_q) blocks and a decode step (n_q =
// 1) one block of one row.
// estimate = true: estimate the mask of every (head, query block), store it in `mask` (estimated_at = the
// position of the call's last row), then attend. estimate = false: reuse `mask` (decode between refreshes:
// requires n_q == 1 and a mask of one query block for the same number of heads, e.g. the one estimated by an
// earlier decode step; its blocks still only contribute keys <= t - w).
// Work is split over (head, query block) in prefill; in decode over KV groups (the sink and window, shared by
// the group's query heads: each K/V block read once for all of them) and heads (their selected blocks), the
// two partial states merged per head. Per-thread scratch only.
void hip_attention(const HipConfig& cfg, const AttentionParams& p, HipMask& mask, bool estimate,
                   ThreadPool& pool, HipStats* stats = nullptr);

// Decode bookkeeping: whether the step at position pos must estimate (the mask is a prefill chunk's, or is
// refresh or more steps old, or from the future after a rollback) or may reuse `mask`.
inline bool hip_needs_refresh(const HipConfig& cfg, const HipMask& mask, int32_t pos) {
  return mask.n_qblocks != 1 || mask.estimated_at < 0 || pos < mask.estimated_at ||
         pos - mask.estimated_at >= cfg.refresh;
}

// Mask estimation for ONE (head, query block) of p, returning the ascending block list. The fast estimator
// (the one hip_attention runs; thread-local scratch) ...
std::vector<int32_t> hip_estimate_blocks(const HipConfig& cfg, const AttentionParams& p, int32_t head,
                                         int32_t qblock, HipStats* stats = nullptr);
// ... and a slow, line-by-line transcription of HIP_MASK (reference section 2, with the decisions above):
// full sort of the candidates per iteration, scalar dots. Tests only.
std::vector<int32_t> hip_estimate_blocks_reference(const HipConfig& cfg, const AttentionParams& p,
                                                   int32_t head, int32_t qblock);

}  // namespace hs
