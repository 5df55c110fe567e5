// What the CUDA kernels of group_min share: compute types, the kernel arguments, the tile
// order and the epilogue that turns dot products into per-group minima. Included only by
// group_min_cuda.cu (one translation unit, so one fatbinary and one cubin choice by the driver
// for every kernel); everything lives in meds::{anonymous}.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

namespace meds {
namespace {

// ------------------------------------------------------------------------------------------
// Compute types.
enum ComputeType : int { kF32 = 0, kTF32 = 1, kBF16 = 2, kF16 = 3 };

constexpr float kInf = __builtin_huge_valf();
constexpr int64_t kNoGroup = INT64_MIN;  // query group when nothing is excluded

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Rounds x to the compute type's precision (returned as a float).
template <int CT>
__device__ __forceinline__ float round_ct(float x) {
  if (CT == kTF32) {
    // Round to nearest, ties away from zero, to 10 mantissa bits (= cvt.rna.tf32.f32).
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    return __uint_as_float(u);
  } else if (CT == kBF16) {
    return __bfloat162float(__float2bfloat16_rn(x));
  } else if (CT == kF16) {
    return __half2float(__float2half_rn(x));
  }
  return x;
}

template <int CT>
__device__ __forceinline__ void store_ct(void* base, int64_t i, float v) {
  if (CT == kBF16) {
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
  } else if (CT == kF16) {
    static_cast<__half*>(base)[i] = __float2half_rn(v);
  } else {
    static_cast<float*>(base)[i] = v;
  }
}

// ------------------------------------------------------------------------------------------
// Arguments of the fused kernels. A and B rows are 16-byte aligned, `lda`/`ldb` in elements
// of the compute storage type (float for F32/TF32, 16-bit otherwise).
struct KArgs {
  const void* A;  // queries
  int64_t lda;
  const void* B;  // memory
  int64_t ldb;
  int64_t nq, nm, d;
  const float* qn2;  // (nq,) squared norms
  const float* mn2;  // (nm,)
  const int64_t* groups;   // (nm,)
  const int64_t* qgroups;  // (nq,) or nullptr (no exclusion)
  int64_t G;
  uint32_t* out;  // (nq, G) float bits
  int cosine;     // 1: cosine, 0: squared euclidean (l2 = sqrt at the end)
  int64_t tiles_m, tiles_n;
};

// Tile index -> (tm, tn), grouped by 8 query tiles so that concurrently running CTAs share
// memory tiles in L2.
__device__ __forceinline__ void tile_coords(int64_t t, int64_t tiles_m, int64_t tiles_n,
                                            int64_t& tm, int64_t& tn) {
  constexpr int64_t kGroupM = 8;
  const int64_t per_group = kGroupM * tiles_n;
  const int64_t group = t / per_group;
  const int64_t first_m = group * kGroupM;
  const int64_t gsz = min(tiles_m - first_m, kGroupM);
  const int64_t in_group = t - group * per_group;
  tm = first_m + in_group % gsz;
  tn = in_group / gsz;
}

// Per-row epilogue constants: dist = max(qB + qA * key, 0).
struct RowInfo {
  float qa, qb;
  int64_t qg;
  int64_t n_groups;  // bound of the group ids that flush() writes
};

__device__ __forceinline__ RowInfo row_info(const KArgs& p, int64_t r) {
  RowInfo ri;
  const float n2 = p.qn2[r];
  if (p.cosine) {
    ri.qa = n2 > 0.f ? 1.0f / sqrtf(n2) : 0.f;
    ri.qb = 1.f;
  } else {
    ri.qa = 1.f;
    ri.qb = n2;
  }
  ri.qg = p.qgroups ? p.qgroups[r] : kNoGroup;
  ri.n_groups = p.G;
  return ri;
}

__device__ __forceinline__ void flush(uint32_t* orow, int64_t g, float key, const RowInfo& ri) {
  // An id outside [0, G) is never written. validate() rejects such ids before the launch,
  // except while the stream is captured into a CUDA graph (device memory cannot be read then).
  if (static_cast<uint64_t>(g) >= static_cast<uint64_t>(ri.n_groups)) return;
  float dist = fmaf(ri.qa, key, ri.qb);
  // NaN or -inf here is a euclidean overflow (inf - inf, or q.m past the float range): +inf.
  if (dist != dist || dist == -kInf) dist = kInf;
  dist = dist > 0.f ? dist : 0.f;  // also maps -0 to +0
  atomicMin(orow + g, __float_as_uint(dist));
}

// Column info for a tile: group id (-1 past nm) and (a, b) with key = a * dot + b
// (cosine: a = -1/|m|, b = 0; sqeuclidean: a = -2, b = |m|^2; past nm: a = 0, b = +inf).
// Returns whether all valid columns have the same group (block-uniform; contains a barrier).
template <int BN>
__device__ __forceinline__ int load_col_info(const KArgs& p, int64_t col0, int64_t* gs,
                                             float2* cab, int64_t& tile_group) {
  const int tid = threadIdx.x;
  tile_group = __ldg(p.groups + col0);
  int same = 1;
  if (tid < BN) {
    const int64_t c = col0 + tid;
    int64_t g = -1;
    float2 ab = make_float2(0.f, kInf);
    if (c < p.nm) {
      g = __ldg(p.groups + c);
      const float n2 = __ldg(p.mn2 + c);
      if (p.cosine) {
        ab.x = n2 > 0.f ? -1.0f / sqrtf(n2) : 0.f;
        ab.y = 0.f;
      } else {
        ab.x = -2.f;
        ab.y = n2;
      }
      same = g == tile_group;
    }
    gs[tid] = g;
    cab[tid] = ab;
  }
  return __syncthreads_and(same);
}

// Scans SEG columns [cbase, cbase + SEG) of one staged row, in the rotated order
// (i + rot) mod SEG (rotation by lane makes the shared-memory reads conflict-free), and
// flushes one atomic per run of equal group ids; the run cut by the rotation is merged.
template <int SEG>
__device__ __forceinline__ void scan_row(const float* __restrict__ crow, int cbase, int rot,
                                         const int64_t* __restrict__ gs,
                                         const float2* __restrict__ cab, const RowInfo& ri,
                                         uint32_t* orow) {
  int64_t cur_g = -1, first_g = -1;
  float cur = kInf, first = kInf;
#pragma unroll 4
  for (int i = 0; i < SEG; ++i) {
    const int c = cbase + ((i + rot) & (SEG - 1));
    const int64_t g = gs[c];
    if (g < 0 || g == ri.qg) continue;
    const float2 ab = cab[c];
    const float key = fmaf(crow[c], ab.x, ab.y);
    if (g == cur_g) {
      cur = fminf(cur, key);
    } else {
      if (cur_g >= 0) {
        if (first_g < 0) {
          first_g = cur_g;
          first = cur;
        } else {
          flush(orow, cur_g, cur, ri);
        }
      }
      cur_g = g;
      cur = key;
    }
  }
  if (cur_g >= 0) {
    if (first_g == cur_g) {
      cur = fminf(cur, first);
      first_g = -1;
    }
    flush(orow, cur_g, cur, ri);
  }
  if (first_g >= 0) flush(orow, first_g, first, ri);
}

// Blocks for `items` work items at `per_block` per block, at least 1 and at most `cap`.
inline int grid_for(int64_t items, int64_t per_block, int64_t cap) {
  int64_t b = (items + per_block - 1) / per_block;
  b = std::max<int64_t>(1, std::min<int64_t>(b, cap));
  return static_cast<int>(b);
}

}  // namespace
}  // namespace meds
