#include "ops/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <new>
#include <vector>

#include "backends/cpu/cpu_features.h"
#include "ops/activations.h"
#include "util/common.h"

// gcc 12 warns about the undefined pass-through operand inside the AVX-512 conversion intrinsics.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace hs {

// ---------------------------------------------------------------------------------------------------------------
// Buffers and the state

void AlignedFloats::reserve(size_t n) {
  if (n <= cap_) return;
  const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  p_.reset(static_cast<float*>(p));
  cap_ = bytes / sizeof(float);
}

void SoftmaxState::init(int32_t n_rows, int32_t dim) {
  HS_CHECK(n_rows >= 0 && dim > 0 && dim % 16 == 0, "SoftmaxState: bad shape %d x %d", n_rows, dim);
  n_rows_ = n_rows;
  dim_ = dim;
  m_.reserve(size_t(n_rows));
  l_.reserve(size_t(n_rows));
  o_.reserve(size_t(n_rows) * size_t(dim));
  reset();
}

void SoftmaxState::reset() {
  std::fill_n(m_.data(), n_rows_, -std::numeric_limits<float>::infinity());
  std::fill_n(l_.data(), n_rows_, 0.0f);
  std::fill_n(o_.data(), int64_t(n_rows_) * dim_, 0.0f);
}

void SoftmaxState::merge(const SoftmaxState& other) {
  HS_CHECK(other.n_rows_ == n_rows_ && other.dim_ == dim_, "SoftmaxState::merge: shape %d x %d vs %d x %d",
           n_rows_, dim_, other.n_rows_, other.dim_);
  for (int32_t r = 0; r < n_rows_; ++r) merge_row(r, other, r);
}

void SoftmaxState::merge_row(int32_t r, const SoftmaxState& other, int32_t other_row) {
  const float m1 = m_.data()[r], m2 = other.m_.data()[other_row];
  if (m2 == -std::numeric_limits<float>::infinity()) return;  // other saw no key for this row
  float* o = o_row(r);
  const float* o2 = other.o_row(other_row);
  if (m1 == -std::numeric_limits<float>::infinity()) {  // this row saw no key: take the other's
    m_.data()[r] = m2;
    l_.data()[r] = other.l_.data()[other_row];
    std::copy_n(o2, dim_, o);
    return;
  }
  const float m = std::max(m1, m2);
  const float a1 = std::exp(m1 - m), a2 = std::exp(m2 - m);  // one of them is exactly 1
  m_.data()[r] = m;
  l_.data()[r] = l_.data()[r] * a1 + other.l_.data()[other_row] * a2;
  const __m256 va1 = _mm256_set1_ps(a1), va2 = _mm256_set1_ps(a2);
  for (int32_t d = 0; d < dim_; d += 8)
    _mm256_store_ps(o + d,
                    _mm256_fmadd_ps(_mm256_load_ps(o2 + d), va2, _mm256_mul_ps(_mm256_load_ps(o + d), va1)));
}

void SoftmaxState::finalize_row(int32_t r, float* out) const {
  const float l = l_.data()[r];
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  const __m256 vinv = _mm256_set1_ps(inv);
  const float* o = o_row(r);
  for (int32_t d = 0; d < dim_; d += 8) _mm256_storeu_ps(out + d, _mm256_mul_ps(_mm256_load_ps(o + d), vinv));
}

void SoftmaxState::finalize(float* out, int64_t out_stride) const {
  for (int32_t r = 0; r < n_rows_; ++r) finalize_row(r, out + r * out_stride);
}

void QueryTile::init(int32_t n_rows, int32_t dim) {
  HS_CHECK(n_rows >= 0 && dim > 0 && dim % 16 == 0 && dim <= kMaxHeadDim,
           "QueryTile: dim %d must be a multiple of 16 in [16, %d]", dim, kMaxHeadDim);
  n_rows_ = n_rows;
  dim_ = dim;
  q_.reserve(size_t(n_rows) * size_t(dim));
  if (n_rows > cap_rows_) {
    lo_.reset(new int32_t[n_rows]);
    hi_.reset(new int32_t[n_rows]);
    cap_rows_ = n_rows;
  }
}

void QueryTile::set_row(int32_t r, const float* q, float scale, int32_t key_lo, int32_t key_hi) {
  float* dst = q_.data() + int64_t(r) * dim_;
  const __m256 vs = _mm256_set1_ps(scale);
  for (int32_t d = 0; d < dim_; d += 8) _mm256_store_ps(dst + d, _mm256_mul_ps(_mm256_loadu_ps(q + d), vs));
  lo_[r] = key_lo;
  hi_[r] = key_hi;
}

