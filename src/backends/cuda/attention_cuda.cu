// CUDA attention kernels: see attention_cuda.h for the contract. Layout of this file:
//   1. device helpers: cp.async, ldmatrix, mma.sync m16n8k16 bf16 (fp32 accumulate), exp2, swizzled tiles;
//   2. prefill_kernel: FlashAttention-2 style causal prefill, dense or HiP block-sparse (KeySource policy);
//   3. dense_decode_kernel, hip_decode_kernel: split-K decode, dense (per KV group) or HiP (per head);
//   4. hip_estimate_kernel: the whole hierarchical top-k search of one (head, query block) in one CTA, state in
//      shared memory (the fallback for large K_b); hip_estimate_cluster_kernel: the same search with the
//      candidates in registers, one CTA (prefill) or one thread-block cluster (decode) per (head, query block);
//      hip_gqa_prefill_kernel: HiP block-sparse prefill with one CTA per (KV group slice, query block);
//   5. host wrappers.
// Only the configurations the host wrappers run are here; the variants compared on an H100 and removed are in
// docs/GPU.md (and bench/gpu/results/).
//
// Tensor-core fragment layouts (PTX ISA, mma.m16n8k16 .bf16), with g = lane / 4 and c = lane % 4:
//   A (16x16, rows x k): a0 = A[g][2c..2c+1], a1 = A[g+8][2c..], a2 = A[g][2c+8..], a3 = A[g+8][2c+8..]
//   B (16x8,  k x cols): b0 = B[2c..2c+1][g], b1 = B[2c+8..2c+9][g]
//   C (16x8,  fp32):     c0, c1 = C[g][2c..2c+1], c2, c3 = C[g+8][2c..2c+1]
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "backends/cuda/attention_cuda.h"

namespace hs::cuda {

namespace {

namespace cg = cooperative_groups;

// ---------------------------------------------------------------------------------------------------------------
// 1. Device helpers

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; src_bytes 0 zero-fills the destination (rows past the end, masked keys).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// d += a * b on a 16x8x16 tile, bf16 operands, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}


constexpr float kLog2e = 1.4426950408889634f;

// q = x / d and r = x % d for x >= 0, by a shift when d is a power of two (HiP's block_k and sampled keys per
// block always are in practice): a run-time integer division costs ~20 instructions in the per-key loops.
struct DivPow2OrNot {
  int d, shift;  // shift < 0: d is not a power of two
  __host__ __device__ explicit DivPow2OrNot(int d_) : d(d_), shift(-1) {
    if (d_ > 0 && (d_ & (d_ - 1)) == 0) {
      shift = 0;
      while ((1 << shift) < d_) ++shift;
    }
  }
  __device__ __forceinline__ int div(int x) const { return shift >= 0 ? x >> shift : x / d; }
  __device__ __forceinline__ int mod(int x) const { return shift >= 0 ? x & (d - 1) : x % d; }
};

// A tile of rows x D bf16 in shared memory, rows of D/8 16-byte chunks; chunk c of row r is stored at chunk
// c ^ (r % 8), so that the 8 rows an ldmatrix reads at one logical chunk hit 8 different bank groups.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Prefill: FlashAttention-2 forward. A CTA owns BR = 16 * NW query rows of one head (warp w: rows 16w ..
// 16w + 15, kept in registers as A fragments) and streams key tiles of BC keys through shared memory (K and V,
// double-buffered cp.async); per tile each warp computes S = Q K^T (16 x BC, fp32), the online softmax in the
// log2 domain, and O += P V (16 x D, fp32, P rounded to bf16). Where keys come from and which (row, key)
// pairs count is the KeySource's business:
//  - DenseKeys: tiles [j*BC, (j+1)*BC) of the cache up to the CTA's last row, causal mask on the diagonal;
//  - HipKeys: a virtual key list (sink keys <= t_max - w, the mask's selected blocks, the window range), rows
//    gathered by position; part A (sink, selected) counts for row t iff key <= t - w, part B (window) iff
//    t - w < key <= t (the CPU's three disjoint sets).

struct PrefillArgs {
  AttnParams p;
  HipParams hip;
  HipMaskDev mask;
};

struct DenseKeys {
  int q_first, q_last;  // positions of the CTA's first and last real row
  int n_kv;
  __device__ int n_tiles(int bc) const { return (min(n_kv, q_last + 1) + bc - 1) / bc; }
  __device__ int pos(int tile, int bc, int i) const {  // position of key slot i of tile (or -1)
    const int kp = tile * bc + i;
    return kp < n_kv ? kp : -1;
  }
  __device__ bool tile_needs_mask(int tile, int bc) const { return tile * bc + bc - 1 > q_first; }
  // Whether row at position t takes key slot i of the tile (whose position is kp).
  __device__ bool allowed(int tile, int bc, int i, int kp, int t) const { return kp >= 0 && kp <= t; }
};

struct HipKeys {
  const int32_t* blocks;  // this (head, query block)'s selected blocks, ascending
  int n_sel;              // their number
  int block_k, window;
  DivPow2OrNot bk_div{1};
  int n_sink_eff;  // sink keys <= far
  int far;         // t_max - window: the last key part A may hold
  int win_lo;      // first key of the window range
  int n_a, n_list;
  __device__ int n_tiles(int bc) const { return (n_list + bc - 1) / bc; }
  __device__ int list_pos(int i) const {
    if (i < n_sink_eff) return i;
    if (i < n_a) {
      const int j = i - n_sink_eff;
      const int kp = blocks[bk_div.div(j)] * block_k + bk_div.mod(j);
      return kp <= far ? kp : -1;
    }
    return i < n_list ? win_lo + (i - n_a) : -1;
  }
  __device__ int pos(int tile, int bc, int i) const { return list_pos(tile * bc + i); }
  __device__ bool tile_needs_mask(int tile, int bc) const { return true; }
  __device__ bool allowed(int tile, int bc, int i, int kp, int t) const {
    if (kp < 0) return false;
    return tile * bc + i < n_a ? kp <= t - window : (kp > t - window && kp <= t);
  }
};

template <int D, int NW, int BC, int MT = 1>
struct PrefillShape {
  static constexpr int STAGES = 2;  // key tiles in shared memory (prefill_body)
  static constexpr int BR = 16 * MT * NW, NT = 32 * NW;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  // Q, STAGES x (K, V), STAGES x key positions
  static constexpr int smem_bytes = (BR * D + 2 * STAGES * BC * D) * 2 + STAGES * BC * 4;
};

// MT: m16 row tiles per warp. MT = 1 keeps the warp's Q fragments in registers; MT = 2 (FlashAttention-2's
// choice for d = 128) re-reads them from shared memory once per key tile but reuses every K/V fragment for
// two row tiles, halving the shared-memory traffic per tensor-core instruction.
// STAGES: key tiles in shared memory; STAGES - 1 loads are in flight while a tile is computed on (HiP with 3
// and 4 stages lost CTAs per SM and time: docs/GPU.md).
template <int D, int NW, int BC, int MT, class Keys>
__device__ __forceinline__ void prefill_body(const AttnParams& p, const Keys& keys, int head, int row0,
                                             uint16_t* smem) {
  using S = PrefillShape<D, NW, BC, MT>;
  constexpr int BR = S::BR, NT = S::NT, CH = S::kChunks, STAGES = S::STAGES;
  uint16_t* sQ = smem;
  uint16_t* sK = sQ + BR * D;           // [STAGES][BC][D]
  uint16_t* sV = sK + STAGES * BC * D;  // [STAGES][BC][D]
  int* sPos = reinterpret_cast<int*>(sV + STAGES * BC * D);  // [STAGES][BC] key positions of the staged tiles
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int kvh = head / (p.n_head / p.n_kv_head);
  const uint16_t* kbase = p.k + int64_t(kvh) * p.kv_head_stride;
  const uint16_t* vbase = p.v + int64_t(kvh) * p.kv_head_stride;

  // Q tile: rows past n_q are zero-filled (their results are never written).
  for (int i = tid; i < BR * CH; i += NT) {
    const int r = i / CH, c = i % CH;
    const bool ok = row0 + r < p.n_q;
    const uint16_t* src = p.q + int64_t(ok ? row0 + r : 0) * p.q_stride + int64_t(head) * D + c * 8;
    cp_async16(sQ + swz<D>(r, c), src, ok ? 16 : 0);
  }
  const int n_tiles = keys.n_tiles(BC);
  auto load_tile = [&](int tile, int stage) {
    uint16_t* dk = sK + stage * BC * D;
    uint16_t* dv = sV + stage * BC * D;
    for (int i = tid; i < BC * CH; i += NT) {
      const int r = i / CH, c = i % CH;
      const int kp = keys.pos(tile, BC, r);
      const int64_t off = int64_t(kp < 0 ? 0 : kp) * p.kv_pos_stride + c * 8;
      cp_async16(dk + swz<D>(r, c), kbase + off, kp < 0 ? 0 : 16);
      cp_async16(dv + swz<D>(r, c), vbase + off, kp < 0 ? 0 : 16);
    }
    for (int i = tid; i < BC; i += NT) sPos[stage * BC + i] = keys.pos(tile, BC, i);
  };
  // Prologue: tiles 0 .. STAGES - 2, one commit group each (Q rides with tile 0).
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < n_tiles) load_tile(st, st);
    cp_async_commit();
  }

  // Per thread and row tile mt: rows g and g + 8 (index 0 and 1 below) of the tile's 16.
  const int g = lane >> 2, c4 = lane & 3;
  const int wrow0 = warp * 16 * MT;  // the warp's first row in the CTA
  int t_row[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    t_row[mt][0] = p.q_pos0 + row0 + wrow0 + 16 * mt + g;
    t_row[mt][1] = t_row[mt][0] + 8;
  }
  const float sl2 = p.scale * kLog2e;

  float o[MT][D / 8][4];
  float m_run[MT][2], l_run[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.f;
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.f;
  }
  uint32_t qf_keep[MT == 1 ? D / 16 : 1][4];  // MT == 1: the warp's Q fragments, loaded once
  auto q_frag = [&](uint32_t(&r)[4], int mt, int kk) {
    const int row = wrow0 + 16 * mt + (lane & 7) + 8 * ((lane >> 3) & 1);
    ldmatrix_x4(r, sQ + swz<D>(row, 2 * kk + (lane >> 4)));
  };

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int stage = tile % STAGES;
    cp_async_wait<STAGES - 2>();  // this tile's group has landed (for this thread) ...
    __syncthreads();              // ... for all threads; and every warp is done with tile - 1's stage
    {
      const int ahead = tile + STAGES - 1;
      if (ahead < n_tiles) load_tile(ahead, ahead % STAGES);  // into the stage tile - 1 used
      cp_async_commit();
    }
    if constexpr (MT == 1) {
      if (tile == 0) {
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) q_frag(qf_keep[kk], 0, kk);
      }
    }
    const uint16_t* tK = sK + stage * BC * D;
    const uint16_t* tV = sV + stage * BC * D;

    // S = Q K^T: (16 MT) x BC per warp. K fragments for two k-steps per ldmatrix.x4.
    float s[MT][BC / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk += 2) {
      uint32_t qa[MT][2][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (MT == 1) {
#pragma unroll
          for (int e = 0; e < 4; ++e) qa[mt][0][e] = qf_keep[kk][e], qa[mt][1][e] = qf_keep[kk + 1][e];
        } else {
          q_frag(qa[mt][0], mt, kk);
          q_frag(qa[mt][1], mt, kk + 1);
        }
      }
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
        uint32_t b[4];
        ldmatrix_x4(b, tK + swz<D>(8 * j + (lane & 7), 2 * kk + (lane >> 3)));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(s[mt][j], qa[mt][0], b[0], b[1]);
          mma_bf16(s[mt][j], qa[mt][1], b[2], b[3]);
        }
      }
    }
    const bool need_mask = keys.tile_needs_mask(tile, BC);
    const int* pos = sPos + stage * BC;
    uint32_t pa[MT][BC / 16][4];  // P as bf16 A fragments
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      // Scale to the log2 domain and mask.
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[mt][j][e] * sl2;
          if (need_mask) {
            const int i = 8 * j + 2 * c4 + (e & 1);
            if (!keys.allowed(tile, BC, i, pos[i], t_row[mt][e >> 1])) x = -INFINITY;
          }
          s[mt][j][e] = x;
        }
      }
      // Online softmax per row; a row's 4 threads (same g) reduce by shuffles.
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
        mx[0] = fmaxf(mx[0], fmaxf(s[mt][j][0], s[mt][j][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[mt][j][2], s[mt][j][3]));
      }
      float base[2], alpha[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        const float mn = fmaxf(m_run[mt][h], mx[h]);
        // A row that has seen no key yet keeps m = -inf; subtracting 0 keeps exp2(-inf) = 0, never NaN.
        base[h] = mn == -INFINITY ? 0.f : mn;
        alpha[h] = fast_exp2(m_run[mt][h] - base[h]);
        m_run[mt][h] = mn;
      }
      float sum[2] = {0.f, 0.f};
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[mt][j][e] = fast_exp2(s[mt][j][e] - base[e >> 1]);
          sum[e >> 1] += s[mt][j][e];
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) l_run[mt][h] = l_run[mt][h] * alpha[h] + sum[h];  // own columns only
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[mt][j][0] *= alpha[0];
        o[mt][j][1] *= alpha[0];
        o[mt][j][2] *= alpha[1];
        o[mt][j][3] *= alpha[1];
      }
      // P's C fragments become A fragments (keys 16kk .. 16kk + 15 = S tiles 2kk, 2kk + 1).
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        pa[mt][kk][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][kk][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][kk][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][kk][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
    }
    // O += P V; each V fragment pair serves all MT row tiles.
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
#pragma unroll
      for (int jp = 0; jp < D / 16; ++jp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, tV + swz<D>(16 * kk + (lane & 7) + 8 * ((lane >> 3) & 1), 2 * jp + (lane >> 4)));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(o[mt][2 * jp], pa[mt][kk], b[0], b[1]);
          mma_bf16(o[mt][2 * jp + 1], pa[mt][kk], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = l_run[mt][h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int r = wrow0 + 16 * mt + g + 8 * h;
      if (row0 + r >= p.n_q) continue;
      uint16_t* dst = p.out + int64_t(row0 + r) * p.out_stride + int64_t(head) * D;
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        *reinterpret_cast<uint32_t*>(dst + 8 * j + 2 * c4) = pack_bf16(o[mt][j][2 * h] * inv, o[mt][j][2 * h + 1] * inv);
    }
  }
}

