// CUDA attention kernels: see attention_cuda.h for the contract. Layout of this file:
//   1. device helpers: cp.async, ldmatrix, mma.sync m16n8k16 bf16 (fp32 accumulate), exp2, swizzled tiles;
//   2. prefill_kernel: FlashAttention-2 style causal prefill, dense or HiP block-sparse (KeySource policy);
//   3. dense_decode_kernel, hip_decode_kernel: split-K decode, dense (per KV group) or HiP (per head);
//   4. hip_estimate_kernel: the whole hierarchical top-k search of one (head, query block) in one CTA;
//   5. host wrappers.
//
// Tensor-core fragment layouts (PTX ISA, mma.m16n8k16 .bf16), with g = lane / 4 and c = lane % 4:
//   A (16x16, rows x k): a0 = A[g][2c..2c+1], a1 = A[g+8][2c..], a2 = A[g][2c+8..], a3 = A[g+8][2c+8..]
//   B (16x8,  k x cols): b0 = B[2c..2c+1][g], b1 = B[2c+8..2c+9][g]
//   C (16x8,  fp32):     c0, c1 = C[g][2c..2c+1], c2, c3 = C[g+8][2c..2c+1]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "backends/cuda/attention_cuda.h"

namespace hs::cuda {

namespace {

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

template <int D, int NW, int BC, int MT = 1, int STAGES = 2>
struct PrefillShape {
  static constexpr int BR = 16 * MT * NW, NT = 32 * NW;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  // Q, STAGES x (K, V), STAGES x key positions
  static constexpr int smem_bytes = (BR * D + 2 * STAGES * BC * D) * 2 + STAGES * BC * 4;
};

// MT: m16 row tiles per warp. MT = 1 keeps the warp's Q fragments in registers; MT = 2 (FlashAttention-2's
// choice for d = 128) re-reads them from shared memory once per key tile but reuses every K/V fragment for
// two row tiles, halving the shared-memory traffic per tensor-core instruction.
// STAGES: key tiles in shared memory; STAGES - 1 loads are in flight while a tile is computed on.
template <int D, int NW, int BC, int MT, int STAGES, class Keys>
__device__ __forceinline__ void prefill_body(const AttnParams& p, const Keys& keys, int head, int row0,
                                             uint16_t* smem) {
  using S = PrefillShape<D, NW, BC, MT, STAGES>;
  constexpr int BR = S::BR, NT = S::NT, CH = S::kChunks;
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
  prefill_body<D, NW, BC, MT, 2>(p, keys, head, row0, smem);
}

// Grid: (n_head, query blocks); block_q == 16 * NW rows.
template <int D, int NW, int BC, int STAGES>
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
  prefill_body<D, NW, BC, 1, STAGES>(p, keys, head, row0, smem);
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Split-K decode. A CTA of 4 warps owns GH query heads that share one KV head (GH = G for dense, 1 for HiP
// whose masks are per head) and a contiguous range of a key list. Lanes hold 8 dims (16 bytes) of a key, so a
// warp covers 32 / (D/8) keys per step; each lane group takes U keys per step (all loads issued before use),
// updates its own online-softmax state, and the CTA merges its groups in shared memory into one partial
// (o, m, l) per head, written to the workspace; the last CTA of a head group merges the splits.

constexpr int kDecodeThreads = 128;
constexpr int kDecodeUnroll = 4;

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

template <int D, int GH, class Keys>
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
  for (int step0 = i0; step0 < i1; step0 += NG * kDecodeUnroll) {
    const int base = step0 + grp;
    int kp[kDecodeUnroll];
    uint4 kr[kDecodeUnroll], vr[kDecodeUnroll];
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int i = base + u * NG;
      kp[u] = i < i1 ? keys.pos(i) : -1;
      const int64_t off = int64_t(kp[u] < 0 ? 0 : kp[u]) * p.kv_pos_stride;
      kr[u] = kp[u] >= 0 ? __ldg(reinterpret_cast<const uint4*>(kbase + off)) : make_uint4(0, 0, 0, 0);
      vr[u] = kp[u] >= 0 ? __ldg(reinterpret_cast<const uint4*>(vbase + off)) : make_uint4(0, 0, 0, 0);
    }
    float sc[GH][kDecodeUnroll];
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      float kf[8];
      bf16x8_to_float(kr[u], kf);
#pragma unroll
      for (int h = 0; h < GH; ++h) {
        float s = 0.f;
#pragma unroll
        for (int d = 0; d < 8; ++d) s = fmaf(q[h][d], kf[d], s);
#pragma unroll
        for (int off = 1; off < LPK; off <<= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        sc[h][u] = kp[u] >= 0 ? s : -INFINITY;
      }
    }
#pragma unroll
    for (int h = 0; h < GH; ++h) {
      float mx = m[h];
#pragma unroll
      for (int u = 0; u < kDecodeUnroll; ++u) mx = fmaxf(mx, sc[h][u]);
      if (mx == -INFINITY) continue;  // nothing valid yet
      const float alpha = fast_exp2(m[h] - mx);
      m[h] = mx;
      l[h] *= alpha;
#pragma unroll
      for (int d = 0; d < 8; ++d) o[h][d] *= alpha;
#pragma unroll
      for (int u = 0; u < kDecodeUnroll; ++u) {
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

// Grid: (n_head, n_splits).
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
  decode_split_body<D, 1>(a, keys, head, blockIdx.y);
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

// Threads per estimation CTA: prefill has thousands of CTAs, and small CTAs let several share an SM (the
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

// The previous kernel (before the fused phases below), kept as a numbered variant for the benchmark.
template <int D, int NT>
__global__ void __launch_bounds__(NT, NT <= 128 ? 5 : 1) hip_estimate_kernel_prev(const EstArgs a) {
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
    sm.hist = reinterpret_cast<int*>(take(256 * 4));
    sm.misc = reinterpret_cast<int*>(take(kEstMaxWarps * 4 + 8 * 4));
  }
  int* warp_tot = sm.misc;
  int* shared_vals = sm.misc + kEstWarps;  // [0] max size, [1] threshold prefix, [2] need

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
    // Halve: node i yields 1 (size 1: itself, keeping its score) or 2 children.
    for (int i = tid; i < n_nodes; i += kEstThreads) sm.scan[i] = sm.node_size[i] == 1 ? 1 : 2;
    __syncthreads();
    const int n_cand = block_exclusive_scan<NT>(sm.scan, n_nodes, warp_tot);
    for (int i = tid; i < n_nodes; i += kEstThreads) {
      const int at = sm.scan[i], s = sm.node_start[i], h = sm.node_size[i];
      if (h == 1) {
        sm.cand_start[at] = s;
        sm.cand_size[at] = 1;
        sm.cand_score[at] = sm.node_score[i];
      } else {
        const int hl = h / 2;
        sm.cand_start[at] = s;
        sm.cand_size[at] = hl;
        sm.cand_score[at] = __int_as_float(0x7fc00000);
        sm.cand_start[at + 1] = s + hl;
        sm.cand_size[at + 1] = h - hl;
        sm.cand_score[at + 1] = __int_as_float(0x7fc00000);
      }
    }
    __syncthreads();
    // The children without a score, compacted.
    for (int i = tid; i < n_cand; i += kEstThreads) sm.scan[i] = isnan(sm.cand_score[i]) ? 1 : 0;
    __syncthreads();
    const int n_todo = block_exclusive_scan<NT>(sm.scan, n_cand, warp_tot);
    for (int i = tid; i < n_cand; i += kEstThreads)
      if (isnan(sm.cand_score[i])) sm.todo[sm.scan[i]] = i;
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
#pragma unroll
          for (int e2 = 0; e2 < 2; ++e2) {
            const int ki = pbase + 2 * c4 + e2;
            if (ki < n_keys) sm.kmax[ki] = best[e2];
          }
        }
      }
    }
    __syncthreads();
    for (int t = tid; t < n_todo; t += kEstThreads) {
      float s = sm.kmax[t * nks];
      for (int j = 1; j < nks; ++j) s = fmaxf(s, sm.kmax[t * nks + j]);
      sm.cand_score[sm.todo[t]] = s;
    }
    __syncthreads();