// ---------------------------------------------------------------------------------------------------------------
// The block kernel (AVX2 + FMA + F16C)
//
// One block of n <= 64 keys against a tile of R query rows (update_block):
//  1. Per row, the visible columns [clo, chi) of the block, from the row's key range. Nobody sees any: skip.
//  2. Scores. Wide tiles: K^T [dim][64] and V [64][dim] to fp32 (8x8 transposes of F16C rows), then
//     S = Q K^T with a 6-row x 16-key register tile (12 ymm accumulators, q broadcast). Thin tiles (<= 8
//     rows,
//     <= 12 with AVX-512, i.e. decode): 4-key dot products straight from fp16, no copies.
//  3. Per row, the online-softmax update: m_new = max(m, max_c s); P = exp(s - m_new) with exp_avx2 (masked
//     columns 0); l = l * alpha + sum P, alpha = exp(m - m_new).
//  4. o = o * alpha + P V (6 rows x 16 dims register tile; alpha folded into the load of o).
// The thin kernels also exist in AVX-512 form, taken when cpu::simd_path() is kAvx512.
// Q rows come pre-scaled, so s is already the scaled logit. A 6-row group only touches the 16-key chunks some
// of its rows can see, which trims the causal diagonal. Per (row, key) pair the wide path costs 16 FMAs at
// head_dim 64 (8 QK + 8 PV) plus ~2 ops of softmax and ~1 of conversion: ~70-77% of FMA peak on Zen 4.

namespace {

constexpr int kBc = kAttnKeyBlock;  // keys per block; also the row stride of the score and K^T buffers
constexpr int kMr = 6;  // query rows per microkernel call: 6 x 16 keys = 12 accumulators of 16 ymm
// Thin tiles (decode: the G heads of one token) score keys with dot products straight from fp16 (no K
// transpose, no V copy), kThinMr rows per call (kThinMr512 with AVX-512). Measured on Zen 4 (ns per key, 64
// dims): 3 rows 13.6 thin vs 21 transposed; 8 rows 33.5 vs 37; AVX-512 thin 3 rows 11.9, 12 rows 41 vs ~45.
constexpr int kThinRowsAvx2 = 8;
constexpr int kThinRowsAvx512 = 12;
constexpr int kThinMr = 3;
constexpr int kThinMr512 = 6;

// Stands in for the missing keys of a partial block.
alignas(64) const uint16_t kZeroKeyRow[kMaxHeadDim] = {};

struct Scratch {
  AlignedFloats kt;               // [dim][kBc]: K^T of the block in fp32 (keys beyond the block are zero)
  AlignedFloats v;                // [kBc][dim]: V of the block in fp32
  AlignedFloats s;                // [rows][kBc]: scores, then probabilities
  AlignedFloats alpha;            // [rows]: exp(m_old - m_new), the rescale of o
  std::vector<int32_t> clo, chi;  // [rows]: the row's visible columns [clo, chi) of this block
  const uint16_t* krow[kBc];
  const uint16_t* vrow[kBc];
};

Scratch& thread_scratch() {
  thread_local Scratch sc;
  return sc;
}

inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5, __m256& r6,
                       __m256& r7) {
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
  r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
  r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
  r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
  r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
  r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
  r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
  r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}

inline __m256 load_half8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// K^T[d][c] = krow[c][d] in fp32 for c in [c_begin, c_end) (multiples of 8), d < dim.
void convert_kt(const uint16_t* const* krow, int dim, int c_begin, int c_end, float* kt) {
  for (int c = c_begin; c < c_end; c += 8) {
    const uint16_t* const* kr = krow + c;
    for (int d = 0; d < dim; d += 8) {
      __m256 r0 = load_half8(kr[0] + d), r1 = load_half8(kr[1] + d), r2 = load_half8(kr[2] + d),
             r3 = load_half8(kr[3] + d), r4 = load_half8(kr[4] + d), r5 = load_half8(kr[5] + d),
             r6 = load_half8(kr[6] + d), r7 = load_half8(kr[7] + d);
      transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
      float* dst = kt + int64_t(d) * kBc + c;
      _mm256_store_ps(dst + 0 * kBc, r0);
      _mm256_store_ps(dst + 1 * kBc, r1);
      _mm256_store_ps(dst + 2 * kBc, r2);
      _mm256_store_ps(dst + 3 * kBc, r3);
      _mm256_store_ps(dst + 4 * kBc, r4);
      _mm256_store_ps(dst + 5 * kBc, r5);
      _mm256_store_ps(dst + 6 * kBc, r6);
      _mm256_store_ps(dst + 7 * kBc, r7);
    }
  }
}