// Grid: (n_head, query tiles); the heaviest (last) query tiles start first so the causal tail is not last.
template <int D, int NW, int BC, int MT>
__global__ void __launch_bounds__(32 * NW) dense_prefill_kernel(const AttnParams p) {
  extern __shared__ __align__(128) uint16_t smem[];
  constexpr int BR = 16 * NW * MT;
  const int head = blockIdx.x, qtile = gridDim.y - 1 - blockIdx.y, row0 = qtile * BR;
  DenseKeys keys;
  keys.q_first = p.q_pos0 + row0;
  keys.q_last = p.q_pos0 + min(row0 + BR, p.n_q) - 1;
  keys.n_kv = p.n_kv;
  prefill_body<D, NW, BC, MT>(p, keys, head, row0, smem);
}

// Grid: (n_head, query blocks); block_q == 16 * NW rows.
template <int D, int NW, int BC>
__global__ void __launch_bounds__(32 * NW) hip_prefill_kernel(const PrefillArgs a) {
  extern __shared__ __align__(128) uint16_t smem[];
  const AttnParams& p = a.p;
  const int head = blockIdx.x, qb = blockIdx.y, row0 = qb * a.hip.block_q;
  const int n_rows = min(a.hip.block_q, p.n_q - row0);
  const int t_min = p.q_pos0 + row0, t_max = t_min + n_rows - 1;
  const int w = a.hip.window;
  HipKeys keys;
  const int64_t mrow = int64_t(head) * a.mask.n_qblocks + qb;
  keys.blocks = a.mask.blocks + mrow * a.mask.kb_stride;
  keys.n_sel = a.mask.counts[mrow];
  keys.block_k = a.hip.block_k;
  keys.bk_div = DivPow2OrNot(a.hip.block_k);
  keys.window = w;
  keys.far = t_max - w;
  keys.n_sink_eff = max(0, min(a.hip.n_sink, keys.far + 1));
  keys.n_a = keys.n_sink_eff + keys.n_sel * a.hip.block_k;
  keys.win_lo = max(0, t_min - w + 1);
  keys.n_list = keys.n_a + (w > 0 ? t_max + 1 - keys.win_lo : 0);
  prefill_body<D, NW, BC, 1>(p, keys, head, row0, smem);
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Split-K decode. A CTA of 4 warps owns GH query heads that share one KV head (GH = G for dense, 1 for HiP
// whose masks are per head) and a contiguous range of a key list. Lanes hold 8 dims (16 bytes) of a key, so a
// warp covers 32 / (D/8) keys per step; each lane group takes U keys per step (all loads issued before use),
// updates its own online-softmax state, and the CTA merges its groups in shared memory into one partial
// (o, m, l) per head, written to the workspace; the last CTA of a head group merges the splits.

constexpr int kDecodeThreads = 128;
constexpr int kDecodeUnroll = 4;     // U of the dense kernel
constexpr int kHipDecodeUnroll = 8;  // U of the HiP kernel (hip_attention_decode)

struct DecodeArgs {
  AttnParams p;
  HipParams hip;
  HipMaskDev mask;  // HiP only
  float* partial;   // [n_head][n_splits][D + 2]: o (unnormalized), m (log2 domain), l
  int* arrived;     // [gridDim.x] CTAs of each head group done so far (0 between calls)
  int n_splits;
  int keys_per_split;
};

struct DenseDecodeKeys {
  int n;
  __device__ int count() const { return n; }
  __device__ int pos(int i) const { return i; }
};

// Sink keys <= t - w, the selected blocks' keys <= t - w, then the window (t - w, t]; invalid entries -1.
struct HipDecodeKeys {
  const int32_t* blocks;
  int block_k, n_sink_eff, n_a, far, win_lo, n;
  DivPow2OrNot bk_div{1};
  __device__ int count() const { return n; }
  __device__ int pos(int i) const {
    if (i < n_sink_eff) return i;
    if (i < n_a) {
      const int j = i - n_sink_eff;
      const int kp = blocks[bk_div.div(j)] * block_k + bk_div.mod(j);
      return kp <= far ? kp : -1;
    }
    return win_lo + (i - n_a);
  }
};

__device__ __forceinline__ void bf16x8_to_float(const uint4& u, float (&f)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

template <int D, int GH, class Keys, int UNR = kDecodeUnroll>
__device__ void decode_split_body(const DecodeArgs& a, const Keys& keys, int head0, int split) {
  constexpr int LPK = D / 8;          // lanes per key
  constexpr int KPW = 32 / LPK;       // keys per warp step
  constexpr int NG = kDecodeThreads / LPK;  // lane groups in the CTA
  const AttnParams& p = a.p;
  const int tid = threadIdx.x, grp = tid / LPK, sub = tid % LPK;
  const int kvh = head0 / (p.n_head / p.n_kv_head);
  const uint16_t* kbase = p.k + int64_t(kvh) * p.kv_head_stride + sub * 8;
  const uint16_t* vbase = p.v + int64_t(kvh) * p.kv_head_stride + sub * 8;
  const float sl2 = p.scale * kLog2e;

  float q[GH][8];
#pragma unroll
  for (int h = 0; h < GH; ++h) {
    const uint4 u = *reinterpret_cast<const uint4*>(p.q + int64_t(head0 + h) * D + sub * 8);
    bf16x8_to_float(u, q[h]);
#pragma unroll
    for (int d = 0; d < 8; ++d) q[h][d] *= sl2;
  }
  float m[GH], l[GH], o[GH][8];
#pragma unroll
  for (int h = 0; h < GH; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int d = 0; d < 8; ++d) o[h][d] = 0.f;
  }
  const int i0 = split * a.keys_per_split, i1 = min(keys.count(), i0 + a.keys_per_split);
  (void)KPW;
  // The loop bounds are uniform over the CTA (the shuffles below need whole warps); keys past i1 are -1.
  for (int step0 = i0; step0 < i1; step0 += NG * UNR) {
    const int base = step0 + grp;
    int kp[UNR];
    uint4 kr[UNR], vr[UNR];
#pragma unroll
    for (int u = 0; u < UNR; ++u) {
      const int i = base + u * NG;
      kp[u] = i < i1 ? keys.pos(i) : -1;
      const int64_t off = int64_t(kp[u] < 0 ? 0 : kp[u]) * p.kv_pos_stride;
      kr[u] = kp[u] >= 0 ? __ldg(reinterpret_cast<const uint4*>(kbase + off)) : make_uint4(0, 0, 0, 0);
      vr[u] = kp[u] >= 0 ? __ldg(reinterpret_cast<const uint4*>(vbase + off)) : make_uint4(0, 0, 0, 0);
    }
    float sc[GH][UNR];
#pragma unroll
    for (int u = 0; u < UNR; ++u) {
      float kf[8];
      bf16x8_to_float(kr[u], kf);
      float part[GH];  // this lane's 8 dims of each head's dot product
#pragma unroll
      for (int h = 0; h < GH; ++h) {
        part[h] = 0.f;
#pragma unroll
        for (int d = 0; d < 8; ++d) part[h] = fmaf(q[h][d], kf[d], part[h]);
      }
      if constexpr (GH == 4 && LPK == 16) {
        // Four heads' partial dots reduced over the 16 lanes of the key with 5 shuffles instead of 16: at
        // distance 8 each lane keeps two heads and sends the other two, at 4 one head, then a plain sum over
        // the last 4 lanes; lane bits (3, 2) name the head it then holds, and 4 shuffles hand every lane all
        // four sums (9 shuffles per key instead of 16). H100, one 128K layer of H 32/8: 0.214 vs 0.218 ms.
        const float(&s4)[4] = part;
        const bool b3 = sub & 8, b2 = sub & 4;
        float k0 = b3 ? s4[2] : s4[0], k1 = b3 ? s4[3] : s4[1];
        k0 += __shfl_xor_sync(0xffffffffu, b3 ? s4[0] : s4[2], 8);
        k1 += __shfl_xor_sync(0xffffffffu, b3 ? s4[1] : s4[3], 8);
        float mine = b2 ? k1 : k0;
        mine += __shfl_xor_sync(0xffffffffu, b2 ? k0 : k1, 4);
        mine += __shfl_xor_sync(0xffffffffu, mine, 2);
        mine += __shfl_xor_sync(0xffffffffu, mine, 1);
        const int lane16 = threadIdx.x & 16;
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const float v = __shfl_sync(0xffffffffu, mine, lane16 | ((h >> 1) << 3) | ((h & 1) << 2));
          sc[h][u] = kp[u] >= 0 ? v : -INFINITY;
        }
      } else {
#pragma unroll
        for (int h = 0; h < GH; ++h) {
          float s = part[h];
#pragma unroll
          for (int off = 1; off < LPK; off <<= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
          sc[h][u] = kp[u] >= 0 ? s : -INFINITY;
        }
      }
    }
#pragma unroll
    for (int h = 0; h < GH; ++h) {
      float mx = m[h];
#pragma unroll
      for (int u = 0; u < UNR; ++u) mx = fmaxf(mx, sc[h][u]);
      if (mx == -INFINITY) continue;  // nothing valid yet
      const float alpha = fast_exp2(m[h] - mx);
      m[h] = mx;
      l[h] *= alpha;
#pragma unroll
      for (int d = 0; d < 8; ++d) o[h][d] *= alpha;
#pragma unroll
      for (int u = 0; u < UNR; ++u) {
        const float pu = fast_exp2(sc[h][u] - mx);
        float vf[8];
        bf16x8_to_float(vr[u], vf);
        l[h] += pu;
#pragma unroll
        for (int d = 0; d < 8; ++d) o[h][d] = fmaf(pu, vf[d], o[h][d]);
      }
    }
  }
  // Merge the NG lane groups: each writes (m, l, o) to shared memory, then thread d of head h combines.
  __shared__ float s_m[GH][NG], s_l[GH][NG];
  __shared__ float s_o[GH][NG][D];
#pragma unroll
  for (int h = 0; h < GH; ++h) {
    if (sub == 0) {
      s_m[h][grp] = m[h];
      s_l[h][grp] = l[h];
    }
#pragma unroll
    for (int d = 0; d < 8; ++d) s_o[h][grp][sub * 8 + d] = o[h][d];
  }
  __syncthreads();
  for (int i = tid; i < GH * D; i += kDecodeThreads) {
    const int h = i / D, d = i % D;
    float M = -INFINITY;
    for (int gi = 0; gi < NG; ++gi) M = fmaxf(M, s_m[h][gi]);
    float L = 0.f, O = 0.f;
    if (M != -INFINITY) {
      for (int gi = 0; gi < NG; ++gi) {
        const float f = fast_exp2(s_m[h][gi] - M);
        L += s_l[h][gi] * f;
        O += s_o[h][gi][d] * f;
      }
    }
    float* dst = a.partial + (int64_t(head0 + h) * a.n_splits + split) * (D + 2);
    dst[d] = O;
    if (d == 0) {
      dst[D] = M;
      dst[D + 1] = L;
    }
  }
  // The last CTA of the head group to finish merges all splits (one launch less per step than a separate
  // merge kernel): publish this CTA's partial, count it, and let the last one read everything back.
  __threadfence();
  __syncthreads();
  __shared__ int s_is_last;
  if (tid == 0) s_is_last = atomicAdd(&a.arrived[blockIdx.x], 1) == a.n_splits - 1;
  __syncthreads();
  if (!s_is_last) return;
  __threadfence();
  for (int i = tid; i < GH * D; i += kDecodeThreads) {
    const int h = i / D, d = i % D;
    const float* src = a.partial + int64_t(head0 + h) * a.n_splits * (D + 2);
    float M = -INFINITY;
    for (int sp = 0; sp < a.n_splits; ++sp) M = fmaxf(M, __ldcg(src + sp * (D + 2) + D));
    float L = 0.f, O = 0.f;
    if (M != -INFINITY) {
      for (int sp = 0; sp < a.n_splits; ++sp) {
        const float f = fast_exp2(__ldcg(src + sp * (D + 2) + D) - M);
        L += __ldcg(src + sp * (D + 2) + D + 1) * f;
        O += __ldcg(src + sp * (D + 2) + d) * f;
      }
    }
    __nv_bfloat16 b = __float2bfloat16_rn(L > 0.f ? O / L : 0.f);
    a.p.out[int64_t(head0 + h) * D + d] = *reinterpret_cast<uint16_t*>(&b);
  }
  if (tid == 0) a.arrived[blockIdx.x] = 0;  // ready for the next call (graph replays included)
}

// Grid: (n_kv_head, n_splits); the G = n_head / n_kv_head heads of the group (GH == G).
template <int D, int GH>
__global__ void __launch_bounds__(kDecodeThreads) dense_decode_kernel(const DecodeArgs a) {
  DenseDecodeKeys keys{a.p.n_kv};
  decode_split_body<D, GH>(a, keys, blockIdx.x * GH, blockIdx.y);
}

// Grid: (n_head, n_splits); kHipDecodeUnroll keys in flight per lane group and step.
template <int D>
__global__ void __launch_bounds__(kDecodeThreads) hip_decode_kernel(const DecodeArgs a) {
  const int head = blockIdx.x;
  const int t = a.p.q_pos0, w = a.hip.window;
  HipDecodeKeys keys;
  keys.blocks = a.mask.blocks + int64_t(head) * a.mask.n_qblocks * a.mask.kb_stride;
  keys.block_k = a.hip.block_k;
  keys.bk_div = DivPow2OrNot(a.hip.block_k);
  keys.far = t - w;
  keys.n_sink_eff = max(0, min(a.hip.n_sink, keys.far + 1));
  keys.n_a = keys.n_sink_eff + a.mask.counts[int64_t(head) * a.mask.n_qblocks] * a.hip.block_k;
  keys.win_lo = max(0, t - w + 1);
  keys.n = keys.n_a + (w > 0 ? t + 1 - keys.win_lo : 0);
  decode_split_body<D, 1, HipDecodeKeys, kHipDecodeUnroll>(a, keys, head, blockIdx.y);
}

// ---------------------------------------------------------------------------------------------------------------
// 4. HiP mask estimation: one CTA (kEstThreads) per (head, query block) runs the whole tree search of the CPU's
// estimate_into. State in shared memory, always in ascending start order (so no final sort is needed and the
// tie rule "lower start wins" is "lower array index wins"):
//   nodes: start, size, score, has_score            [<= K_b]
//   children (candidates): the same                 [<= 2 K_b]
// Per iteration: halve (a scan places each node's 1 or 2 children), score the children without a score on
// tensor cores, select the K_b best with a radix select on the 32-bit order key of the score (4 histogram
// passes of 8 bits) plus a scan that keeps the lowest starts among those equal to the threshold, compact.
//
// Scores: the R <= 16 sampled query rows are the A operand (16 x D, rows past R are padding), 8 keys at a time
// the B operand. A dot product does not care in which order the dims are summed, so the dims are permuted
// (the same way in A and B) such that the B fragments come straight from 16-byte loads that are coalesced per
// instruction: load v of lane (g, c) reads key g, dims [32v + 8c, 32v + 8c + 8) (the 4 lanes of a key cover 64
// contiguous bytes per instruction), and logical k index (k-step kk, 2c + e + 8h) is physical dim
// 32 (kk / 2) + 8c + 4 (kk % 2) + 2h + e. (A first version gave each lane D/4 contiguous dims: every load
// instruction then touched twice the sectors it used; ncu counted 50% excessive sectors.) Masked (row, key)
// pairs score -32000, padding rows -inf; the max over rows is a shuffle reduction over g.

// Threads per hip_estimate_kernel CTA: prefill has thousands of CTAs, and small CTAs let several share an SM (the
// per-iteration work is a chain of barriers and dependent gathers: latency, not throughput); decode (n_q = 1)
// has one CTA per head, so each CTA gets many warps to have more key loads in flight.
constexpr int kEstThreadsPrefill = 128;
constexpr int kEstThreadsDecode = 512;

constexpr int kEstMaxWarps = kEstThreadsDecode / 32;
constexpr float kMaskedScore = -32000.0f;

struct EstArgs {
  AttnParams p;
  HipParams hip;
  HipMaskDev mask;
};

// Ascending 32-bit order of the descending score order (-0 folded into +0); the CPU's desc_order.
__device__ __forceinline__ uint32_t desc_order(float s) {
  s += 0.0f;
  uint32_t u = __float_as_uint(s);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~u;
}

struct EstSmem {
  int* node_start;
  int* node_size;
  float* node_score;
  int* cand_start;
  int* cand_size;
  float* cand_score;
  int* scan;       // [2 K_b + 1] scratch for prefix sums
  int* todo;       // [2 K_b] candidate index of each child to score
  float* kmax;     // [2 K_b * nks] per sampled key: max over rows
  uint16_t* qs;    // [16][D] sampled rows (bf16)
  int* lim;        // [16]: last key row r may score (INT_MIN: padding)
  int* hist;       // [256]
  int* misc;       // [8]
};

// Exclusive prefix sum of scan[0, n) in place (n <= 2 K_b); returns the total. All threads call it.
template <int NT>
__device__ int block_exclusive_scan(int* data, int n, int* warp_tot) {
  constexpr int kEstThreads = NT, kEstWarps = NT / 32;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int per = (n + kEstThreads - 1) / kEstThreads;
  const int b = tid * per, e = min(n, b + per);
  int local = 0;
  for (int i = b; i < e; ++i) local += data[i];
  int incl = local;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  if (lane == 31) warp_tot[warp] = incl;
  __syncthreads();
  int warp_base = 0, total = 0;
#pragma unroll
  for (int w = 0; w < kEstWarps; ++w) {
    const int t = warp_tot[w];
    warp_base += w < warp ? t : 0;
    total += t;
  }
  int run = warp_base + incl - local;
  for (int i = b; i < e; ++i) {
    const int x = data[i];
    data[i] = run;
    run += x;
  }
  __syncthreads();
  return total;
}


// Exclusive prefix sum of f(0), ..., f(n - 1) into out[0, n) (n <= 2 K_b); returns the total. Like
// block_exclusive_scan, but each thread computes its own chunk's values, so no write + barrier before it. All
// threads call it.
template <int NT, class F>
__device__ int block_scan_f(int* out, int n, int* warp_tot, F f) {
  constexpr int kWarps = NT / 32;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int per = (n + NT - 1) / NT;
  const int b = tid * per, e = min(n, b + per);
  int local = 0;
  for (int i = b; i < e; ++i) local += f(i);
  int incl = local;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  if (lane == 31) warp_tot[warp] = incl;
  __syncthreads();
  int warp_base = 0, total = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const int t = warp_tot[w];
    warp_base += w < warp ? t : 0;
    total += t;
  }
  int run = warp_base + incl - local;
  for (int i = b; i < e; ++i) {
    const int x = f(i);
    out[i] = run;
    run += x;
  }
  __syncthreads();
  return total;
}

// The search with its whole state in shared memory: the fallback of both forms of hip_estimate_cluster_kernel
// below (est_dispatch) where their registers cannot hold 2 K_b candidates or block_k / stride_k is not 1, 2, 4
// or 8. Per iteration 15 barriers instead of the first version's ~32 (the kernel is a latency chain of
// barriers, not bound by its loads; the first version was compared and removed: docs/GPU.md):
// halving and the list of children to score come from one scan of packed counts (children | to-score << 16)
// computed in place from the node sizes; the scores of a child's keys are combined in the scoring pass itself
// when block_k / stride_k <= 2 (no kmax round trip); the radix histograms alternate between two buffers (the
// next is cleared while the current is counted); the threshold split is one scan of packed (below | equal <<
// 16) counts, and a kept candidate's slot is below-prefix + min(equal-prefix, need); the running max node size
// alternates between two slots.
template <int D, int NT, int MINB>
__global__ void __launch_bounds__(NT, MINB) hip_estimate_kernel(const EstArgs a) {
  constexpr int kEstThreads = NT, kEstWarps = NT / 32;
  extern __shared__ __align__(16) unsigned char est_smem[];
  const AttnParams& p = a.p;
  const HipParams& cfg = a.hip;
  const int head = blockIdx.x, qb = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int bk = cfg.block_k, Kb = cfg.k / bk, nks = bk / cfg.stride_k;
  const int row0 = qb * cfg.block_q, n_rows = min(cfg.block_q, p.n_q - row0);
  const int t_max = p.q_pos0 + row0 + n_rows - 1;
  const int w_est = p.n_q == 1 ? cfg.window - (cfg.refresh - 1) : cfg.window;
  const int lo = cfg.n_sink, hi = t_max + 1 - w_est, base_blk = lo / bk;
  const int64_t mrow = int64_t(head) * a.mask.n_qblocks + qb;
  int32_t* out = a.mask.blocks + mrow * a.mask.kb_stride;

  if (hi - lo <= cfg.k) {  // everything searchable fits: take it all
    const int n = hi > lo ? (hi - lo + bk - 1) / bk : 0;
    for (int s = tid; s < n; s += kEstThreads) out[s] = base_blk + s;
    if (tid == 0) a.mask.counts[mrow] = n;
    return;
  }
  const int N = (hi - lo + bk - 1) / bk;
  const int pow2 = 1 << (31 - __clz(N));
  const int A = (pow2 + Kb - 1) / Kb;

  // Shared memory carve-up (sizes match hip_estimate_smem_bytes).
  EstSmem sm;
  {
    unsigned char* ptr = est_smem;
    auto take = [&](size_t bytes) {
      unsigned char* r = ptr;
      ptr += (bytes + 15) & ~size_t(15);
      return r;
    };
    sm.qs = reinterpret_cast<uint16_t*>(take(16 * D * 2));
    sm.node_start = reinterpret_cast<int*>(take(Kb * 4));
    sm.node_size = reinterpret_cast<int*>(take(Kb * 4));
    sm.node_score = reinterpret_cast<float*>(take(Kb * 4));
    sm.cand_start = reinterpret_cast<int*>(take(2 * Kb * 4));
    sm.cand_size = reinterpret_cast<int*>(take(2 * Kb * 4));
    sm.cand_score = reinterpret_cast<float*>(take(2 * Kb * 4));
    sm.scan = reinterpret_cast<int*>(take((2 * Kb + 1) * 4));
    sm.todo = reinterpret_cast<int*>(take(2 * Kb * 4));
    sm.kmax = reinterpret_cast<float*>(take(2 * Kb * nks * 4));
    sm.lim = reinterpret_cast<int*>(take(16 * 4));
    sm.hist = reinterpret_cast<int*>(take(2 * 256 * 4));
    sm.misc = reinterpret_cast<int*>(take(kEstMaxWarps * 4 + 8 * 4));
  }
  int* warp_tot = sm.misc;
  int* shared_vals = sm.misc + kEstWarps;  // [0], [3] max size (by iteration parity), [1] threshold prefix, [2] need

  // Sampled rows: the last of each stride_q group, plus a partial block's last row.
  if (tid < 16) {
    int R = 0, rr_of = -1;
    for (int rr = cfg.stride_q - 1; rr < n_rows; rr += cfg.stride_q) {
      if (R == tid) rr_of = rr;
      ++R;
    }
    if (n_rows % cfg.stride_q != 0) {
      if (R == tid) rr_of = n_rows - 1;
      ++R;
    }
    sm.lim[tid] = rr_of >= 0 ? p.q_pos0 + row0 + rr_of - w_est : INT_MIN;
    const uint16_t* src = p.q + int64_t(row0 + max(rr_of, 0)) * p.q_stride + int64_t(head) * D;
    for (int d = 0; d < D; d += 8)
      *reinterpret_cast<uint4*>(sm.qs + tid * D + d) =
          rr_of >= 0 ? *reinterpret_cast<const uint4*>(src + d) : make_uint4(0, 0, 0, 0);
  }
  // Initial nodes: aligned boundaries, the last at N (the CPU's tail fix); empty ones are dropped.
  for (int j = tid; j < Kb; j += kEstThreads) {
    const int b0 = j == 0 ? 0 : min(int((int64_t(j) * N / Kb) / A * A), N);
    const int b1 = j + 1 == Kb ? N : min(int((int64_t(j + 1) * N / Kb) / A * A), N);
    sm.cand_start[j] = b0;
    sm.cand_size[j] = b1 - b0;
    sm.scan[j] = b1 > b0;
  }
  if (tid == 0) shared_vals[0] = 0;
  for (int i = tid; i < 256; i += kEstThreads) sm.hist[i] = 0;  // the first radix pass's buffer
  __syncthreads();
  int n_nodes = block_exclusive_scan<NT>(sm.scan, Kb, warp_tot);
  for (int j = tid; j < Kb; j += kEstThreads) {
    if (sm.cand_size[j] > 0) {
      const int at = sm.scan[j];
      sm.node_start[at] = sm.cand_start[j];
      sm.node_size[at] = sm.cand_size[j];
      sm.node_score[at] = __int_as_float(0x7fc00000);  // NaN: not scored yet
      atomicMax(&shared_vals[0], sm.cand_size[j]);
    }
  }
  __syncthreads();

  // A fragments of the sampled rows in the permuted dim order (identical in every warp).
  const int g = lane >> 2, c4 = lane & 3;
  constexpr int KS = D / 16;  // k-steps
  uint32_t af[KS][4];
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    const int d = (kk >> 1) * 32 + c4 * 8 + (kk & 1) * 4;  // see the dim permutation above
    af[kk][0] = *reinterpret_cast<const uint32_t*>(sm.qs + g * D + d);
    af[kk][1] = *reinterpret_cast<const uint32_t*>(sm.qs + (g + 8) * D + d);
    af[kk][2] = *reinterpret_cast<const uint32_t*>(sm.qs + g * D + d + 2);
    af[kk][3] = *reinterpret_cast<const uint32_t*>(sm.qs + (g + 8) * D + d + 2);
  }
  const int lim_lo = sm.lim[g], lim_hi = sm.lim[g + 8];
  int lim_max = INT_MIN;
  for (int r = 0; r < 16; ++r) lim_max = max(lim_max, sm.lim[r]);
  const int kvh = head / (p.n_head / p.n_kv_head);
  const uint16_t* kbase = p.k + int64_t(kvh) * p.kv_head_stride + c4 * 8;

  int max_size = shared_vals[0];
  // Node sizes at least halve per iteration (a size-1 node stays), so 32 iterations bound any int range; the
  // cap only guards against a logic error turning into a hang.
  for (int iter = 0; max_size > 1 && iter < 32; ++iter) {
    // Halve: node i yields 1 (size 1: itself, keeping its score) or 2 children; the children without a score
    // (both of a split, or a size-1 node never scored) go to the todo list, in candidate order. One scan of
    // packed counts: children in the low 16 bits, to-score in the high (both <= 2 K_b <= 2048).
    const int packed = block_scan_f<NT>(sm.scan, n_nodes, warp_tot, [&](int i) {
      return sm.node_size[i] == 1 ? (isnan(sm.node_score[i]) ? 1 | (1 << 16) : 1) : 2 | (2 << 16);
    });
    const int n_cand = packed & 0xffff, n_todo = packed >> 16;
    for (int i = tid; i < n_nodes; i += kEstThreads) {
      const int ex = sm.scan[i], at = ex & 0xffff, tat = ex >> 16, s = sm.node_start[i], h = sm.node_size[i];
      if (h == 1) {
        const float sc = sm.node_score[i];
        sm.cand_start[at] = s;
        sm.cand_size[at] = 1;
        sm.cand_score[at] = sc;
        if (isnan(sc)) sm.todo[tat] = at;
      } else {
        const int hl = h / 2;
        sm.cand_start[at] = s;
        sm.cand_size[at] = hl;
        sm.cand_start[at + 1] = s + hl;
        sm.cand_size[at + 1] = h - hl;
        sm.todo[tat] = at;
        sm.todo[tat + 1] = at + 1;
      }
    }
    if (tid == 0) {
      shared_vals[3 * (iter & 1)] = 0;  // this iteration's max-size slot (last read two iterations ago, or before
                                        // the first iteration: the initial max size)
      shared_vals[1] = 0;   // threshold prefix
      shared_vals[2] = Kb;  // still needed from the candidates matching the prefix
    }
    __syncthreads();

    // Score: keys (todo child t, sampled key j) -> key index t * nks + j, 8 per warp pass.
    const DivPow2OrNot nks_div(nks);
    const int n_keys = n_todo * nks;
    // UNR passes of 8 keys per warp have their loads in flight together (decode: 3, its CTAs are few; 4 spills at 128 registers).
    // (Tried: A fragments in shared memory to free 32 registers for 4 passes in flight at 4 CTAs/SM: 50.6 ->
    // 56.6 ms at 128K on an H100, slower; the scoring rounds are not what limits this kernel.)
    constexpr int UNR = NT <= 128 ? 2 : 3;
    for (int pass0 = warp * 8; pass0 < n_keys; pass0 += kEstWarps * 8 * UNR) {
      uint4 kr[UNR][D / 32];
      int kpos[UNR];
#pragma unroll
      for (int u = 0; u < UNR; ++u) {
        const int ki = pass0 + u * kEstWarps * 8 + g;
        int kp = INT_MAX;
        if (ki < n_keys) {
          const int ci = sm.todo[nks_div.div(ki)], j = nks_div.mod(ki);
          const int r = sm.cand_start[ci] + sm.cand_size[ci] / 2;  // center block
          kp = lo + r * bk + j * cfg.stride_k + cfg.stride_k - 1;
        }
        kpos[u] = kp;
        const bool load = kp <= lim_max;  // keys no sampled row may score are not read
        const uint4* src = reinterpret_cast<const uint4*>(kbase + int64_t(load ? kp : 0) * p.kv_pos_stride);
#pragma unroll
        for (int v = 0; v < D / 32; ++v) kr[u][v] = load ? __ldg(src + 4 * v) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < UNR; ++u) {
        const int pbase = pass0 + u * kEstWarps * 8;
        if (pbase >= n_keys) break;  // warp-uniform
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
        const uint32_t* kw = reinterpret_cast<const uint32_t*>(kr[u]);
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) mma_bf16(acc, af[kk], kw[2 * kk], kw[2 * kk + 1]);
        // acc[e]: row (e < 2 ? g : g + 8), key column 2c + (e & 1) of this pass.
        float best[2];
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2) {
          const int kp = __shfl_sync(0xffffffffu, kpos[u], (2 * c4 + e2) * 4);  // lane of key 2c+e2
          const float x_lo = lim_lo == INT_MIN ? -INFINITY : (kp > lim_lo ? kMaskedScore : acc[e2]);
          const float x_hi = lim_hi == INT_MIN ? -INFINITY : (kp > lim_hi ? kMaskedScore : acc[2 + e2]);
          best[e2] = fmaxf(x_lo, x_hi);
        }
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
          best[0] = fmaxf(best[0], __shfl_xor_sync(0xffffffffu, best[0], off));
          best[1] = fmaxf(best[1], __shfl_xor_sync(0xffffffffu, best[1], off));
        }
        if (g == 0) {
          if (nks == 2) {  // keys 2c, 2c + 1 of this pass are child (pbase + 2c) / 2's two keys (pbase is even)
            const int ki = pbase + 2 * c4;
            if (ki < n_keys) sm.cand_score[sm.todo[ki >> 1]] = fmaxf(best[0], best[1]);
          } else if (nks == 1) {
#pragma unroll
            for (int e2 = 0; e2 < 2; ++e2) {
              const int ki = pbase + 2 * c4 + e2;
              if (ki < n_keys) sm.cand_score[sm.todo[ki]] = best[e2];
            }
          } else {
#pragma unroll
            for (int e2 = 0; e2 < 2; ++e2) {
              const int ki = pbase + 2 * c4 + e2;
              if (ki < n_keys) sm.kmax[ki] = best[e2];
            }
          }
        }
      }
    }
    __syncthreads();
    if (nks > 2) {  // block-uniform
      for (int t = tid; t < n_todo; t += kEstThreads) {
        float s = sm.kmax[t * nks];
        for (int j = 1; j < nks; ++j) s = fmaxf(s, sm.kmax[t * nks + j]);
        sm.cand_score[sm.todo[t]] = s;
      }
      __syncthreads();
    }

    // Select the K_b best candidates (score descending, then lower start = lower index).
    int n_keep = n_cand;
    int* const max_slot = shared_vals + 3 * (iter & 1);
    if (n_cand > Kb) {
      uint32_t prefix_mask = 0;
      for (int shift = 24; shift >= 0; shift -= 8) {
        // Pass (24 - shift) / 8 counts into hist buffer ((24 - shift) / 8) & 1, cleared during the pass before
        // (or before the first iteration); meanwhile it clears the other one for the next pass (the 4th pass
        // clears buffer 0 for the next iteration's first).
        int* const hist = sm.hist + (((24 - shift) >> 3) & 1) * 256;
        int* const hist_next = sm.hist + ((((24 - shift) >> 3) + 1) & 1) * 256;
        for (int i = tid; i < 256; i += kEstThreads) hist_next[i] = 0;
        const uint32_t prefix = uint32_t(shared_vals[1]);
        // Most candidates share the high digits, so lanes with equal digits add once, together (an atomic to
        // one address from a whole warp would serialize 32 ways). The loop bound is warp-uniform.
        for (int i0 = 0; i0 < n_cand; i0 += kEstThreads) {
          const int i = i0 + tid;
          int digit = 256;  // not counted
          if (i < n_cand) {
            const uint32_t key = desc_order(sm.cand_score[i]);
            if ((key & prefix_mask) == prefix) digit = int((key >> shift) & 255);
          }
          const unsigned peers = __match_any_sync(0xffffffffu, digit);
          if (digit < 256 && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
        }
        __syncthreads();
        if (warp == 0) {  // the digit where the running count reaches `need`
          const int need = shared_vals[2];
          int cnt[8], lsum = 0;
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            cnt[i] = hist[lane * 8 + i];
            lsum += cnt[i];
          }
          int incl = lsum;
#pragma unroll
          for (int off = 1; off < 32; off <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, incl, off);
            if (lane >= off) incl += y;
          }
          const int excl = incl - lsum;
          if (excl < need && need <= incl) {  // exactly one lane
            int run = excl, d = 0;
            while (run + cnt[d] < need) run += cnt[d++];
            shared_vals[1] = int(prefix | (uint32_t(lane * 8 + d) << shift));
            shared_vals[2] = need - run;
          }
        }
        prefix_mask |= 255u << shift;
        __syncthreads();
      }
      const uint32_t thresh = uint32_t(shared_vals[1]);
      const int need_eq = shared_vals[2];  // how many of those equal to the threshold are kept
      // Packed counts: below the threshold (better) in the low 16 bits, equal to it in the high.
      auto below_eq = [&](int i) {
        const uint32_t key = desc_order(sm.cand_score[i]);
        return key < thresh ? 1 : (key == thresh ? 1 << 16 : 0);
      };
      n_keep = block_scan_f<NT>(sm.scan, n_cand, warp_tot, below_eq);
      n_keep = (n_keep & 0xffff) + min(n_keep >> 16, need_eq);  // == Kb
      for (int i = tid; i < n_cand; i += kEstThreads) {
        const int v = below_eq(i), ex = sm.scan[i], eq_ex = ex >> 16;
        if (v == 1 || (v != 0 && eq_ex < need_eq)) {
          const int at = (ex & 0xffff) + min(eq_ex, need_eq);
          sm.node_start[at] = sm.cand_start[i];
          sm.node_size[at] = sm.cand_size[i];
          sm.node_score[at] = sm.cand_score[i];
          atomicMax(max_slot, sm.cand_size[i]);
        }
      }
    } else {
      for (int i = tid; i < n_cand; i += kEstThreads) {
        sm.node_start[i] = sm.cand_start[i];
        sm.node_size[i] = sm.cand_size[i];
        sm.node_score[i] = sm.cand_score[i];
        atomicMax(max_slot, sm.cand_size[i]);
      }
    }
    __syncthreads();
    n_nodes = n_keep;
    max_size = *max_slot;  // the next iteration writes the other slot (this one is reset only in two iterations)
  }
  for (int i = tid; i < n_nodes; i += kEstThreads) out[i] = base_blk + sm.node_start[i];
  if (tid == 0) a.mask.counts[mrow] = n_nodes;
}