    // Select the K_b best candidates (score descending, then lower start = lower index).
    int n_keep = n_cand;
    if (n_cand > Kb) {
      if (tid == 0) {
        shared_vals[1] = 0;   // threshold prefix
        shared_vals[2] = Kb;  // still needed from the candidates matching the prefix
      }
      uint32_t prefix_mask = 0;
      for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += kEstThreads) sm.hist[i] = 0;
        __syncthreads();
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
          if (digit < 256 && lane == __ffs(peers) - 1) atomicAdd(&sm.hist[digit], __popc(peers));
        }
        __syncthreads();
        if (warp == 0) {  // the digit where the running count reaches `need`
          const int need = shared_vals[2];
          int cnt[8], lsum = 0;
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            cnt[i] = sm.hist[lane * 8 + i];
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
      for (int i = tid; i < n_cand; i += kEstThreads) sm.scan[i] = desc_order(sm.cand_score[i]) == thresh;
      __syncthreads();
      block_exclusive_scan<NT>(sm.scan, n_cand, warp_tot);
      for (int i = tid; i < n_cand; i += kEstThreads) {
        const uint32_t key = desc_order(sm.cand_score[i]);
        sm.todo[i] = key < thresh || (key == thresh && sm.scan[i] < need_eq);
      }
      __syncthreads();
      for (int i = tid; i < n_cand; i += kEstThreads) sm.scan[i] = sm.todo[i];
      __syncthreads();
      n_keep = block_exclusive_scan<NT>(sm.scan, n_cand, warp_tot);
    } else {
      for (int i = tid; i < n_cand; i += kEstThreads) {
        sm.todo[i] = 1;
        sm.scan[i] = i;
      }
      __syncthreads();
    }
    if (tid == 0) shared_vals[0] = 0;
    __syncthreads();
    for (int i = tid; i < n_cand; i += kEstThreads) {
      if (sm.todo[i]) {
        const int at = sm.scan[i];
        sm.node_start[at] = sm.cand_start[i];
        sm.node_size[at] = sm.cand_size[i];
        sm.node_score[at] = sm.cand_score[i];
        atomicMax(&shared_vals[0], sm.cand_size[i]);
      }
    }
    __syncthreads();
    n_nodes = n_keep;
    max_size = shared_vals[0];
    __syncthreads();  // everyone has read shared_vals[0] before the next iteration resets it
  }
  for (int i = tid; i < n_nodes; i += kEstThreads) out[i] = base_blk + sm.node_start[i];
  if (tid == 0) a.mask.counts[mrow] = n_nodes;
}