// S[r][0..16) = q_r . K^T[:, 0..16) for MR rows: q rows dim apart, S rows kBc apart, kt at the 16 keys.
template <int MR>
inline void qk_kernel(const float* q, int dim, const float* kt, float* s) {
  __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  for (int d = 0; d < dim; ++d) {
    const __m256 k0 = _mm256_load_ps(kt + d * kBc), k1 = _mm256_load_ps(kt + d * kBc + 8);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 b = _mm256_broadcast_ss(q + r * dim + d);
      acc0[r] = _mm256_fmadd_ps(b, k0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(b, k1, acc1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm256_store_ps(s + r * kBc, acc0[r]);
    _mm256_store_ps(s + r * kBc + 8, acc1[r]);
  }
}

// o[r][0..16) = o[r][0..16) * alpha[r] + sum_{c in [c0, c1)} P[r][c] * V[c][0..16) for MR rows; o and v point
// at the 16-dim slice, rows dim apart; P rows kBc apart.
template <int MR>
inline void pv_kernel(const float* p, const float* v, int dim, int c0, int c1, const float* alpha, float* o) {
  __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const __m256 a = _mm256_broadcast_ss(alpha + r);
    acc0[r] = _mm256_mul_ps(_mm256_load_ps(o + r * dim), a);
    acc1[r] = _mm256_mul_ps(_mm256_load_ps(o + r * dim + 8), a);
  }
  for (int c = c0; c < c1; ++c) {
    const __m256 v0 = _mm256_load_ps(v + c * dim), v1 = _mm256_load_ps(v + c * dim + 8);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 b = _mm256_broadcast_ss(p + r * kBc + c);
      acc0[r] = _mm256_fmadd_ps(b, v0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(b, v1, acc1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm256_store_ps(o + r * dim, acc0[r]);
    _mm256_store_ps(o + r * dim + 8, acc1[r]);
  }
}

template <int MR>
void qk_rows(const float* q, int dim, const float* kt, int j0, int j1, float* s) {
  for (int j = j0; j < j1; ++j) qk_kernel<MR>(q, dim, kt + j * 16, s + j * 16);
}

template <int MR>
void pv_rows(const float* p, const float* v, int dim, int c0, int c1, const float* alpha, float* o) {
  for (int d = 0; d < dim; d += 16) pv_kernel<MR>(p, v + d, dim, c0, c1, alpha, o + d);
}

void qk_group(int mr, const float* q, int dim, const float* kt, int j0, int j1, float* s) {
  switch (mr) {
    case 1:
      return qk_rows<1>(q, dim, kt, j0, j1, s);
    case 2:
      return qk_rows<2>(q, dim, kt, j0, j1, s);
    case 3:
      return qk_rows<3>(q, dim, kt, j0, j1, s);
    case 4:
      return qk_rows<4>(q, dim, kt, j0, j1, s);
    case 5:
      return qk_rows<5>(q, dim, kt, j0, j1, s);
    default:
      return qk_rows<6>(q, dim, kt, j0, j1, s);
  }
}

// Thin tiles (decode: the G heads of one token) skip the K transpose: S[r][c..c+4) = q_r . k_c as 4 dot
// products per row straight from fp16, reduced with horizontal adds. MR <= 3 keeps 4*MR accumulators + 4 keys
// in 16 ymm.
// (sum a0, sum a1, sum a2, sum a3)
inline __m128 hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

template <int MR>
void qk_dot_rows(const float* q, int dim, const uint16_t* const* krow, int c0, int c1, float* s) {
  for (int c = c0; c < c1; c += 4) {
    const uint16_t* const* kr = krow + c;
    __m256 acc[MR][4];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm256_setzero_ps();
    for (int d = 0; d < dim; d += 8) {
      const __m256 k0 = load_half8(kr[0] + d), k1 = load_half8(kr[1] + d), k2 = load_half8(kr[2] + d),
                   k3 = load_half8(kr[3] + d);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m256 qv = _mm256_load_ps(q + r * dim + d);
        acc[r][0] = _mm256_fmadd_ps(qv, k0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(qv, k1, acc[r][1]);
        acc[r][2] = _mm256_fmadd_ps(qv, k2, acc[r][2]);
        acc[r][3] = _mm256_fmadd_ps(qv, k3, acc[r][3]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
      _mm_store_ps(s + r * kBc + c, hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
  }
}

void qk_dot_group(int mr, const float* q, int dim, const uint16_t* const* krow, int c0, int c1, float* s) {
  switch (mr) {
    case 1:
      return qk_dot_rows<1>(q, dim, krow, c0, c1, s);
    case 2:
      return qk_dot_rows<2>(q, dim, krow, c0, c1, s);
    default:
      return qk_dot_rows<3>(q, dim, krow, c0, c1, s);
  }
}

// P.V for thin tiles straight from the fp16 value rows (no fp32 copy: each value is used by <= 3 rows); 16
// dims at a time so 2*MR accumulators + 2 values + 1 broadcast stay in registers.
template <int MR>
void pv_half_rows(const float* p, const uint16_t* const* vrow, int dim, int c0, int c1, const float* alpha,
                  float* o) {
  for (int d = 0; d < dim; d += 16) {
    __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(alpha + r);
      acc0[r] = _mm256_mul_ps(_mm256_load_ps(o + r * dim + d), a);
      acc1[r] = _mm256_mul_ps(_mm256_load_ps(o + r * dim + d + 8), a);
    }
    for (int c = c0; c < c1; ++c) {
      const __m256 v0 = load_half8(vrow[c] + d), v1 = load_half8(vrow[c] + d + 8);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m256 b = _mm256_broadcast_ss(p + r * kBc + c);
        acc0[r] = _mm256_fmadd_ps(b, v0, acc0[r]);
        acc1[r] = _mm256_fmadd_ps(b, v1, acc1[r]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      _mm256_store_ps(o + r * dim + d, acc0[r]);
      _mm256_store_ps(o + r * dim + d + 8, acc1[r]);
    }
  }
}

void pv_half_group(int mr, const float* p, const uint16_t* const* vrow, int dim, int c0, int c1,
                   const float* alpha, float* o) {
  switch (mr) {
    case 1:
      return pv_half_rows<1>(p, vrow, dim, c0, c1, alpha, o);
    case 2:
      return pv_half_rows<2>(p, vrow, dim, c0, c1, alpha, o);
    default:
      return pv_half_rows<3>(p, vrow, dim, c0, c1, alpha, o);
  }
}

// ---- AVX-512 thin kernels (run-time dispatch, cpu::simd_path()) ----
// The two thin-tile loops with 32 zmm registers: up to 6 rows per call, 16 dims per vector, and P.V keeps 64
// dims of 6 rows in registers (one broadcast of P feeds 4 FMAs). On Zen 4 a zmm FMA has the throughput of two
// ymm ones, so the gain is fewer loads and broadcasts per FMA: decode at 4096 keys 93 us vs 111 us (2
// threads). zmm versions of the wide-tile kernels measured no faster there (already FMA bound), so they do
// not exist. No std templates in here (a baseline caller must never link an AVX-512 instantiation).
#define HS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

HS_AVX512 inline __m256 fold512(__m512 a) {  // 16 lanes -> 8 lanes, pairwise sums
  return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
}

HS_AVX512 inline __m512 load_half16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

template <int MR>
HS_AVX512 void qk_dot_rows_512(const float* q, int dim, const uint16_t* const* krow, int c0, int c1,
                               float* s) {
  for (int c = c0; c < c1; c += 4) {
    const uint16_t* const* kr = krow + c;
    __m512 acc[MR][4];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_ps();
    for (int d = 0; d < dim; d += 16) {
      const __m512 k0 = load_half16(kr[0] + d), k1 = load_half16(kr[1] + d), k2 = load_half16(kr[2] + d),
                   k3 = load_half16(kr[3] + d);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512 qv = _mm512_load_ps(q + r * dim + d);
        acc[r][0] = _mm512_fmadd_ps(qv, k0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(qv, k1, acc[r][1]);
        acc[r][2] = _mm512_fmadd_ps(qv, k2, acc[r][2]);
        acc[r][3] = _mm512_fmadd_ps(qv, k3, acc[r][3]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(fold512(acc[r][0]), fold512(acc[r][1])),
                                      _mm256_hadd_ps(fold512(acc[r][2]), fold512(acc[r][3])));
      _mm_store_ps(s + r * kBc + c, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
    }
  }
}

// o[r][d, d + 16*NZ) = o * alpha[r] + sum_c P[r][c] * V[c][d, d + 16*NZ), values from fp16.
template <int MR, int NZ>
HS_AVX512 void pv_half_chunk_512(const float* p, const uint16_t* const* vrow, int dim, int d, int c0, int c1,
                                 const float* alpha, float* o) {
  __m512 acc[MR][NZ];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const __m512 a = _mm512_set1_ps(alpha[r]);
#pragma GCC unroll 4
    for (int z = 0; z < NZ; ++z) acc[r][z] = _mm512_mul_ps(_mm512_load_ps(o + r * dim + d + 16 * z), a);
  }
  for (int c = c0; c < c1; ++c) {
    __m512 v[NZ];
#pragma GCC unroll 4
    for (int z = 0; z < NZ; ++z) v[z] = load_half16(vrow[c] + d + 16 * z);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 b = _mm512_set1_ps(p[r * kBc + c]);
#pragma GCC unroll 4
      for (int z = 0; z < NZ; ++z) acc[r][z] = _mm512_fmadd_ps(b, v[z], acc[r][z]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int z = 0; z < NZ; ++z) _mm512_store_ps(o + r * dim + d + 16 * z, acc[r][z]);
}

template <int MR>
HS_AVX512 void pv_half_rows_512(const float* p, const uint16_t* const* vrow, int dim, int c0, int c1,
                                const float* alpha, float* o) {
  int d = 0;
  for (; d + 64 <= dim; d += 64) pv_half_chunk_512<MR, 4>(p, vrow, dim, d, c0, c1, alpha, o);
  switch ((dim - d) / 16) {
    case 1:
      return pv_half_chunk_512<MR, 1>(p, vrow, dim, d, c0, c1, alpha, o);
    case 2:
      return pv_half_chunk_512<MR, 2>(p, vrow, dim, d, c0, c1, alpha, o);
    case 3:
      return pv_half_chunk_512<MR, 3>(p, vrow, dim, d, c0, c1, alpha, o);
    default:
      return;
  }
}

HS_AVX512 void qk_dot_group_512(int mr, const float* q, int dim, const uint16_t* const* krow, int c0, int c1,
                                float* s) {
  switch (mr) {
    case 1:
      return qk_dot_rows_512<1>(q, dim, krow, c0, c1, s);
    case 2:
      return qk_dot_rows_512<2>(q, dim, krow, c0, c1, s);
    case 3:
      return qk_dot_rows_512<3>(q, dim, krow, c0, c1, s);
    case 4:
      return qk_dot_rows_512<4>(q, dim, krow, c0, c1, s);
    case 5:
      return qk_dot_rows_512<5>(q, dim, krow, c0, c1, s);
    default:
      return qk_dot_rows_512<6>(q, dim, krow, c0, c1, s);
  }
}

HS_AVX512 void pv_half_group_512(int mr, const float* p, const uint16_t* const* vrow, int dim, int c0, int c1,
                                 const float* alpha, float* o) {
  switch (mr) {
    case 1:
      return pv_half_rows_512<1>(p, vrow, dim, c0, c1, alpha, o);
    case 2:
      return pv_half_rows_512<2>(p, vrow, dim, c0, c1, alpha, o);
    case 3:
      return pv_half_rows_512<3>(p, vrow, dim, c0, c1, alpha, o);
    case 4:
      return pv_half_rows_512<4>(p, vrow, dim, c0, c1, alpha, o);
    case 5:
      return pv_half_rows_512<5>(p, vrow, dim, c0, c1, alpha, o);
    default:
      return pv_half_rows_512<6>(p, vrow, dim, c0, c1, alpha, o);
  }
}

void pv_group(int mr, const float* p, const float* v, int dim, int c0, int c1, const float* alpha, float* o) {
  switch (mr) {
    case 1:
      return pv_rows<1>(p, v, dim, c0, c1, alpha, o);
    case 2:
      return pv_rows<2>(p, v, dim, c0, c1, alpha, o);
    case 3:
      return pv_rows<3>(p, v, dim, c0, c1, alpha, o);
    case 4:
      return pv_rows<4>(p, v, dim, c0, c1, alpha, o);
    case 5:
      return pv_rows<5>(p, v, dim, c0, c1, alpha, o);
    default:
      return pv_rows<6>(p, v, dim, c0, c1, alpha, o);
  }
}

// Online-softmax update of one row over the score columns [c0, c1) (multiples of 8), of which [clo, chi)
// are visible: s becomes exp(s - m_new) (0 where not visible). Returns alpha = exp(m_old - m_new).
float softmax_row(float* s, int c0, int c1, int clo, int chi, float& m, float& l) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i vlo = _mm256_set1_epi32(clo - 1), vhi = _mm256_set1_epi32(chi);
  const bool full = clo <= c0 && chi >= c1;
  __m256 vmax = ninf;
  for (int c = c0; c < c1; c += 8) {
    __m256 x = _mm256_load_ps(s + c);
    if (!full) {
      const __m256i idx = _mm256_add_epi32(lane, _mm256_set1_epi32(c));
      const __m256i vis = _mm256_and_si256(_mm256_cmpgt_epi32(idx, vlo), _mm256_cmpgt_epi32(vhi, idx));
      x = _mm256_blendv_ps(ninf, x, _mm256_castsi256_ps(vis));
    }
    vmax = _mm256_max_ps(vmax, x);
  }
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
  const float m_new = std::max(m, _mm_cvtss_f32(h));
  const float alpha = m == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(m - m_new);
  const __m256 vm = _mm256_set1_ps(m_new);
  __m256 vsum = _mm256_setzero_ps();
  for (int c = c0; c < c1; c += 8) {
    __m256 p = exp_avx2(_mm256_sub_ps(_mm256_load_ps(s + c), vm));
    if (!full) {
      const __m256i idx = _mm256_add_epi32(lane, _mm256_set1_epi32(c));
      const __m256i vis = _mm256_and_si256(_mm256_cmpgt_epi32(idx, vlo), _mm256_cmpgt_epi32(vhi, idx));
      p = _mm256_and_ps(p, _mm256_castsi256_ps(vis));
    }
    _mm256_store_ps(s + c, p);
    vsum = _mm256_add_ps(vsum, p);
  }
  __m128 t = _mm_add_ps(_mm256_castps256_ps128(vsum), _mm256_extractf128_ps(vsum, 1));
  t = _mm_add_ps(t, _mm_movehl_ps(t, t));
  t = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
  l = l * alpha + _mm_cvtss_f32(t);
  m = m_new;
  return alpha;
}

// Updates st with one block of n <= kBc keys whose key/value rows are sc.krow / sc.vrow and whose positions
// are k0 + c (kpos == nullptr) or kpos[c] (ascending).
void update_block(SoftmaxState& st, const QueryTile& qt, const int32_t* kpos, int32_t k0, int n, Scratch& sc,
                  bool avx512) {
  const int rows = qt.n_rows(), dim = qt.dim();
  int cmax = 0;
  for (int r = 0; r < rows; ++r) {
    int clo, chi;
    if (kpos) {
      clo = int(std::lower_bound(kpos, kpos + n, qt.key_lo(r)) - kpos);
      chi = int(std::lower_bound(kpos, kpos + n, qt.key_hi(r)) - kpos);
    } else {
      clo = int(std::clamp<int64_t>(int64_t(qt.key_lo(r)) - k0, 0, n));
      chi = int(std::clamp<int64_t>(int64_t(qt.key_hi(r)) - k0, 0, n));
    }
    if (chi <= clo) clo = chi = 0;  // sees nothing here
    sc.clo[r] = clo;
    sc.chi[r] = chi;
    cmax = std::max(cmax, chi);
  }
  if (cmax == 0) return;  // no row sees any key of the block: do not even read it

  // K^T over the 16-key chunks that hold visible keys (missing keys read as zero), V over the visible rows.
  const int nc = (cmax + 15) / 16 * 16;
  for (int c = n; c < nc; ++c) sc.krow[c] = kZeroKeyRow;
  const bool thin = rows <= (avx512 ? kThinRowsAvx512 : kThinRowsAvx2);
  if (!thin) convert_kt(sc.krow, dim, 0, nc, sc.kt.data());
  float* vb = sc.v.data();
  for (int c = 0; c < (thin ? 0 : cmax); ++c)
    for (int d = 0; d < dim; d += 8) _mm256_store_ps(vb + c * dim + d, load_half8(sc.vrow[c] + d));

  const int group_rows = thin ? (avx512 ? kThinMr512 : kThinMr) : kMr;
  for (int r0 = 0; r0 < rows; r0 += group_rows) {
    const int mr = std::min(group_rows, rows - r0);
    int glo = kBc, ghi = 0;  // columns visible to some row of the group
    for (int r = r0; r < r0 + mr; ++r)
      if (sc.chi[r] > sc.clo[r]) {
        glo = std::min(glo, sc.clo[r]);
        ghi = std::max(ghi, sc.chi[r]);
      }
    if (ghi == 0) continue;
    const int j0 = glo / 16, j1 = (ghi + 15) / 16;
    float* s = sc.s.data() + int64_t(r0) * kBc;
    if (thin && avx512)
      qk_dot_group_512(mr, qt.row(r0), dim, sc.krow, j0 * 16, j1 * 16, s);
    else if (thin)
      qk_dot_group(mr, qt.row(r0), dim, sc.krow, j0 * 16, j1 * 16, s);
    else
      qk_group(mr, qt.row(r0), dim, sc.kt.data(), j0, j1, s);
    float* alpha = sc.alpha.data() + r0;
    for (int i = 0; i < mr; ++i) {
      const int r = r0 + i;
      float* sr = s + int64_t(i) * kBc;
      if (sc.chi[r] > sc.clo[r]) {
        alpha[i] = softmax_row(sr, j0 * 16, j1 * 16, sc.clo[r], sc.chi[r], st.m()[r], st.l()[r]);
      } else {  // row sees nothing: keep its state
        alpha[i] = 1.0f;
        std::fill(sr + glo, sr + ghi, 0.0f);
      }
    }
    if (thin && avx512)
      pv_half_group_512(mr, s, sc.vrow, dim, glo, ghi, alpha, st.o_row(r0));
    else if (thin)
      pv_half_group(mr, s, sc.vrow, dim, glo, ghi, alpha, st.o_row(r0));
    else
      pv_group(mr, s, vb, dim, glo, ghi, alpha, st.o_row(r0));
  }
}

void check_update_args(const SoftmaxState& st, const QueryTile& q) {
  HS_CHECK(st.n_rows() == q.n_rows() && st.dim() == q.dim(),
           "attention_update: state %d x %d does not match query tile %d x %d", st.n_rows(), st.dim(),
           q.n_rows(), q.dim());
}

void prepare_scratch(Scratch& sc, int rows, int dim) {
  sc.kt.reserve(size_t(dim) * kBc);
  sc.v.reserve(size_t(dim) * kBc);
  sc.s.reserve(size_t(rows) * kBc);
  sc.alpha.reserve(size_t(rows));
  if (sc.clo.size() < size_t(rows)) {
    sc.clo.resize(rows);
    sc.chi.resize(rows);
  }
}

}  // namespace

void attention_update(SoftmaxState& st, const QueryTile& q, const KvHeadView& kv, int32_t k0, int32_t k1) {
  check_update_args(st, q);
  if (k1 <= k0 || q.n_rows() == 0) return;
  Scratch& sc = thread_scratch();
  prepare_scratch(sc, q.n_rows(), q.dim());
  const bool avx512 = cpu::simd_path() == cpu::SimdPath::kAvx512;
  for (int32_t kb = k0; kb < k1; kb += kBc) {
    const int n = std::min<int32_t>(kBc, k1 - kb);
    for (int c = 0; c < n; ++c) {
      const int64_t at = kv.offset(kb + c);
      sc.krow[c] = kv.k + at;
      sc.vrow[c] = kv.v + at;
    }
    update_block(st, q, nullptr, kb, n, sc, avx512);
  }
}

void attention_update_gather(SoftmaxState& st, const QueryTile& q, const KvHeadView& kv, const int32_t* keys,
                             int32_t n_keys) {
  check_update_args(st, q);
  if (n_keys <= 0 || q.n_rows() == 0) return;
  Scratch& sc = thread_scratch();
  prepare_scratch(sc, q.n_rows(), q.dim());
  const bool avx512 = cpu::simd_path() == cpu::SimdPath::kAvx512;
  for (int32_t b = 0; b < n_keys; b += kBc) {
    const int n = std::min<int32_t>(kBc, n_keys - b);
    for (int c = 0; c < n; ++c) {
      const int64_t at = kv.offset(keys[b + c]);
      sc.krow[c] = kv.k + at;
      sc.vrow[c] = kv.v + at;
    }
    update_block(st, q, keys + b, 0, n, sc, avx512);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Dense attention: plan (tiles, split-K), run, merge

namespace {

constexpr int kTileRows = 96;  // target rows (G heads x tokens) per query tile: amortizes the K/V conversion
constexpr int kMinSplitKeys = 4 * kBc;  // a split-K piece covers at least this many keys

void check_params(const AttentionParams& p) {
  HS_CHECK(p.n_q >= 0 && p.q_pos0 >= 0 && int64_t(p.q_pos0) + p.n_q <= p.n_kv,
           "attention: queries [%d, %d) must lie in the cache of %d positions", p.q_pos0, p.q_pos0 + p.n_q,
           p.n_kv);
  HS_CHECK(p.n_kv_head > 0 && p.n_head > 0 && p.n_head % p.n_kv_head == 0,
           "attention: n_head %d is not a multiple of n_kv_head %d", p.n_head, p.n_kv_head);
  HS_CHECK(p.head_dim > 0 && p.head_dim % 16 == 0 && p.head_dim <= kMaxHeadDim,
           "attention: head_dim %d must be a multiple of 16 in [16, %d]", p.head_dim, kMaxHeadDim);
  HS_CHECK(!p.page_table || (p.page_size > 0 && p.page_size % kAttnKeyBlock == 0),
           "attention: page size %d must be a positive multiple of %d", p.page_size, kAttnKeyBlock);
}

// One query tile of one KV group: tokens [tok0, tok0 + n_tok) x the G heads of kv head kvh.
struct TileGroup {
  int32_t prob, kvh, tok0, n_tok;
  int32_t first_slot, n_slots;  // partial states when split (n_slots > 1)
};

struct WorkItem {
  int32_t group;
  int32_t k0, k1;  // key range
  int32_t slot;    // partial state, or -1: finalize straight to the output
  double cost;
};

struct Plan {
  std::vector<TileGroup> groups;
  std::vector<WorkItem> items;
  std::vector<SoftmaxState> partials;
};

void build_plan(const AttentionParams* probs, int n_probs, int n_threads, Plan& plan) {
  plan.groups.clear();
  plan.items.clear();
  // Cost per problem: each problem is split as if it ran alone, so a sequence's output does not depend on
  // which other sequences share the batch (the server's batched decode gives the bits of a lone decode).
  std::vector<double> problem_cost(size_t(n_probs), 0.0);
  for (int pi = 0; pi < n_probs; ++pi) {
    const AttentionParams& p = probs[pi];
    if (p.n_q == 0) continue;
    const int32_t G = p.n_head / p.n_kv_head;
    const int32_t tile_tok = std::min(p.n_q, std::max<int32_t>(1, kTileRows / G));
    for (int32_t kvh = 0; kvh < p.n_kv_head; ++kvh)
      for (int32_t t0 = 0; t0 < p.n_q; t0 += tile_tok) {
        const int32_t nt = std::min(tile_tok, p.n_q - t0);
        const int32_t k_end = p.q_pos0 + t0 + nt;  // keys [0, k_end) are visible to the tile's last row
        plan.groups.push_back({pi, kvh, t0, nt, -1, 1});
        // Cost ~ rows x keys scored (the diagonal blocks are partly masked; ignore that) plus fixed per-tile
        // work.
        const double cost = double(nt) * G * (double(k_end) + 2 * kBc);
        plan.items.push_back({int32_t(plan.groups.size() - 1), 0, k_end, -1, cost});
        problem_cost[pi] += cost;
      }
  }

  // Split-K: with several threads, cut tiles that are large next to a thread's share into pieces of whole
  // blocks, so that 3 KV heads of one decode row (or a few big tiles) still keep every thread busy.
  int32_t n_slots = 0;
  if (n_threads > 1) {
    const size_t n_items = plan.items.size();
    for (size_t it = 0; it < n_items; ++it) {
      WorkItem& w = plan.items[it];
      const double target = problem_cost[plan.groups[w.group].prob] / (8.0 * n_threads);
      const int32_t n_blocks = (w.k1 + kBc - 1) / kBc;
      const int32_t max_pieces = std::max<int32_t>(1, w.k1 / kMinSplitKeys);
      const int32_t pieces = std::min<int32_t>(max_pieces, int32_t(std::ceil(w.cost / target)));
      if (pieces <= 1) continue;
      TileGroup& g = plan.groups[w.group];
      g.first_slot = n_slots;
      g.n_slots = pieces;
      const int32_t k1 = w.k1, group = w.group;
      const double cost = w.cost / pieces;
      for (int32_t i = 0; i < pieces; ++i) {
        const int32_t a = int32_t(int64_t(n_blocks) * i / pieces) * kBc;
        const int32_t b = std::min(k1, int32_t(int64_t(n_blocks) * (i + 1) / pieces) * kBc);
        const WorkItem piece{group, a, b, n_slots + i, cost};
        if (i == 0)
          plan.items[it] = piece;  // w is dead from here on (push_back may reallocate)
        else
          plan.items.push_back(piece);
      }
      n_slots += pieces;
    }
  }
  if (plan.partials.size() < size_t(n_slots)) plan.partials.resize(n_slots);
  // Largest first, taken dynamically: the heavy causal tiles at the end of the prompt start early.
  std::stable_sort(plan.items.begin(), plan.items.end(),
                   [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });
}

}  // namespace

void pack_query_tile(const AttentionParams& p, int32_t head0, int32_t n_heads, int32_t tok0, int32_t n_tok,
                     QueryTile& qt) {
  const int32_t G = p.n_head / p.n_kv_head;
  HS_CHECK(n_heads > 0 && head0 / G == (head0 + n_heads - 1) / G && head0 + n_heads <= p.n_head,
           "pack_query_tile: heads [%d, %d) do not share one kv head", head0, head0 + n_heads);
  HS_CHECK(tok0 >= 0 && n_tok >= 0 && tok0 + n_tok <= p.n_q,
           "pack_query_tile: queries [%d, %d) out of [0, %d)", tok0, tok0 + n_tok, p.n_q);
  qt.init(n_tok * n_heads, p.head_dim);
  // Row r = i*n_heads + j: token-major, so a 6-row group spans few tokens and shares most of its causal
  // limit.
  for (int32_t i = 0; i < n_tok; ++i) {
    const int32_t t = tok0 + i;
    const float* qrow = p.q + int64_t(t) * p.q_stride + int64_t(head0) * p.head_dim;
    for (int32_t j = 0; j < n_heads; ++j)
      qt.set_row(i * n_heads + j, qrow + int64_t(j) * p.head_dim, p.scale, 0, p.q_pos0 + t + 1);
  }
}

void write_query_tile(const AttentionParams& p, int32_t head0, int32_t n_heads, int32_t tok0, int32_t n_tok,
                      const SoftmaxState& st) {
  for (int32_t i = 0; i < n_tok; ++i) {
    float* orow = p.out + int64_t(tok0 + i) * p.out_stride + int64_t(head0) * p.head_dim;
    for (int32_t j = 0; j < n_heads; ++j) st.finalize_row(i * n_heads + j, orow + int64_t(j) * p.head_dim);
  }
}

void attention_dense_batch(const AttentionParams* problems, int n_problems, ThreadPool& pool) {
  for (int i = 0; i < n_problems; ++i) check_params(problems[i]);
  thread_local Plan caller_plan;  // reused across calls
  Plan& plan = caller_plan;       // a reference, so the workers' lambda sees the caller's plan, not their own
  build_plan(problems, n_problems, pool.size(), plan);
  if (plan.items.empty()) return;

  std::atomic<size_t> next{0};
  auto work = [&](int, int) {
    thread_local QueryTile qt;
    thread_local SoftmaxState direct;
    for (size_t i = next.fetch_add(1, std::memory_order_relaxed); i < plan.items.size();
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      const WorkItem& w = plan.items[i];
      const TileGroup& g = plan.groups[w.group];
      const AttentionParams& p = problems[g.prob];
      const int32_t G = p.n_head / p.n_kv_head;
      pack_query_tile(p, g.kvh * G, G, g.tok0, g.n_tok, qt);
      SoftmaxState& st = w.slot < 0 ? direct : plan.partials[w.slot];
      st.init(qt.n_rows(), qt.dim());
      attention_update(st, qt, kv_head_view(p, g.kvh), w.k0, w.k1);
      if (w.slot < 0) write_query_tile(p, g.kvh * G, G, g.tok0, g.n_tok, st);
    }
  };
  if (pool.size() == 1 || plan.items.size() == 1)
    work(0, 1);
  else
    pool.run(work);

  // Merge split-K pieces (rows x dim x pieces flops: small next to the pieces themselves).
  for (const TileGroup& g : plan.groups) {
    if (g.n_slots <= 1) continue;
    SoftmaxState& st = plan.partials[g.first_slot];
    for (int32_t s = 1; s < g.n_slots; ++s) st.merge(plan.partials[g.first_slot + s]);
    const AttentionParams& p = problems[g.prob];
    const int32_t G = p.n_head / p.n_kv_head;
    write_query_tile(p, g.kvh * G, G, g.tok0, g.n_tok, st);
  }
}

void attention_dense(const AttentionParams& p, ThreadPool& pool) {
  attention_dense_batch(&p, 1, pool);
}

void attention_naive(const AttentionParams& p) {
  check_params(p);
  const int32_t G = p.n_head / p.n_kv_head, hd = p.head_dim;
  const int32_t n_vis_max = p.q_pos0 + p.n_q;
  std::vector<double> s(size_t(n_vis_max) + 1), acc(static_cast<size_t>(hd)), kd, vd;
  for (int32_t kvh = 0; kvh < p.n_kv_head; ++kvh) {
    // The head's visible keys and values, converted once: [pos][dim] doubles.
    kd.resize(size_t(n_vis_max) * hd);
    vd.resize(kd.size());
    for (int32_t j = 0; j < n_vis_max; ++j)
      for (int32_t d = 0; d < hd; ++d) {
        const KvHeadView kv = kv_head_view(p, kvh);
        kd[size_t(j) * hd + d] = fp16_to_fp32(kv.key(j)[d]);
        vd[size_t(j) * hd + d] = fp16_to_fp32(kv.value(j)[d]);
      }
    for (int32_t h = kvh * G; h < (kvh + 1) * G; ++h)
      for (int32_t i = 0; i < p.n_q; ++i) {
        const float* q = p.q + int64_t(i) * p.q_stride + int64_t(h) * hd;
        const int32_t n_vis = p.q_pos0 + i + 1;
        double mx = -std::numeric_limits<double>::infinity();
        for (int32_t j = 0; j < n_vis; ++j) {
          double dot = 0;
          for (int32_t d = 0; d < hd; ++d) dot += double(q[d]) * kd[size_t(j) * hd + d];
          s[j] = dot * double(p.scale);
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int32_t j = 0; j < n_vis; ++j) {
          const double e = std::exp(s[j] - mx);
          sum += e;
          for (int32_t d = 0; d < hd; ++d) acc[d] += e * vd[size_t(j) * hd + d];
        }
        float* out = p.out + int64_t(i) * p.out_stride + int64_t(h) * hd;
        for (int32_t d = 0; d < hd; ++d) out[d] = float(acc[d] / sum);
      }
  }
}

}  // namespace hs