// Decode (few query blocks): a thread-block cluster of CL CTAs per (head, query block). Every CTA keeps the
// whole tree state (the same candidates in the same order) and runs the same selection on the same scores, so
// the CTAs stay identical without exchanging node lists; only the scoring is split: CTA r scores slice r of
// the children to score and stores each score into every CTA's shared memory (distributed shared memory),
// then one cluster barrier. With one CTA per head (32 CTAs on 132 SMs) the ~1024 dependent key gathers of an
// iteration were a few rounds of loads from one SM; with CL CTAs they are one round spread over CL SMs.
// The selection is rebuilt for few barriers: each thread holds CPT candidates in registers (slot
// (warp * CPT + j) * 32 + lane, so candidate order is (warp, j, lane) order and in-warp prefixes are ballot
// popcounts); the radix select counts each 8-bit digit into a shared histogram and then every warp reads the
// histogram and finds the threshold digit itself (one barrier per pass instead of two), stopping as soon as
// the candidates matching the threshold prefix are exactly the ones still needed (usually after 3 of 4
// passes); the equal-to-threshold rank (the CPU's tie rule: lower start wins) needs its own scan only when the
// 32-bit keys really tie across the threshold. Compaction and halving are one step: a kept candidate's
// children are placed by a ballot prefix (1 or 2 children each) with one barrier (a __syncthreads_or that also
// says whether any kept node still has size > 1). Scores live in two buffers by iteration parity: a CTA that
// is ahead may store the next iteration's scores while a slower one still reads this iteration's.
// Prefill (many query blocks) runs the same kernel with CL = 1: one CTA per (head, query block), no cluster.
// (Compared and removed, docs/GPU.md: an L2 prefetch of the next children, phase timing, the first selection
// with fixed 8-bit digits from the top bit, other cluster shapes, staggered head starts.)
// UNR_ / MINB_ (0: the defaults below): gather passes in flight per warp and CTAs per SM of the launch bounds
// (the prefill form, CL = 1, sets them).
template <int D, int NT, int CL, int CPT, int UNR_ = 0, int MINB_ = 0>
__global__ void __launch_bounds__(NT, MINB_ > 0 ? MINB_ : (NT <= 128 ? 4 : (NT <= 256 ? 2 : 1))) hip_estimate_cluster_kernel(const EstArgs a) {
  constexpr int NW = NT / 32, CAP = NT * CPT;
  constexpr unsigned kFull = 0xffffffffu;
  extern __shared__ __align__(16) unsigned char est_smem[];
  const AttnParams& p = a.p;
  const HipParams& cfg = a.hip;
  int crank = 0;
  if constexpr (CL > 1) crank = int(cg::this_cluster().block_rank());
  const int head = blockIdx.x / CL, qb = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const unsigned lt_mask = (1u << lane) - 1u;
  const int bk = cfg.block_k, Kb = cfg.k / bk, nks = bk / cfg.stride_k;
  const int row0 = qb * cfg.block_q, n_rows = min(cfg.block_q, p.n_q - row0);
  const int t_max = p.q_pos0 + row0 + n_rows - 1;
  const int w_est = p.n_q == 1 ? cfg.window - (cfg.refresh - 1) : cfg.window;
  const int lo = cfg.n_sink, hi = t_max + 1 - w_est, base_blk = lo / bk;
  const int64_t mrow = int64_t(head) * a.mask.n_qblocks + qb;
  int32_t* out = a.mask.blocks + mrow * a.mask.kb_stride;

  if (hi - lo <= cfg.k) {  // everything searchable fits: take it all (no shared memory of other CTAs touched)
    if (crank != 0) return;
    const int n = hi > lo ? (hi - lo + bk - 1) / bk : 0;
    for (int s = tid; s < n; s += NT) out[s] = base_blk + s;
    if (tid == 0) a.mask.counts[mrow] = n;
    return;
  }
  const int N = (hi - lo + bk - 1) / bk;
  const int pow2 = 1 << (31 - __clz(N));
  const int A = (pow2 + Kb - 1) / Kb;

  // Shared memory (sizes match est_cluster_smem_bytes).
  int *c_start, *c_size, *todo, *hist, *weq;
  float* c_score;
  int4* wt;
  uint2* wred;
  {
    unsigned char* ptr = est_smem;
    auto take = [&](size_t bytes) {
      unsigned char* r = ptr;
      ptr += (bytes + 15) & ~size_t(15);
      return r;
    };
    c_start = reinterpret_cast<int*>(take(CAP * 4));
    c_size = reinterpret_cast<int*>(take(CAP * 4));
    todo = reinterpret_cast<int*>(take(CAP * 4));
    c_score = reinterpret_cast<float*>(take(2 * CAP * 4));
    hist = reinterpret_cast<int*>(take(2 * 4 * 256 * 4));
    wt = reinterpret_cast<int4*>(take(NW * 16));
    weq = reinterpret_cast<int*>(take(NW * 4));
    wred = reinterpret_cast<uint2*>(take(NW * 8));
  }

  // Sampled rows: the last of each stride_q group (R < n_full), plus a partial block's last row; -1: padding.
  const int n_full = n_rows / cfg.stride_q, n_samp = min(16, n_full + (n_rows % cfg.stride_q != 0));
  auto row_of = [&](int R) { return R < n_full ? R * cfg.stride_q + cfg.stride_q - 1 : (R < n_samp ? n_rows - 1 : -1); };
  // A fragments of the sampled rows in the permuted dim order (as hip_estimate_kernel), straight from global
  // memory: the loads are in flight during the setup below.
  const int g = lane >> 2, c4 = lane & 3;
  constexpr int KS = D / 16;
  uint32_t af[KS][4];
  const int rr_lo = row_of(g), rr_hi = row_of(g + 8);
  {
    const uint16_t* q_lo = p.q + int64_t(row0 + max(rr_lo, 0)) * p.q_stride + int64_t(head) * D;
    const uint16_t* q_hi = p.q + int64_t(row0 + max(rr_hi, 0)) * p.q_stride + int64_t(head) * D;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      const int d = (kk >> 1) * 32 + c4 * 8 + (kk & 1) * 4;
      af[kk][0] = rr_lo >= 0 ? __ldg(reinterpret_cast<const uint32_t*>(q_lo + d)) : 0u;
      af[kk][1] = rr_hi >= 0 ? __ldg(reinterpret_cast<const uint32_t*>(q_hi + d)) : 0u;
      af[kk][2] = rr_lo >= 0 ? __ldg(reinterpret_cast<const uint32_t*>(q_lo + d + 2)) : 0u;
      af[kk][3] = rr_hi >= 0 ? __ldg(reinterpret_cast<const uint32_t*>(q_hi + d + 2)) : 0u;
    }
  }
  const int pos_base = p.q_pos0 + row0 - w_est;  // lim of row rr: the last key it may score
  const int lim_lo = rr_lo >= 0 ? pos_base + rr_lo : INT_MIN, lim_hi = rr_hi >= 0 ? pos_base + rr_hi : INT_MIN;
  const int lim_max = pos_base + row_of(n_samp - 1);  // rows ascend: the last sampled row's
  for (int i = tid; i < 1024; i += NT) hist[i] = 0;  // the first iteration's histograms

  // Candidates held by this thread: slot (warp * CPT + j) * 32 + lane.
  bool kept[CPT];
  int st[CPT], sz[CPT];
  float sc[CPT];
  // Initial nodes (aligned boundaries, the last at N: the CPU's tail fix) as "kept candidates" without a score.
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    const int i = (warp * CPT + j) * 32 + lane;
    int b0 = 0, b1 = 0;
    if (i < Kb) {
      if (int64_t(Kb) * N < INT_MAX) {  // 32-bit division (a 64-bit one is a long subroutine)
        b0 = i == 0 ? 0 : min((i * N / Kb) / A * A, N);
        b1 = i + 1 == Kb ? N : min(((i + 1) * N / Kb) / A * A, N);
      } else {
        b0 = i == 0 ? 0 : min(int((int64_t(i) * N / Kb) / A * A), N);
        b1 = i + 1 == Kb ? N : min(int((int64_t(i + 1) * N / Kb) / A * A), N);
      }
    }
    kept[j] = b1 > b0;
    st[j] = b0;
    sz[j] = b1 - b0;
    sc[j] = __int_as_float(0x7fc00000);  // NaN: not scored yet
  }

  // Emit: kept candidates (in slot order = ascending start) become the next candidates: a size-1 node passes
  // through (keeping its score), a larger one splits in two halves. Returns whether any kept node had size > 1;
  // if none had, the kept candidates are the result and are written out instead. Sets n_cand, n_todo.
  int n_cand = 0, n_todo = 0;
  auto emit = [&](float* score_next) -> bool {
    int pk[CPT], pc[CPT], pt[CPT];
    int rk = 0, rc = 0, rt = 0;
    bool any_split = false;
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      const bool split = kept[j] && sz[j] > 1;
      const bool t1 = kept[j] && sz[j] == 1 && isnan(sc[j]);
      const unsigned bkp = __ballot_sync(kFull, kept[j]), bsp = __ballot_sync(kFull, split),
                     bt1 = __ballot_sync(kFull, t1);
      const int lk = __popc(bkp & lt_mask), ls = __popc(bsp & lt_mask), l1 = __popc(bt1 & lt_mask);
      pk[j] = rk + lk;
      pc[j] = rc + lk + ls;
      pt[j] = rt + 2 * ls + l1;
      rk += __popc(bkp);
      rc += __popc(bkp) + __popc(bsp);
      rt += 2 * __popc(bsp) + __popc(bt1);
      any_split |= split;
    }
    if (lane == 0) wt[warp] = make_int4(rk, rc, rt, 0);
    const bool more = __syncthreads_or(any_split);
    int bk_ = 0, bc_ = 0, bt_ = 0, tk = 0, tc = 0, tt = 0;