// Per iteration 15 barriers instead of ~32 (the kernel is a latency chain of barriers, not bound by its loads):
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

// ---------------------------------------------------------------------------------------------------------------
// 5. Host side

cudaError_t last_launch_error() { return cudaGetLastError(); }

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

// Shared memory of hip_estimate_kernel and hip_estimate_kernel_prev (which uses one of the two histograms).
int64_t est_smem_bytes(const HipParams& cfg, int32_t head_dim) {
  const int64_t Kb = cfg.k / cfg.block_k, nks = cfg.block_k / cfg.stride_k;
  auto r16 = [](int64_t b) { return (b + 15) / 16 * 16; };
  return r16(16 * head_dim * 2) + 3 * r16(Kb * 4) + 3 * r16(2 * Kb * 4) + r16((2 * Kb + 1) * 4) +
         r16(2 * Kb * 4) + r16(2 * Kb * nks * 4) + r16(16 * 4) + r16(2 * 256 * 4) + r16(kEstMaxWarps * 4 + 32);
}

template <int D>
cudaError_t est_dispatch(const HipParams& cfg, const EstArgs& a, int n_head, int n_qblocks, bool decode,
                         int variant, cudaStream_t s) {
  const dim3 grid(n_head, n_qblocks);
  const int smem = int(est_smem_bytes(cfg, a.p.head_dim));
  constexpr int P = kEstThreadsPrefill, Q = kEstThreadsDecode;
  if (!decode) {
    switch (variant) {
      case 1: return launch_with_smem(hip_estimate_kernel_prev<D, P>, grid, dim3(P), smem, s, a);
      case 2: return launch_with_smem(hip_estimate_kernel<D, 64, 9>, grid, dim3(64), smem, s, a);
      default: return launch_with_smem(hip_estimate_kernel<D, P, 5>, grid, dim3(P), smem, s, a);
    }
  }
  switch (variant) {
    case 1: return launch_with_smem(hip_estimate_kernel_prev<D, Q>, grid, dim3(Q), smem, s, a);
    case 2: return launch_with_smem(hip_estimate_kernel<D, 128, 1>, grid, dim3(128), smem, s, a);
    default: return launch_with_smem(hip_estimate_kernel<D, Q, 1>, grid, dim3(Q), smem, s, a);
  }
}

}  // namespace

int64_t decode_workspace_floats(int32_t n_head, int32_t head_dim, int32_t max_splits) {
  return int64_t(n_head) * max_splits * (head_dim + 2) + n_head;  // partials, then one counter per head
}

int64_t hip_estimate_smem_bytes(const HipParams& cfg, int32_t head_dim) {
  return est_smem_bytes(cfg, head_dim);
}