#pragma unroll
    for (int w2 = 0; w2 < NW; ++w2) {
      const int4 v = wt[w2];
      if (w2 < warp) bk_ += v.x, bc_ += v.y, bt_ += v.z;
      tk += v.x, tc += v.y, tt += v.z;
    }
    if (!more) {
      if (crank == 0) {
#pragma unroll
        for (int j = 0; j < CPT; ++j)
          if (kept[j]) out[bk_ + pk[j]] = base_blk + st[j];
        if (tid == 0) a.mask.counts[mrow] = tk;
      }
      return false;
    }
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      if (!kept[j]) continue;
      const int at = bc_ + pc[j], tat = bt_ + pt[j];
      if (sz[j] > 1) {
        const int hl = sz[j] / 2;
        c_start[at] = st[j];
        c_size[at] = hl;
        c_start[at + 1] = st[j] + hl;
        c_size[at + 1] = sz[j] - hl;
        todo[tat] = at;
        todo[tat + 1] = at + 1;
      } else {
        c_start[at] = st[j];
        c_size[at] = 1;
        if (isnan(sc[j]))
          todo[tat] = at;
        else
          score_next[at] = sc[j];
      }
    }
    n_cand = tc;
    n_todo = tt;
    return true;
  };

  bool more = emit(c_score);
  // Every CTA of the cluster has started (its shared memory may be written) and this CTA's lists are complete.
  if constexpr (CL > 1) cg::this_cluster().sync(); else __syncthreads();
  if (!more) return;

  const int kvh = head / (p.n_head / p.n_kv_head);
  const uint16_t* kbase = p.k + int64_t(kvh) * p.kv_head_stride + c4 * 8;
  const DivPow2OrNot nks_div(nks);

  int iter = 0;
  for (; more && iter < 40; ++iter) {
    const int par = iter & 1;
    float* const sc_cur = c_score + par * CAP;
    int* const H = hist + par * 1024;
    for (int i = tid; i < 1024; i += NT) hist[(par ^ 1) * 1024 + i] = 0;  // the next iteration's histograms

    // Score this CTA's slice of the children to score (8 keys per warp pass; slices are multiples of 8 keys,
    // so a child's nks <= 8 keys share one pass).
    const int n_keys = n_todo * nks;
    const int per = ((n_keys + CL - 1) / CL + 7) & ~7;
    const int k0 = crank * per, k1 = min(n_keys, k0 + per);
    auto store = [&](int ci, float v) {
      if constexpr (CL == 1) {
        sc_cur[ci] = v;
      } else {
        cg::cluster_group cl = cg::this_cluster();
#pragma unroll
        for (int r = 0; r < CL; ++r) *cl.map_shared_rank(sc_cur + ci, r) = v;
      }
    };
    constexpr int UNR = UNR_ > 0 ? UNR_ : (NT <= 128 ? 4 : 2);
    for (int pass0 = k0 + warp * 8; pass0 < k1; pass0 += NW * 8 * UNR) {
      uint4 kr[UNR][D / 32];
      int kpos[UNR];
#pragma unroll
      for (int u = 0; u < UNR; ++u) {
        const int ki = pass0 + u * NW * 8 + g;
        int kp = INT_MAX;
        if (ki < k1) {
          const int ci = todo[nks_div.div(ki)], j = nks_div.mod(ki);
          const int r = c_start[ci] + c_size[ci] / 2;  // center block
          kp = lo + r * bk + j * cfg.stride_k + cfg.stride_k - 1;
        }
        kpos[u] = kp;
        const bool load = kp <= lim_max;
        const uint4* src = reinterpret_cast<const uint4*>(kbase + int64_t(load ? kp : 0) * p.kv_pos_stride);
#pragma unroll
        for (int v = 0; v < D / 32; ++v) kr[u][v] = load ? __ldg(src + 4 * v) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < UNR; ++u) {
        const int pbase = pass0 + u * NW * 8;
        if (pbase >= k1) break;  // warp-uniform
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
        const uint32_t* kw = reinterpret_cast<const uint32_t*>(kr[u]);
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) mma_bf16(acc, af[kk], kw[2 * kk], kw[2 * kk + 1]);
        float best[2];
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2) {
          const int kp = __shfl_sync(kFull, kpos[u], (2 * c4 + e2) * 4);
          const float x_lo = lim_lo == INT_MIN ? -INFINITY : (kp > lim_lo ? kMaskedScore : acc[e2]);
          const float x_hi = lim_hi == INT_MIN ? -INFINITY : (kp > lim_hi ? kMaskedScore : acc[2 + e2]);
          best[e2] = fmaxf(x_lo, x_hi);
        }
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
          best[0] = fmaxf(best[0], __shfl_xor_sync(kFull, best[0], off));
          best[1] = fmaxf(best[1], __shfl_xor_sync(kFull, best[1], off));
        }
        if (nks == 1) {
#pragma unroll
          for (int e2 = 0; e2 < 2; ++e2) {
            const int ki = pbase + 2 * c4 + e2;
            if (g == 0 && ki < k1) store(todo[ki], best[e2]);
          }
        } else {
          float m = fmaxf(best[0], best[1]);               // keys 2c, 2c + 1
          if (nks >= 4) m = fmaxf(m, __shfl_xor_sync(kFull, m, 1));  // + keys of lane c ^ 1
          if (nks >= 8) m = fmaxf(m, __shfl_xor_sync(kFull, m, 2));
          const int ki = pbase + 2 * c4;
          if (g == 0 && (c4 & (nks / 2 - 1)) == 0 && ki < k1) store(todo[nks_div.div(ki)], m);
        }
      }
    }
    if constexpr (CL > 1) cg::this_cluster().sync(); else __syncthreads();

    // This thread's candidates and their order keys.
    bool valid[CPT];
    uint32_t key[CPT];
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      const int i = (warp * CPT + j) * 32 + lane;
      valid[j] = i < n_cand;
      st[j] = valid[j] ? c_start[i] : 0;
      sz[j] = valid[j] ? c_size[i] : 0;
      sc[j] = valid[j] ? sc_cur[i] : 0.f;
      key[j] = desc_order(sc[j]);
      kept[j] = valid[j];
    }
    // Select the K_b best (score descending, then lower start = lower slot).
    if (n_cand > Kb) {
      uint32_t prefix = 0, pmask = 0;
      int need = Kb, bincnt = n_cand;
      // Every warp: the digit of histogram h where the running count reaches `need`; sets digit, run (count
      // before it) and bc (its count).
      auto find_digit = [&](const int* h, int& digit_sel, int& run_sel, int& bc_sel) {
        const int4 v0 = *reinterpret_cast<const int4*>(h + lane * 8);
        const int4 v1 = *reinterpret_cast<const int4*>(h + lane * 8 + 4);
        const int cnt[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
        int lsum = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) lsum += cnt[i];
        int incl = lsum;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
          const int y = __shfl_up_sync(kFull, incl, off);
          if (lane >= off) incl += y;
        }
        const int excl = incl - lsum;
        const bool mine = excl < need && need <= incl;  // exactly one lane
        int run = excl, dsel = 0, bc = 0;
        bool found = false;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if (!found) {
            if (run + cnt[i] >= need) {
              found = true;
              dsel = i;
              bc = cnt[i];
            } else {
              run += cnt[i];
            }
          }
        }
        const int src = __ffs(__ballot_sync(kFull, mine)) - 1;
        digit_sel = __shfl_sync(kFull, lane * 8 + dsel, src);
        run_sel = __shfl_sync(kFull, run, src);
        bc_sel = __shfl_sync(kFull, bc, src);
      };
      // The bits all candidates share (AND == OR) need no pass: the first 8-bit window starts at the highest
      // bit where they differ, so the candidates spread over its bins (and the plain shared atomics below
      // rarely collide); a pass stops once the threshold bin holds exactly the candidates still needed.
      uint32_t wa = ~0u, wo = 0u;
#pragma unroll
      for (int j = 0; j < CPT; ++j)
        if (valid[j]) wa &= key[j], wo |= key[j];
      wa = __reduce_and_sync(kFull, wa);
      wo = __reduce_or_sync(kFull, wo);
      if (lane == 0) wred[warp] = make_uint2(wa, wo);
      __syncthreads();
      uint32_t all_and = ~0u, all_or = 0u;
#pragma unroll
      for (int w2 = 0; w2 < NW; ++w2) {
        const uint2 v = wred[w2];
        all_and &= v.x;
        all_or |= v.y;
      }
      const uint32_t diff = all_and ^ all_or;
      if (diff == 0) {  // all keys equal: the tie rule alone decides
        prefix = all_and;
        pmask = ~0u;
      } else {
        int top = 31 - __clz(int(diff));
        pmask = top == 31 ? 0u : ~((2u << top) - 1u);
        prefix = all_and & pmask;
        for (int pass = 0; top >= 0 && pass < 4; ++pass) {  // uniform; <= 4 windows of 8 bits
          const int low = max(0, top - 7);
          const uint32_t dmask = (1u << (top - low + 1)) - 1u;
          int* const h = H + pass * 256;
#pragma unroll
          for (int j = 0; j < CPT; ++j)
            if (valid[j] && (key[j] & pmask) == prefix) atomicAdd(&h[(key[j] >> low) & dmask], 1);
          __syncthreads();
          int digit, run_sel;
          find_digit(h, digit, run_sel, bincnt);
          prefix |= uint32_t(digit) << low;
          pmask |= dmask << low;
          need -= run_sel;
          top = low - 1;
          if (bincnt == need) break;  // uniform: all of the threshold bin is kept
        }
      }
      if (bincnt == need) {
#pragma unroll
        for (int j = 0; j < CPT; ++j) kept[j] = valid[j] && (key[j] & pmask) <= prefix;
      } else {  // exact ties across the threshold: keep the `need` lowest slots among those equal to it
        int pe[CPT], re = 0;
#pragma unroll
        for (int j = 0; j < CPT; ++j) {
          const unsigned be = __ballot_sync(kFull, valid[j] && key[j] == prefix);
          pe[j] = re + __popc(be & lt_mask);
          re += __popc(be);
        }
        if (lane == 0) weq[warp] = re;
        __syncthreads();
        int base = 0;
#pragma unroll
        for (int w2 = 0; w2 < NW; ++w2) base += w2 < warp ? weq[w2] : 0;
#pragma unroll
        for (int j = 0; j < CPT; ++j)
          kept[j] = valid[j] && (key[j] < prefix || (key[j] == prefix && base + pe[j] < need));
      }
    }
    more = emit(c_score + (par ^ 1) * CAP);
    __syncthreads();  // the next candidates and todo list are complete
  }
}