cudaError_t attention_prefill_dense(const AttnParams& p, cudaStream_t stream, int variant) {
  if (!head_dim_ok(p.head_dim) || p.n_q <= 0) return p.n_q == 0 ? cudaSuccess : cudaErrorInvalidValue;
  // Variants (head dim 128; timings in docs/GPU.md): 0 = 4 warps x 2 row tiles, BC 64 (FA2's shape);
  // 1 = 8 warps x 1 row tile, BC 64; 2 = 4 warps x 2 row tiles, BC 32; 3 = 4 warps x 1 row tile, BC 64;
  // 4 = 4 warps x 2 row tiles, BC 48 (fewer S registers than 0, which spills a little).
  if (p.head_dim == 64) {
    switch (variant) {
      case 1: return dense_prefill_launch<64, 8, 64, 1>(p, stream);
      case 2: return dense_prefill_launch<64, 4, 64, 1>(p, stream);
      default: return dense_prefill_launch<64, 4, 64, 2>(p, stream);
    }
  }
  switch (variant) {
    case 1: return dense_prefill_launch<128, 8, 64, 1>(p, stream);
    case 2: return dense_prefill_launch<128, 4, 32, 2>(p, stream);
    case 3: return dense_prefill_launch<128, 4, 64, 1>(p, stream);
    case 4: return dense_prefill_launch<128, 4, 48, 2>(p, stream);
    default: return dense_prefill_launch<128, 4, 64, 2>(p, stream);
  }
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
                              cudaStream_t stream, int variant) {
  if (!head_dim_ok(p.head_dim) || cfg.block_q / cfg.stride_q > 16 || cfg.k / cfg.block_k > 1024 ||
      mask.kb_stride < cfg.k / cfg.block_k || mask.n_qblocks != (p.n_q + cfg.block_q - 1) / cfg.block_q)
    return cudaErrorInvalidValue;
  if (p.n_q == 0) return cudaSuccess;
  EstArgs a{p, cfg, mask};
  const bool decode = p.n_q == 1;
  return p.head_dim == 128 ? est_dispatch<128>(cfg, a, p.n_head, mask.n_qblocks, decode, variant, stream)
                           : est_dispatch<64>(cfg, a, p.n_head, mask.n_qblocks, decode, variant, stream);
}

namespace {
template <int D, int NW, int BC, int STAGES>
cudaError_t hip_prefill_launch(const PrefillArgs& a, dim3 grid, cudaStream_t stream) {
  using S = PrefillShape<D, NW, BC, 1, STAGES>;
  return launch_with_smem(hip_prefill_kernel<D, NW, BC, STAGES>, grid, dim3(S::NT), S::smem_bytes, stream, a);
}

}  // namespace

cudaError_t hip_attention_prefill(const HipParams& cfg, const AttnParams& p, const HipMaskDev& mask,
                                  cudaStream_t stream, int variant) {
  if (!head_dim_ok(p.head_dim) || (cfg.block_q != 32 && cfg.block_q != 64)) return cudaErrorInvalidValue;
  if (p.n_q == 0) return cudaSuccess;
  PrefillArgs a{p, cfg, mask};
  const dim3 grid(p.n_head, mask.n_qblocks);
  // Variants (head dim 128), measured on an H100 (docs/GPU.md): b_q 32: 0 = key tiles of 32, 2 stages (best);
  // 1 = tiles of 16, 4 stages; 2 = tiles of 32, 3 stages. b_q 64: 0 = tiles of 32, 2 stages (best, with the
  // division-free key lists); 1 = 16/4; 2 = 32/3. Each CTA is short (~800 keys) and gathers scattered blocks: what counts is loads in flight per
  // SM against shared memory (CTAs) per SM; deeper pipelines lost CTAs and time at b_q 32.
  if (cfg.block_q == 32) {
    if (p.head_dim == 128) {
      switch (variant) {
        case 1: return hip_prefill_launch<128, 2, 16, 4>(a, grid, stream);
        case 2: return hip_prefill_launch<128, 2, 32, 3>(a, grid, stream);
        default: return hip_prefill_launch<128, 2, 32, 2>(a, grid, stream);
      }
    }
    return hip_prefill_launch<64, 2, 64, 2>(a, grid, stream);
  }
  if (p.head_dim == 128) {
    switch (variant) {
      case 1: return hip_prefill_launch<128, 4, 16, 4>(a, grid, stream);
      case 2: return hip_prefill_launch<128, 4, 32, 3>(a, grid, stream);
      default: return hip_prefill_launch<128, 4, 32, 2>(a, grid, stream);
    }
  }
  return hip_prefill_launch<64, 4, 32, 2>(a, grid, stream);
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
  // ~64 keys per CTA: with 8 lane groups x 4 keys in flight that is two rounds of loads per CTA (the step is a
  // chain of dependent round trips, so short chains beat fewer CTAs).
  a.n_splits = std::max(1, std::min(kMaxDecodeSplits, (max_keys + 63) / 64));
  a.keys_per_split = (max_keys + a.n_splits - 1) / a.n_splits;
  if (ws.n_floats < decode_workspace_floats(p.n_head, p.head_dim, a.n_splits)) return cudaErrorInvalidValue;
  const dim3 grid(p.n_head, a.n_splits);
  if (p.head_dim == 128)
    hip_decode_kernel<128><<<grid, kDecodeThreads, 0, stream>>>(a);
  else
    hip_decode_kernel<64><<<grid, kDecodeThreads, 0, stream>>>(a);
  cudaError_t e = last_launch_error();
  return e;
}

}  // namespace hs::cuda