// GQA-shared HiP prefill: one CTA per (KV group, query block) holds the query rows of all G heads of the group
// (GS head slots of BQW warps x 16 rows; slots >= G idle) and loads every K/V tile once for all of them. The
// CTA's key list, built in shared memory from the G heads' masks before the first tile:
//  - split tiles: BC = 16 GS keys, slice s (16 keys) from head slot s's EXCLUSIVE selected blocks (those in no
//    other head's mask of the group); the warps of slot s compute on their slice only;
//  - full tiles: the SHARED selected blocks (in two or more heads' masks, each loaded once, with a G-bit
//    membership mask), then the sink (keys <= t_max - w), then the window range; every warp computes on each
//    16-key chunk holding a key of its head (a warp-uniform skip of the others).
// Per (row, key) the CPU's rules (HipKeys::allowed): a selected key counts for head h iff its block is in h's
// mask and key <= t - w; a sink key iff key <= t - w; a window key iff t - w < key <= t.
// The exclusive/shared split: a block of head h's list is looked up (binary search) in the other heads' sorted
// lists; one packed block scan (exclusive | first-owner-shared << 16) places every block.
template <int D, int BQW, int GS, int STAGES>
struct HipGqaShape {
  static constexpr int SL = 16;  // keys per head slot in a split tile
  static constexpr int NW = BQW * GS, NT = 32 * NW, BQ = 16 * BQW, BC = SL * GS, CH = D / 8;
  static constexpr int q_elems = GS * BQ * D;
  static constexpr int kv_elems = 2 * STAGES * BC * D;
  // Q, STAGES x (K, V), STAGES x (pos, info); then the lists (runtime size, hip_gqa_smem_bytes).
  static constexpr int fixed_bytes = (q_elems + kv_elems) * 2 + 2 * STAGES * BC * 4;
};
constexpr int kGqaWin = 1 << 8;  // info bit: a window key (part B)

inline int64_t hip_gqa_list_bytes(int kb, int gs) { return int64_t(gs) * kb * 4 * 3 + int64_t(gs) * kb + 64; }

// A tile's 16-key chunks go through one online-softmax step together when all hold keys of the warp's head
// (else one step per chunk that does); the rescale of the output accumulators is skipped when no row of the
// warp raised its running max (alpha == 1 exactly: the same result). A CTA holds head slots sub * GS .. sub *
// GS + GS - 1 of its group (blockIdx.x = kvh * n_sub + sub, n_sub = ceil(G / GS)): with GS < G the group's
// heads are split over adjacent CTAs. (Other slice widths, chunk groupings and head slots per CTA were
// compared and removed: docs/GPU.md.)
template <int D, int BQW, int GS, int STAGES, int MINB>
__global__ void __launch_bounds__(32 * BQW * GS, MINB) hip_gqa_prefill_kernel(const PrefillArgs a) {
  using S = HipGqaShape<D, BQW, GS, STAGES>;
  constexpr int NT = S::NT, BQ = S::BQ, BC = S::BC, CH = S::CH, SL = S::SL;
  constexpr int NCHT = BC / 16;  // 16-key chunks per tile
  constexpr int MAXCH = NCHT;    // most 16-key chunks one online-softmax step takes
  extern __shared__ __align__(128) uint16_t smem[];
  const AttnParams& p = a.p;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int Gfull = p.n_head / p.n_kv_head;
  const int n_sub = (Gfull + GS - 1) / GS;
  const int kvh = blockIdx.x / n_sub, sub = blockIdx.x - kvh * n_sub, qb = blockIdx.y, row0 = qb * BQ;
  const int head0 = kvh * Gfull + sub * GS;   // the CTA's first head
  const int G = min(GS, Gfull - sub * GS);    // heads in this CTA
  const int n_rows = min(BQ, p.n_q - row0);
  const int t_min = p.q_pos0 + row0, t_max = t_min + n_rows - 1;
  const int w = a.hip.window, bk = a.hip.block_k, Kb = a.mask.kb_stride;
  const DivPow2OrNot bk_div(bk);
  const int far = t_max - w;

  uint16_t* sQ = smem;                   // [GS * BQ][D]
  uint16_t* sK = sQ + S::q_elems;        // [STAGES][BC][D]
  uint16_t* sV = sK + STAGES * BC * D;   // [STAGES][BC][D]
  int* sPos = reinterpret_cast<int*>(sV + STAGES * BC * D);  // [STAGES][BC]
  int* sInfo = sPos + STAGES * BC;                           // [STAGES][BC]: head bits | kGqaWin
  int* sExcl = sInfo + STAGES * BC;      // [GS][Kb] exclusive blocks of each head slot
  int* sShBlk = sExcl + GS * Kb;         // [GS * Kb] shared blocks
  int* sIn = sShBlk + GS * Kb;           // [GS * Kb] the heads' lists (INT_MAX past the count)
  unsigned char* sShMask = reinterpret_cast<unsigned char*>(sIn + GS * Kb);  // [GS * Kb]
  // Scan scratch in the K/V stages (no tile is loaded before the lists are complete).
  int* sScan = reinterpret_cast<int*>(sK);                   // [GS * Kb + 1]
  unsigned char* sMaskTmp = reinterpret_cast<unsigned char*>(sScan + GS * Kb + 1);  // [GS * Kb]
  int* warp_tot = reinterpret_cast<int*>(sMaskTmp + ((GS * Kb + 15) & ~15));       // [warps]

  // Q tile: slot s rows r < BQ of head kvh * G + s; rows past n_q and slots >= G are zero-filled.
  for (int i = tid; i < GS * BQ * CH; i += NT) {
    const int r = i / CH, c = i % CH, s = r / BQ, rr = r % BQ;
    const bool ok = s < G && row0 + rr < p.n_q;
    const uint16_t* src = p.q + int64_t(ok ? row0 + rr : 0) * p.q_stride + int64_t(ok ? head0 + s : 0) * D + c * 8;
    cp_async16(sQ + swz<D>(r, c), src, ok ? 16 : 0);
  }

  // The heads' lists.
  int cnt[GS];
#pragma unroll
  for (int s = 0; s < GS; ++s)
    cnt[s] = s < G ? min(Kb, a.mask.counts[int64_t(head0 + s) * a.mask.n_qblocks + qb]) : 0;
  for (int i = tid; i < GS * Kb; i += NT) {
    const int s = i / Kb, j = i - s * Kb;
    int c = 0;
#pragma unroll
    for (int s2 = 0; s2 < GS; ++s2) c = s2 == s ? cnt[s2] : c;
    sIn[i] = j < c ? a.mask.blocks[(int64_t(head0 + s) * a.mask.n_qblocks + qb) * Kb + j] : INT_MAX;
  }
  __syncthreads();
  // Membership of every listed block; packed flags: exclusive (low 16 bits), first owner of a shared block
  // (high 16 bits).
  for (int i = tid; i < GS * Kb; i += NT) {
    const int s = i / Kb;
    const int b = sIn[i];
    int flags = 0;
    unsigned mask = 0;
    if (b != INT_MAX) {
      mask = 1u << s;
      bool dup = false;
#pragma unroll
      for (int s2 = 0; s2 < GS; ++s2) {
        if (s2 == s || cnt[s2] == 0) continue;
        const int* L = sIn + s2 * Kb;
        int lo2 = 0, hi2 = cnt[s2];  // first index with L[idx] >= b
        while (lo2 < hi2) {
          const int mid = (lo2 + hi2) >> 1;
          if (L[mid] < b) lo2 = mid + 1; else hi2 = mid;
        }
        if (lo2 < cnt[s2] && L[lo2] == b) {
          mask |= 1u << s2;
          dup |= s2 < s;
        }
      }
      flags = mask == (1u << s) ? 1 : (dup ? 0 : 1 << 16);
    }
    sScan[i] = flags;
    sMaskTmp[i] = static_cast<unsigned char>(mask);
  }
  __syncthreads();
  const int total = block_exclusive_scan<NT>(sScan, GS * Kb, warp_tot);
  for (int i = tid; i < GS * Kb; i += NT) {
    const int b = sIn[i];
    if (b == INT_MAX) continue;
    const int s = i / Kb, ex = sScan[i];
    const unsigned mask = sMaskTmp[i];
    if (mask == (1u << s)) {
      sExcl[s * Kb + (ex & 0xffff) - (sScan[s * Kb] & 0xffff)] = b;
    } else if (!(mask & ((1u << s) - 1u))) {  // first owner of a shared block
      sShBlk[ex >> 16] = b;
      sShMask[ex >> 16] = static_cast<unsigned char>(mask);
    }
  }
  int n_excl[GS];
  int n_excl_max = 0;
#pragma unroll
  for (int s = 0; s < GS; ++s) {
    const int e1 = (s + 1 < GS ? sScan[(s + 1) * Kb] : total) & 0xffff;
    n_excl[s] = e1 - (sScan[s * Kb] & 0xffff);
    n_excl_max = max(n_excl_max, n_excl[s]);
  }
  const int n_sh_keys = (total >> 16) * bk;
  __syncthreads();  // lists complete; the scan scratch (in the K/V stages) is dead

  const int n_sink_eff = max(0, min(a.hip.n_sink, far + 1));
  const int win_lo = max(0, t_min - w + 1);
  const int n_win = w > 0 ? t_max + 1 - win_lo : 0;
  const int n_split = (n_excl_max * bk + SL - 1) / SL;
  const int n_full_keys = n_sh_keys + n_sink_eff + n_win;
  const int n_tiles = n_split + (n_full_keys + BC - 1) / BC;
  const unsigned all_heads = (1u << G) - 1u;
  // Position of key slot i of a tile (-1: none) and its info (head bits, window flag).
  auto slot = [&](int tile, int i, int& info) -> int {
    if (tile < n_split) {
      const int s = i / SL, j = tile * SL + (i % SL);
      int c = 0;
#pragma unroll
      for (int s2 = 0; s2 < GS; ++s2) c = s2 == s ? n_excl[s2] : c;
      info = 1 << s;
      if (j >= c * bk) return -1;
      const int kp = sExcl[s * Kb + bk_div.div(j)] * bk + bk_div.mod(j);
      return kp <= far ? kp : -1;
    }
    const int f = (tile - n_split) * BC + i;
    if (f < n_sh_keys) {
      const int e = bk_div.div(f);
      info = sShMask[e];
      const int kp = sShBlk[e] * bk + bk_div.mod(f);
      return kp <= far ? kp : -1;
    }
    info = int(all_heads);
    if (f < n_sh_keys + n_sink_eff) return f - n_sh_keys;
    info |= kGqaWin;
    return f < n_full_keys ? win_lo + (f - n_sh_keys - n_sink_eff) : -1;
  };
  const uint16_t* kbase = p.k + int64_t(kvh) * p.kv_head_stride;
  const uint16_t* vbase = p.v + int64_t(kvh) * p.kv_head_stride;
  auto load_tile = [&](int tile, int stage) {
    uint16_t* dk = sK + stage * BC * D;
    uint16_t* dv = sV + stage * BC * D;
    for (int i = tid; i < BC * CH; i += NT) {
      const int r = i / CH, c = i % CH;
      int info;
      const int kp = slot(tile, r, info);
      const int64_t off = int64_t(kp < 0 ? 0 : kp) * p.kv_pos_stride + c * 8;
      cp_async16(dk + swz<D>(r, c), kbase + off, kp < 0 ? 0 : 16);
      cp_async16(dv + swz<D>(r, c), vbase + off, kp < 0 ? 0 : 16);
    }
    for (int i = tid; i < BC; i += NT) {
      int info;
      sPos[stage * BC + i] = slot(tile, i, info);
      sInfo[stage * BC + i] = info;
    }
  };
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < n_tiles) load_tile(st, st);
    cp_async_commit();
  }

  const int hs = warp / BQW, wrow0 = hs * BQ + (warp % BQW) * 16;  // head slot; first row in sQ
  const int myrow0 = (warp % BQW) * 16;                              // first row in the query block
  const unsigned mybit = 1u << hs;
  const bool active = hs < G && myrow0 < n_rows;
  const int g = lane >> 2, c4 = lane & 3;
  const int t_row[2] = {t_min + myrow0 + g, t_min + myrow0 + g + 8};
  const float sl2 = p.scale * kLog2e;
  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  uint32_t qf[D / 16][4];

  // Online softmax over NCH chunks of 16 keys starting at key row koff of the staged tile.
  auto process = [&](auto nch_tag, const uint16_t* tK, const uint16_t* tV, const int* pos, const int* info, int koff) {
    constexpr int NCH = decltype(nch_tag)::value, NK = 16 * NCH;
    float s[NK / 8][4];
#pragma unroll
    for (int j = 0; j < NK / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk += 2) {
#pragma unroll
      for (int j = 0; j < NK / 8; ++j) {
        uint32_t b[4];
        ldmatrix_x4(b, tK + swz<D>(koff + 8 * j + (lane & 7), 2 * kk + (lane >> 3)));
        mma_bf16(s[j], qf[kk], b[0], b[1]);
        mma_bf16(s[j], qf[kk + 1], b[2], b[3]);
      }
    }
#pragma unroll
    for (int j = 0; j < NK / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = koff + 8 * j + 2 * c4 + (e & 1);
        const int kp = pos[i], inf = info[i], t = t_row[e >> 1];
        const bool ok = kp >= 0 && (inf & mybit) &&
                        ((inf & kGqaWin) ? (kp > t - w && kp <= t) : kp <= t - w);
        s[j][e] = ok ? s[j][e] * sl2 : -INFINITY;
      }
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < NK / 8; ++j) {
      mx[0] = fmaxf(mx[0], fmaxf(s[j][0], s[j][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[j][2], s[j][3]));
    }
    float base[2], alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float mn = fmaxf(m_run[h], mx[h]);
      base[h] = mn == -INFINITY ? 0.f : mn;
      alpha[h] = fast_exp2(m_run[h] - base[h]);
      m_run[h] = mn;
    }
    float sum[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < NK / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = fast_exp2(s[j][e] - base[e >> 1]);
        sum[e >> 1] += s[j][e];
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) l_run[h] = l_run[h] * alpha[h] + sum[h];
    if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[j][0] *= alpha[0];
        o[j][1] *= alpha[0];
        o[j][2] *= alpha[1];
        o[j][3] *= alpha[1];
      }
    }
#pragma unroll
    for (int kk = 0; kk < NCH; ++kk) {
      uint32_t pa[4];
      pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int jp = 0; jp < D / 16; ++jp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, tV + swz<D>(koff + 16 * kk + (lane & 7) + 8 * ((lane >> 3) & 1), 2 * jp + (lane >> 4)));
        mma_bf16(o[2 * jp], pa, b[0], b[1]);
        mma_bf16(o[2 * jp + 1], pa, b[2], b[3]);
      }
    }
  };

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int stage = tile % STAGES;
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    {
      const int ahead = tile + STAGES - 1;
      if (ahead < n_tiles) load_tile(ahead, ahead % STAGES);
      cp_async_commit();
    }
    if (tile == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const int row = wrow0 + (lane & 7) + 8 * ((lane >> 3) & 1);
        ldmatrix_x4(qf[kk], sQ + swz<D>(row, 2 * kk + (lane >> 4)));
      }
    }
    if (!active) continue;  // warp-uniform
    const uint16_t* tK = sK + stage * BC * D;
    const uint16_t* tV = sV + stage * BC * D;
    const int* pos = sPos + stage * BC;
    const int* info = sInfo + stage * BC;
    // Chunks (16 keys) holding a key of this warp's head.
    unsigned rel = 0;
#pragma unroll
    for (int c = 0; c < NCHT; ++c) {
      const int i = c * 16 + (lane & 15);
      rel |= __ballot_sync(0xffffffffu, pos[i] >= 0 && (info[i] & mybit)) ? 1u << c : 0u;
    }
    constexpr unsigned grp = (1u << MAXCH) - 1u;
#pragma unroll
    for (int c0 = 0; c0 < NCHT; c0 += MAXCH) {
      const unsigned r = (rel >> c0) & grp;
      if (r == grp) {
        process(std::integral_constant<int, MAXCH>{}, tK, tV, pos, info, 16 * c0);
      } else if (r) {
#pragma unroll
        for (int c = 0; c < MAXCH; ++c)
          if (r & (1u << c)) process(std::integral_constant<int, 1>{}, tK, tV, pos, info, 16 * (c0 + c));
      }
    }
  }
  cp_async_wait<0>();
  if (!active) return;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float l = l_run[h];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int r = myrow0 + g + 8 * h;
    if (row0 + r >= p.n_q) continue;
    uint16_t* dst = p.out + int64_t(row0 + r) * p.out_stride + int64_t(head0 + hs) * D;
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      *reinterpret_cast<uint32_t*>(dst + 8 * j + 2 * c4) = pack_bf16(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Host side

cudaError_t last_launch_error() { return cudaGetLastError(); }

// hip_attention_prefill's variant that selects the per-head kernel everywhere (attention_cuda.h; the number it
// has in the H100 results of runs 13-15).
constexpr int kHipPrefillPerHead = 3;

bool head_dim_ok(int d) { return d == 64 || d == 128; }

template <class Kernel, class Args>
cudaError_t launch_with_smem(Kernel kernel, dim3 grid, dim3 block, int smem, cudaStream_t stream,
                             const Args& args) {
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
  }
  kernel<<<grid, block, smem, stream>>>(args);
  return last_launch_error();
}

template <int D, int NW, int BC, int MT>
cudaError_t dense_prefill_launch(const AttnParams& p, cudaStream_t stream) {
  using S = PrefillShape<D, NW, BC, MT>;
  const dim3 grid(p.n_head, (p.n_q + S::BR - 1) / S::BR);
  return launch_with_smem(dense_prefill_kernel<D, NW, BC, MT>, grid, dim3(S::NT), S::smem_bytes, stream, p);
}

int decode_splits(int n_keys, int ctas_per_split_unit, int target_ctas, int min_keys) {
  int splits = std::max(1, std::min(kMaxDecodeSplits, target_ctas / std::max(1, ctas_per_split_unit)));
  splits = std::min(splits, std::max(1, (n_keys + min_keys - 1) / min_keys));
  return splits;
}

int sm_count() {
  static int n = [] {
    int dev = 0, v = 132;
    if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev);
    return v;
  }();
  return n;
}

// Shared memory of hip_estimate_kernel.
int64_t est_smem_bytes(const HipParams& cfg, int32_t head_dim) {
  const int64_t Kb = cfg.k / cfg.block_k, nks = cfg.block_k / cfg.stride_k;
  auto r16 = [](int64_t b) { return (b + 15) / 16 * 16; };
  return r16(16 * head_dim * 2) + 3 * r16(Kb * 4) + 3 * r16(2 * Kb * 4) + r16((2 * Kb + 1) * 4) +
         r16(2 * Kb * 4) + r16(2 * Kb * nks * 4) + r16(16 * 4) + r16(2 * 256 * 4) + r16(kEstMaxWarps * 4 + 32);
}

// Shared memory of hip_estimate_cluster_kernel<D, NT, ., CPT>.
int64_t est_cluster_smem_bytes(int32_t head_dim, int nt, int cpt) {
  auto r16 = [](int64_t b) { return (b + 15) / 16 * 16; };
  const int64_t cap = int64_t(nt) * cpt, nw = nt / 32;
  (void)head_dim;
  return 3 * r16(cap * 4) + r16(2 * cap * 4) + r16(2 * 4 * 256 * 4) + r16(nw * 16) + r16(nw * 4) + r16(nw * 8);
}

// Launches hip_estimate_cluster_kernel<D, NT, CL, CPT> as clusters of CL CTAs; false (nothing launched) if
// NT * CPT < 2 K_b or the sampled keys per block are not 1, 2, 4 or 8.
template <int D, int NT, int CL, int CPT>
bool launch_est_cluster(const EstArgs& a, int n_head, int n_qblocks, cudaStream_t s, cudaError_t& err) {
  static_assert(CL <= 8, "portable cluster sizes only");
  const int Kb = a.hip.k / a.hip.block_k, nks = a.hip.block_k / a.hip.stride_k;
  if (nks != 1 && nks != 2 && nks != 4 && nks != 8) return false;
  if (2 * Kb > NT * CPT) return false;
  auto kernel = hip_estimate_cluster_kernel<D, NT, CL, CPT>;
  const int smem = int(est_cluster_smem_bytes(D, NT, CPT));
  if (smem > 48 * 1024) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return true;
  }
  cudaLaunchConfig_t lc = {};
  lc.gridDim = dim3(n_head * CL, n_qblocks);
  lc.blockDim = dim3(NT);
  lc.dynamicSmemBytes = smem;
  lc.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = CL;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  lc.attrs = attr;
  lc.numAttrs = 1;
  err = cudaLaunchKernelEx(&lc, kernel, a);
  if (err == cudaSuccess) err = last_launch_error();
  return true;
}

// Prefill with the cluster kernel's selection in one CTA per (head, query block) (CL = 1: no cluster, no
// distributed shared memory): NT threads of CPT candidates each, UNR gather passes in flight per warp, MINB CTAs
// per SM; false (nothing launched) if NT * CPT < 2 K_b or the sampled keys per block are not 1, 2, 4 or 8.
template <int D, int NT, int CPT, int UNR, int MINB>
bool launch_est_one_cta(const EstArgs& a, int n_head, int n_qblocks, cudaStream_t s, cudaError_t& err) {
  const int Kb = a.hip.k / a.hip.block_k, nks = a.hip.block_k / a.hip.stride_k;
  if ((nks != 1 && nks != 2 && nks != 4 && nks != 8) || 2 * Kb > NT * CPT) return false;
  err = launch_with_smem(hip_estimate_cluster_kernel<D, NT, 1, CPT, UNR, MINB>, dim3(n_head, n_qblocks),
                         dim3(NT), int(est_cluster_smem_bytes(D, NT, CPT)), s, a);
  return true;
}

// The cluster configuration: 8 CTAs of 128 threads per (head, query block) (4 candidates per thread:
// K_b <= 256); larger K_b: 4 CTAs of 256 threads, 4 candidates per thread (K_b <= 512). Small CTAs let all 32
// heads' clusters of a decode step be resident at once on an H100 (clusters of 8 x 256 or 4 x 512 threads did
// not: 85 and 106 us).
template <int D>
bool launch_est_cluster_default(const EstArgs& a, int n_head, int n_qblocks, cudaStream_t s, cudaError_t& err) {
  return launch_est_cluster<D, 128, 8, 4>(a, n_head, n_qblocks, s, err) ||
         launch_est_cluster<D, 256, 4, 4>(a, n_head, n_qblocks, s, err);
}

// Prefill (many (head, query block) pairs): the cluster kernel's selection in one CTA of 128 threads per (head,
// query block), 4 gather passes in flight per warp, 4 CTAs per SM (run 13, H100: 41.8 ms at 128K against 45.9
// for hip_estimate_kernel); hip_estimate_kernel (128 threads, 5 CTAs per SM) where that cannot hold the
// candidates. Decode (n_q == 1, or (head, query block) pairs for at most half the SMs): the cluster kernel
// (launch_est_cluster_default); hip_estimate_kernel with 512 threads where it cannot hold the candidates. (The
// other configurations and kernels compared: docs/GPU.md.)
template <int D>
cudaError_t est_dispatch(const HipParams& cfg, const EstArgs& a, int n_head, int n_qblocks, bool decode,
                         cudaStream_t s) {
  const dim3 grid(n_head, n_qblocks);
  const int smem = int(est_smem_bytes(cfg, a.p.head_dim));
  constexpr int P = kEstThreadsPrefill, Q = kEstThreadsDecode;
  const bool few = decode || int64_t(n_head) * n_qblocks * 2 <= sm_count();
  cudaError_t err = cudaSuccess;
  if (!few) {
    if (launch_est_one_cta<D, 128, 4, 4, 4>(a, n_head, n_qblocks, s, err)) return err;
    return launch_with_smem(hip_estimate_kernel<D, P, 5>, grid, dim3(P), smem, s, a);
  }
  if (launch_est_cluster_default<D>(a, n_head, n_qblocks, s, err)) return err;
  return launch_with_smem(hip_estimate_kernel<D, Q, 1>, grid, dim3(Q), smem, s, a);
}

}  // namespace

int64_t decode_workspace_floats(int32_t n_head, int32_t head_dim, int32_t max_splits) {
  return int64_t(n_head) * max_splits * (head_dim + 2) + n_head;  // partials, then one counter per head
}

int64_t hip_estimate_smem_bytes(const HipParams& cfg, int32_t head_dim) {
  return est_smem_bytes(cfg, head_dim);
}

cudaError_t attention_prefill_dense(const AttnParams& p, cudaStream_t stream) {
  if (!head_dim_ok(p.head_dim) || p.n_q <= 0) return p.n_q == 0 ? cudaSuccess : cudaErrorInvalidValue;
  // 4 warps x 2 row tiles (128 query rows per CTA), key tiles of 64: FlashAttention-2's shape (other warp and
  // tile shapes compared and removed: docs/GPU.md).
  if (p.head_dim == 64) return dense_prefill_launch<64, 4, 64, 2>(p, stream);
  return dense_prefill_launch<128, 4, 64, 2>(p, stream);
}

cudaError_t attention_decode_dense(const AttnParams& p, const DecodeWorkspace& ws, cudaStream_t stream) {
  if (!head_dim_ok(p.head_dim) || p.n_q != 1) return cudaErrorInvalidValue;
  const int G = p.n_head / p.n_kv_head;
  DecodeArgs a{};
  a.p = p;
  a.partial = ws.partial;
  a.arrived = reinterpret_cast<int*>(ws.partial + ws.n_floats - p.n_head);
  a.n_splits = decode_splits(p.n_kv, p.n_kv_head, 4 * sm_count(), 256);
  a.keys_per_split = (p.n_kv + a.n_splits - 1) / a.n_splits;
  if (ws.n_floats < decode_workspace_floats(p.n_head, p.head_dim, a.n_splits)) return cudaErrorInvalidValue;
  const dim3 grid(p.n_kv_head, a.n_splits);
  cudaError_t e = cudaSuccess;
#define HS_DENSE_DECODE(DD, GG) \
  if (p.head_dim == DD && G == GG) { dense_decode_kernel<DD, GG><<<grid, kDecodeThreads, 0, stream>>>(a); e = last_launch_error(); } else
  HS_DENSE_DECODE(128, 4) HS_DENSE_DECODE(64, 3) HS_DENSE_DECODE(128, 1) HS_DENSE_DECODE(64, 1)
  HS_DENSE_DECODE(128, 2) HS_DENSE_DECODE(64, 2) HS_DENSE_DECODE(128, 8) HS_DENSE_DECODE(64, 4)
  return cudaErrorInvalidValue;
#undef HS_DENSE_DECODE
  return e;
}

cudaError_t hip_estimate_mask(const HipParams& cfg, const AttnParams& p, const HipMaskDev& mask,
                              cudaStream_t stream) {
  if (!head_dim_ok(p.head_dim) || cfg.block_q / cfg.stride_q > 16 || cfg.k / cfg.block_k > 1024 ||
      mask.kb_stride < cfg.k / cfg.block_k || mask.n_qblocks != (p.n_q + cfg.block_q - 1) / cfg.block_q)
    return cudaErrorInvalidValue;
  if (p.n_q == 0) return cudaSuccess;
  EstArgs a{p, cfg, mask};
  const bool decode = p.n_q == 1;
  return p.head_dim == 128 ? est_dispatch<128>(cfg, a, p.n_head, mask.n_qblocks, decode, stream)
                           : est_dispatch<64>(cfg, a, p.n_head, mask.n_qblocks, decode, stream);
}

namespace {
template <int D, int NW, int BC>
cudaError_t hip_prefill_launch(const PrefillArgs& a, dim3 grid, cudaStream_t stream) {
  using S = PrefillShape<D, NW, BC, 1>;
  return launch_with_smem(hip_prefill_kernel<D, NW, BC>, grid, dim3(S::NT), S::smem_bytes, stream, a);
}

// The GQA-shared kernel for b_q = 16 BQW rows, GS heads of a group per CTA (a larger group split over adjacent
// CTAs); false (nothing launched) if b_q differs or the lists do not fit in shared memory.
template <int D, int BQW, int GS, int STAGES, int MINB>
bool hip_gqa_launch(const PrefillArgs& a, cudaStream_t stream, cudaError_t& err) {
  using S = HipGqaShape<D, BQW, GS, STAGES>;
  const int G = a.p.n_head / a.p.n_kv_head;
  if (a.hip.block_q != S::BQ) return false;
  const int n_sub = (G + GS - 1) / GS;
  const int64_t smem = S::fixed_bytes + hip_gqa_list_bytes(a.mask.kb_stride, GS);
  // The scan scratch lives in the K/V stages.
  const int64_t scratch = int64_t(GS) * a.mask.kb_stride * 5 + 16 + 4 * S::NW + 64;
  if (smem > 227 * 1024 || scratch > int64_t(S::kv_elems) * 2) return false;
  err = launch_with_smem(hip_gqa_prefill_kernel<D, BQW, GS, STAGES, MINB>,
                         dim3(a.p.n_kv_head * n_sub, a.mask.n_qblocks), dim3(S::NT), int(smem), stream, a);
  return true;
}

}  // namespace

cudaError_t hip_attention_prefill(const HipParams& cfg, const AttnParams& p, const HipMaskDev& mask,
                                  cudaStream_t stream, int variant) {
  if (!head_dim_ok(p.head_dim) || (cfg.block_q != 32 && cfg.block_q != 64) ||
      (variant != 0 && variant != kHipPrefillPerHead))
    return cudaErrorInvalidValue;
  if (p.n_q == 0) return cudaSuccess;
  PrefillArgs a{p, cfg, mask};
  const dim3 grid(p.n_head, mask.n_qblocks);
  cudaError_t err = cudaSuccess;
  // Default at b_q 32 and head dim 128: the GQA-shared kernel with 2 heads per CTA, 4 warps, 3 CTAs per SM,
  // lazy rescale (measured faster than the per-head kernel there: run 15, H100, 4.38 vs 4.50 ms at 32K, 17.73
  // vs 18.17 ms at 128K); the per-head kernel where its lists do not fit in shared memory (kb_stride > 3267)
  // and elsewhere (b_q 64 and head dim 64).
  if (variant == 0 && cfg.block_q == 32 && p.head_dim == 128 && hip_gqa_launch<128, 2, 2, 2, 3>(a, stream, err))
    return err;
  // The per-head kernel (one CTA per (head, query block)), 2 stages; key tiles of 32 (64 at b_q 32 and head dim
  // 64). Each CTA is short (~800 keys) and gathers scattered blocks: what counts is loads in flight per SM
  // against shared memory (CTAs) per SM; deeper pipelines (16-key tiles with 4 stages, 32 with 3) lost CTAs and
  // time at b_q 32 (docs/GPU.md).
  if (cfg.block_q == 32) {
    if (p.head_dim == 128) return hip_prefill_launch<128, 2, 32>(a, grid, stream);
    return hip_prefill_launch<64, 2, 64>(a, grid, stream);
  }
  if (p.head_dim == 128) return hip_prefill_launch<128, 4, 32>(a, grid, stream);
  return hip_prefill_launch<64, 4, 32>(a, grid, stream);
}

cudaError_t hip_attention_decode(const HipParams& cfg, const AttnParams& p, const HipMaskDev& mask,
                                 const DecodeWorkspace& ws, cudaStream_t stream) {
  if (!head_dim_ok(p.head_dim) || p.n_q != 1 || mask.n_qblocks != 1) return cudaErrorInvalidValue;
  DecodeArgs a{};
  a.p = p;
  a.hip = cfg;
  a.mask = mask;
  a.partial = ws.partial;
  a.arrived = reinterpret_cast<int*>(ws.partial + ws.n_floats - p.n_head);
  // Upper bound of the list length (sink + k selected keys + window); CTAs past a head's list end are idle.
  const int max_keys = cfg.n_sink + cfg.k + cfg.window;
  // The step is a chain of dependent round trips (mask -> K/V -> partial -> merge), so short chains beat fewer
  // CTAs: one round of loads per CTA, kHipDecodeUnroll (8) keys in flight per lane group (64 keys per CTA at
  // head dim 128). (Two rounds of 4, and 32 keys per CTA, compared and removed: docs/GPU.md.)
  const int groups = kDecodeThreads / (p.head_dim / 8);  // lane groups per CTA
  const int per_cta = groups * kHipDecodeUnroll;
  a.n_splits = std::max(1, std::min(kMaxDecodeSplits, (max_keys + per_cta - 1) / per_cta));
  a.keys_per_split = (max_keys + a.n_splits - 1) / a.n_splits;
  if (ws.n_floats < decode_workspace_floats(p.n_head, p.head_dim, a.n_splits)) return cudaErrorInvalidValue;
  const dim3 grid(p.n_head, a.n_splits);
  if (p.head_dim == 128)
    hip_decode_kernel<128><<<grid, kDecodeThreads, 0, stream>>>(a);
  else
    hip_decode_kernel<64><<<grid, kDecodeThreads, 0, stream>>>(a);
  return last_launch_error();
}

}  // namespace hs::cuda
