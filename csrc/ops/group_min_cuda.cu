// CUDA implementation of group_min (contract: ops/group_min.h).
//
//   out[q, g] = min over eligible memory rows r of group g of dist(queries[q], memory[r])
//
// Pipeline, all on the caller's stream:
//   1. memset(out, 0xFF): every output word starts at 0xFFFFFFFF, which is larger, as an
//      unsigned integer, than the bit pattern of any non-negative float (and is a NaN).
//   2. prep_rows_kernel: squared row norms of queries and memory, of the values rounded to
//      the compute precision (so a row's distance to itself is ~0 at every precision). When a
//      matrix is not directly usable by the main kernel (other element type, rows not 16-byte
//      aligned) the same pass also writes a packed, aligned, zero-padded copy in the compute
//      type into a stream-ordered workspace.
//   3. The fused distance kernel: a GEMM-style tile of dot products per CTA (queries x memory
//      rows), never written to global memory. Its epilogue turns dots into a monotone "key"
//      per column (cosine: -dot/|m|, squared euclidean: |m|^2 - 2 dot), takes the minimum over
//      the columns of one group per query row and atomicMin's the distance
//      (clamped >= 0, as uint bits) into out[q, g].
//        - Fp32 precision (and every precision on sm_75): SIMT FP32 FMA, 128x128x16 tile,
//          256 threads, 8x8 outputs per thread, register-staged double buffering.
//        - TF32 / BF16 / FP16 (sm_80+): tensor cores through mma.sync (m16n8k8 tf32,
//          m16n8k16 bf16/f16), fp32 accumulation, 256x128x(64 bytes) tile, 8 warps of
//          64x64, 4-stage cp.async pipeline, ldmatrix from XOR-swizzled shared memory.
//        - TF32 / BF16 / FP16 on Hopper (cc 9.0, only when the sm_90a code is compiled in and
//          loaded): wgmma.mma_async from TMA-loaded, 128B-swizzled shared memory, 128x256 tile,
//          warp-specialised (1 producer + 2 consumer warpgroups, setmaxnreg), 4-stage mbarrier
//          pipeline; see group_min_cuda_sm90.cuh. Otherwise the mma.sync kernel runs.
//      The environment variable MEDS_CUDA_TC=auto|mma|wgmma (read at every call; unset =
//      auto) chooses between the two tensor-core kernels: auto and wgmma use the wgmma kernel
//      where it is available and fall back to mma.sync elsewhere; mma always uses mma.sync.
//      cuda_last_group_min_kernel() reports which kernel the latest call launched.
//      Epilogue: when every column of the tile belongs to one group (the normal case: a
//      group is one image's ~784 contiguous patches) each thread reduces its registers,
//      a few warp shuffles finish the row minimum, one atomic per row and warp. Otherwise
//      the dot tile is staged through shared memory and each thread scans a segment of one
//      row, flushing one atomic per run of equal group ids (correct for any group order).
//   4. finalize_kernel: 0xFFFFFFFF (no eligible row) -> NaN; sqrt for the l2 metric.
#ifndef MEDS_WITH_CUDA
#define MEDS_WITH_CUDA 1  // this file is only ever compiled into a CUDA build
#endif

#include <cuda.h>  // CUtensorMap and its enums only (no driver API calls are linked)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "ops/cuda_info.h"
#include "ops/group_min.h"

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
// Row norms (+ optional packed copy). One warp per row, grid-stride over rows.
template <typename InT, int CT>
__global__ void __launch_bounds__(256) prep_rows_kernel(const InT* __restrict__ in, int64_t n,
                                                        int64_t stride, int64_t d,
                                                        void* __restrict__ packed, int64_t pitch,
                                                        float* __restrict__ norm2) {
  const int lane = threadIdx.x & 31;
  const int64_t kend = packed ? pitch : d;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5); row < n;
       row += static_cast<int64_t>(gridDim.x) * 8) {
    const InT* src = in + row * stride;
    float acc = 0.f;
    for (int64_t k = lane; k < kend; k += 32) {
      float v = k < d ? round_ct<CT>(to_float(src[k])) : 0.f;
      acc = fmaf(v, v, acc);
      if (packed) store_ct<CT>(packed, row * pitch + k, v);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) norm2[row] = acc;
  }
}

// 0xFFFFFFFF -> NaN (no eligible row), sqrt for l2.
__global__ void __launch_bounds__(256) finalize_kernel(float* __restrict__ out, int64_t total,
                                                       bool take_sqrt) {
  uint32_t* bits = reinterpret_cast<uint32_t*>(out);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t u = bits[i];
    float v;
    if (u == 0xFFFFFFFFu) {
      v = __uint_as_float(0x7fc00000u);
    } else {
      v = __uint_as_float(u);
      if (take_sqrt) v = sqrtf(v);
    }
    out[i] = v;
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
  return ri;
}

__device__ __forceinline__ void flush(uint32_t* orow, int64_t g, float key, const RowInfo& ri) {
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

// ------------------------------------------------------------------------------------------
// FP32 SIMT kernel: 128 x 128 tile, K chunks of 16, 256 threads, 8x8 per thread.
namespace simt {
constexpr int BM = 128, BN = 128, BK = 16, PITCH = BM + 4, THREADS = 256;
constexpr int PIPE_FLOATS = 2 * 2 * BK * PITCH;  // As[2][BK][PITCH] + Bs[2][BK][PITCH]
constexpr int CROWS = 64;                         // rows of the staged dot tile per pass
static_assert(CROWS * PITCH <= PIPE_FLOATS, "staged tile must fit in the pipeline buffers");

__device__ __forceinline__ float4 load4(const float* __restrict__ rowp, int64_t k, int64_t d) {
  if (k + 4 <= d) return __ldg(reinterpret_cast<const float4*>(rowp + k));
  float4 v;
  v.x = k < d ? __ldg(rowp + k) : 0.f;
  v.y = k + 1 < d ? __ldg(rowp + k + 1) : 0.f;
  v.z = k + 2 < d ? __ldg(rowp + k + 2) : 0.f;
  v.w = 0.f;  // k + 3 < d would have taken the vector path
  return v;
}
}  // namespace simt

__global__ void __launch_bounds__(simt::THREADS, 2) group_min_simt_kernel(const KArgs p) {
  using namespace simt;
  __shared__ __align__(16) float smem[PIPE_FLOATS];
  __shared__ int64_t gs[BN];
  __shared__ float2 cab[BN];

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int tx = tid & 15, ty = tid >> 4;
  const float* __restrict__ A = static_cast<const float*>(p.A);
  const float* __restrict__ B = static_cast<const float*>(p.B);
  const int lr = tid >> 2;        // load row 0..63 (and +64)
  const int lk = (tid & 3) * 4;   // load k offset within the chunk
  const int64_t KT = (p.d + BK - 1) / BK;
  const int64_t total = p.tiles_m * p.tiles_n;

  for (int64_t tile = blockIdx.x; tile < total; tile += gridDim.x) {
    int64_t tm, tn;
    tile_coords(tile, p.tiles_m, p.tiles_n, tm, tn);
    const int64_t row0 = tm * BM, col0 = tn * BN;
    int64_t tile_group;
    const int uniform = load_col_info<BN>(p, col0, gs, cab, tile_group);

    const float* a_row[2];
    const float* b_row[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      a_row[h] = A + min(row0 + lr + h * 64, p.nq - 1) * p.lda;
      b_row[h] = B + min(col0 + lr + h * 64, p.nm - 1) * p.ldb;
    }

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

    float4 ra[2], rb[2];
    auto gload = [&](int64_t kt) {
      const int64_t k = kt * BK + lk;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        ra[h] = load4(a_row[h], k, p.d);
        rb[h] = load4(b_row[h], k, p.d);
      }
    };
    auto sstore = [&](int buf) {
      float* As = smem + buf * BK * PITCH;
      float* Bs = smem + 2 * BK * PITCH + buf * BK * PITCH;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int m = lr + h * 64;
        As[(lk + 0) * PITCH + m] = ra[h].x;
        As[(lk + 1) * PITCH + m] = ra[h].y;
        As[(lk + 2) * PITCH + m] = ra[h].z;
        As[(lk + 3) * PITCH + m] = ra[h].w;
        Bs[(lk + 0) * PITCH + m] = rb[h].x;
        Bs[(lk + 1) * PITCH + m] = rb[h].y;
        Bs[(lk + 2) * PITCH + m] = rb[h].z;
        Bs[(lk + 3) * PITCH + m] = rb[h].w;
      }
    };

    if (KT > 0) {
      gload(0);
      sstore(0);
    }
    __syncthreads();
#pragma unroll 1
    for (int64_t kt = 0; kt < KT; ++kt) {
      const int buf = static_cast<int>(kt & 1);
      if (kt + 1 < KT) gload(kt + 1);
      const float* As = smem + buf * BK * PITCH;
      const float* Bs = smem + 2 * BK * PITCH + buf * BK * PITCH;
#pragma unroll
      for (int k = 0; k < BK; ++k) {
        const float4 a0 = *reinterpret_cast<const float4*>(As + k * PITCH + ty * 4);
        const float4 a1 = *reinterpret_cast<const float4*>(As + k * PITCH + 64 + ty * 4);
        const float4 b0 = *reinterpret_cast<const float4*>(Bs + k * PITCH + tx * 4);
        const float4 b1 = *reinterpret_cast<const float4*>(Bs + k * PITCH + 64 + tx * 4);
        const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      if (kt + 1 < KT) sstore(buf ^ 1);
      __syncthreads();
    }

    // Epilogue. Thread rows: i < 4 -> ty*4+i, else 64+ty*4+(i-4); columns likewise with tx.
    if (uniform) {
      float2 cb[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) cb[j] = cab[(j < 4 ? 0 : 64) + tx * 4 + (j & 3)];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        float m = kInf;
#pragma unroll
        for (int j = 0; j < 8; ++j) m = fminf(m, fmaf(acc[i][j], cb[j].x, cb[j].y));
#pragma unroll
        for (int o = 1; o < 16; o <<= 1) m = fminf(m, __shfl_xor_sync(0xffffffffu, m, o));
        const int64_t r = row0 + (i < 4 ? 0 : 64) + ty * 4 + (i & 3);
        if (tx == 0 && r < p.nq && m < kInf) {
          const RowInfo ri = row_info(p, r);
          if (ri.qg != tile_group) flush(p.out + r * p.G, tile_group, m, ri);
        }
      }
    } else {
      float* Cs = smem;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int ii = 0; ii < 4; ++ii) {
          const int i = h * 4 + ii;
          float* crow = Cs + (ty * 4 + ii) * PITCH;
          *reinterpret_cast<float4*>(crow + tx * 4) =
              make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
          *reinterpret_cast<float4*>(crow + 64 + tx * 4) =
              make_float4(acc[i][4], acc[i][5], acc[i][6], acc[i][7]);
        }
        __syncthreads();
        const int rl = (warp & 1) * 32 + lane;  // 64 rows x 4 segments of 32 columns
        const int seg = warp >> 1;
        const int64_t r = row0 + h * CROWS + rl;
        if (r < p.nq) {
          const RowInfo ri = row_info(p, r);
          scan_row<32>(Cs + rl * PITCH, seg * 32, lane, gs, cab, ri, p.out + r * p.G);
        }
        __syncthreads();
      }
    }
    __syncthreads();  // gs/cab and the pipeline buffers are rewritten by the next tile
  }
}

// ------------------------------------------------------------------------------------------
// Tensor-core kernel (sm_80+): 256 (queries) x 128 (memory) tile, 64 bytes of K per stage
// (32 bf16/f16 or 16 tf32), 4 stages, 8 warps as 4 (M) x 2 (N) of 64 x 64.
namespace tc {
constexpr int BM = 256, BN = 128, KB = 64, STAGES = 4, THREADS = 256;
constexpr int A_STAGE = BM * KB, B_STAGE = BN * KB, STAGE = A_STAGE + B_STAGE;  // bytes
constexpr int PIPE = STAGES * STAGE;
constexpr int CPITCH = BN + 4;  // floats per staged row
constexpr int CROWS = 128;      // staged rows per pass
static_assert(CROWS * CPITCH * 4 <= PIPE, "staged tile must fit in the pipeline buffers");
constexpr int SMEM = PIPE + BN * 8 + BN * 8;  // + gs (int64) + cab (float2)

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800  // tensor-core helpers: sm_80+
// Byte offset of 16-byte chunk `c` (0..3) of row `r` in a 64-byte-row tile, XOR-swizzled so
// that the 8 row addresses of an ldmatrix phase hit 8 distinct 16-byte bank groups.
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return static_cast<uint32_t>(r * KB + ((c ^ ((r >> 1) & 3)) << 4));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ uint32_t to_tf32(uint32_t x) {
  uint32_t y = x;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(y) : "f"(__uint_as_float(x)));
  return y;
}

// One 32-byte K step: m16n8k16 (bf16/f16) or m16n8k8 (tf32).
template <int CT>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if (CT == kBF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else if (CT == kF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}
#endif
}  // namespace tc

template <int CT>
__global__ void __launch_bounds__(tc::THREADS, 1) group_min_tc_kernel(const KArgs p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace tc;
  extern __shared__ __align__(128) unsigned char smem[];
  int64_t* gs = reinterpret_cast<int64_t*>(smem + PIPE);
  float2* cab = reinterpret_cast<float2*>(smem + PIPE + BN * 8);
  const uint32_t smem_u32 = static_cast<uint32_t>(__cvta_generic_to_shared(smem));

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 1, warp_n = warp & 1;
  const int g = lane >> 2, t = lane & 3;
  constexpr int ES = (CT == kTF32) ? 4 : 2;
  const char* __restrict__ A = static_cast<const char*>(p.A);
  const char* __restrict__ B = static_cast<const char*>(p.B);
  const int64_t lda_b = p.lda * ES, ldb_b = p.ldb * ES;
  const int64_t dbytes = p.d * ES;
  const int64_t KT = (dbytes + KB - 1) / KB;
  const int64_t total = p.tiles_m * p.tiles_n;

  // ldmatrix lane addressing (see the fragment layouts of mma.m16n8k16 / m16n8k8):
  //   A: row = lane % 16, chunk = ks*2 + lane/16        -> a0..a3
  //   B: row = lane % 8 + (lane/16)*8, chunk = ks*2 + (lane/8)%2 -> b[ni], b[ni+1]
  const int a_r = warp_m * 64 + (lane & 15);
  const int a_c = lane >> 4;
  const int b_r = warp_n * 64 + (lane & 7) + ((lane >> 4) << 3);
  const int b_c = (lane >> 3) & 1;

  for (int64_t tile = blockIdx.x; tile < total; tile += gridDim.x) {
    int64_t tm, tn;
    tile_coords(tile, p.tiles_m, p.tiles_n, tm, tn);
    const int64_t row0 = tm * BM, col0 = tn * BN;
    int64_t tile_group;
    const int uniform = load_col_info<BN>(p, col0, gs, cab, tile_group);

    // Global source rows of this thread's 16-byte chunks: A 4 chunks, B 2 chunks per stage.
    const char* a_src[4];
    bool a_ok[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t r = row0 + ((tid + i * THREADS) >> 2);
      a_ok[i] = r < p.nq;
      a_src[i] = A + (a_ok[i] ? r : 0) * lda_b;
    }
    const char* b_src[2];
    bool b_ok[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int64_t r = col0 + ((tid + i * THREADS) >> 2);
      b_ok[i] = r < p.nm;
      b_src[i] = B + (b_ok[i] ? r : 0) * ldb_b;
    }
    const int ld_c = tid & 3;

    auto load_stage = [&](int slot, int64_t kt) {
      const uint32_t sa = smem_u32 + slot * STAGE;
      const uint32_t sb = sa + A_STAGE;
      const int64_t kbyte = kt * KB + ld_c * 16;
      const int64_t left = dbytes - kbyte;
      const uint32_t nbytes = left >= 16 ? 16u : (left > 0 ? static_cast<uint32_t>(left) : 0u);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = (tid + i * THREADS) >> 2;
        const uint32_t n = a_ok[i] ? nbytes : 0u;
        cp_async16(sa + swz(r, ld_c), n ? a_src[i] + kbyte : A, n);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = (tid + i * THREADS) >> 2;
        const uint32_t n = b_ok[i] ? nbytes : 0u;
        cp_async16(sb + swz(r, ld_c), n ? b_src[i] + kbyte : B, n);
      }
    };

    float acc[4][8][4];
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
      for (int ni = 0; ni < 8; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < KT) load_stage(s, s);
      cp_async_commit();
    }

#pragma unroll 1
    for (int64_t kt = 0; kt < KT; ++kt) {
      cp_async_wait<STAGES - 2>();
      __syncthreads();
      {
        const int64_t nk = kt + STAGES - 1;
        if (nk < KT) load_stage(static_cast<int>(nk % STAGES), nk);
        cp_async_commit();
      }
      const uint32_t sa = smem_u32 + static_cast<int>(kt % STAGES) * STAGE;
      const uint32_t sb = sa + A_STAGE;
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
        uint32_t af[4][4];
        uint32_t bf[8][2];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) ldmatrix_x4(af[mi], sa + swz(a_r + mi * 16, ks * 2 + a_c));
#pragma unroll
        for (int nj = 0; nj < 4; ++nj) {
          uint32_t r4[4];
          ldmatrix_x4(r4, sb + swz(b_r + nj * 16, ks * 2 + b_c));
          bf[2 * nj][0] = r4[0];
          bf[2 * nj][1] = r4[1];
          bf[2 * nj + 1][0] = r4[2];
          bf[2 * nj + 1][1] = r4[3];
        }
        if (CT == kTF32) {
#pragma unroll
          for (int mi = 0; mi < 4; ++mi)
#pragma unroll
            for (int e = 0; e < 4; ++e) af[mi][e] = to_tf32(af[mi][e]);
#pragma unroll
          for (int ni = 0; ni < 8; ++ni)
#pragma unroll
            for (int e = 0; e < 2; ++e) bf[ni][e] = to_tf32(bf[ni][e]);
        }
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
          for (int ni = 0; ni < 8; ++ni) mma<CT>(acc[mi][ni], af[mi], bf[ni]);
      }
    }
    cp_async_wait<0>();
    __syncthreads();

    // Epilogue. acc[mi][ni][e]: row warp_m*64 + mi*16 + g + (e/2)*8,
    //                           col warp_n*64 + ni*8 + 2t + (e%2).
    if (uniform) {
      float2 cb[8][2];
#pragma unroll
      for (int ni = 0; ni < 8; ++ni)
#pragma unroll
        for (int e = 0; e < 2; ++e) cb[ni][e] = cab[warp_n * 64 + ni * 8 + 2 * t + e];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float m = kInf;
#pragma unroll
          for (int ni = 0; ni < 8; ++ni)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              m = fminf(m, fmaf(acc[mi][ni][2 * h + e], cb[ni][e].x, cb[ni][e].y));
          m = fminf(m, __shfl_xor_sync(0xffffffffu, m, 1));
          m = fminf(m, __shfl_xor_sync(0xffffffffu, m, 2));
          const int64_t r = row0 + warp_m * 64 + mi * 16 + h * 8 + g;
          if (t == 0 && r < p.nq && m < kInf) {
            const RowInfo ri = row_info(p, r);
            if (ri.qg != tile_group) flush(p.out + r * p.G, tile_group, m, ri);
          }
        }
    } else {
      float* Cs = reinterpret_cast<float*>(smem);
#pragma unroll
      for (int chunk = 0; chunk < BM / CROWS; ++chunk) {
        if ((warp_m >> 1) == chunk) {
#pragma unroll
          for (int mi = 0; mi < 4; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              float* crow = Cs + ((warp_m & 1) * 64 + mi * 16 + h * 8 + g) * CPITCH;
#pragma unroll
              for (int ni = 0; ni < 8; ++ni)
                *reinterpret_cast<float2*>(crow + warp_n * 64 + ni * 8 + 2 * t) =
                    make_float2(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
            }
        }
        __syncthreads();
        const int rl = (warp & 3) * 32 + lane;  // 128 rows x 2 segments of 64 columns
        const int seg = warp >> 2;
        const int64_t r = row0 + chunk * CROWS + rl;
        if (r < p.nq) {
          const RowInfo ri = row_info(p, r);
          scan_row<64>(Cs + rl * CPITCH, seg * 64, lane, gs, cab, ri, p.out + r * p.G);
        }
        __syncthreads();
      }
    }
    __syncthreads();  // gs/cab and the pipeline buffers are rewritten by the next tile
  }
#else
  // Never launched below sm_80: the host picks the SIMT kernel there.
  __trap();
#endif
}

// ------------------------------------------------------------------------------------------
// Hopper wgmma kernel (its body is compiled only for sm_90a).
#include "ops/group_min_cuda_sm90.cuh"

// ------------------------------------------------------------------------------------------
// Host side.
void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string("group_min_distance: CUDA launch of ") + what +
                             " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                             ")");
  }
}

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    MEDS_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) {
      MEDS_CUDA_CHECK(cudaSetDevice(device));
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_) (void)cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

// Stream-ordered scratch memory (cudaMallocAsync), or cudaMalloc + a stream sync before the
// free where memory pools are unsupported.
class Workspace {
 public:
  Workspace(size_t bytes, int device, cudaStream_t stream) : stream_(stream) {
    if (bytes == 0) return;
    int pools = 0;
    if (cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess)
      pools = 0;
    (void)cudaGetLastError();
    async_ = pools != 0;
    if (async_) {
      MEDS_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream_));
    } else {
      MEDS_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
    }
  }
  ~Workspace() {
    if (!ptr_) return;
    if (async_) {
      (void)cudaFreeAsync(ptr_, stream_);
    } else {
      (void)cudaStreamSynchronize(stream_);
      (void)cudaFree(ptr_);
    }
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  char* get() const { return static_cast<char*>(ptr_); }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
  bool async_ = false;
};

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

int grid_for(int64_t items, int64_t per_block, int64_t cap) {
  int64_t b = (items + per_block - 1) / per_block;
  b = std::max<int64_t>(1, std::min<int64_t>(b, cap));
  return static_cast<int>(b);
}

template <typename InT, int CT>
void launch_prep_t(const void* in, int64_t n, int64_t stride, int64_t d, void* packed,
                   int64_t pitch, float* norm2, cudaStream_t st) {
  prep_rows_kernel<InT, CT><<<grid_for(n, 8, 1 << 20), 256, 0, st>>>(
      static_cast<const InT*>(in), n, stride, d, packed, pitch, norm2);
  check_launch("prep_rows_kernel");
}

template <typename InT>
void launch_prep_in(int ct, const void* in, int64_t n, int64_t stride, int64_t d, void* packed,
                    int64_t pitch, float* norm2, cudaStream_t st) {
  switch (ct) {
    case kF32: launch_prep_t<InT, kF32>(in, n, stride, d, packed, pitch, norm2, st); break;
    case kTF32: launch_prep_t<InT, kTF32>(in, n, stride, d, packed, pitch, norm2, st); break;
    case kBF16: launch_prep_t<InT, kBF16>(in, n, stride, d, packed, pitch, norm2, st); break;
    default: launch_prep_t<InT, kF16>(in, n, stride, d, packed, pitch, norm2, st); break;
  }
}

void launch_prep(DType dt, int ct, const void* in, int64_t n, int64_t stride, int64_t d,
                 void* packed, int64_t pitch, float* norm2, cudaStream_t st) {
  if (n == 0) return;
  switch (dt) {
    case DType::Float32:
      launch_prep_in<float>(ct, in, n, stride, d, packed, pitch, norm2, st);
      break;
    case DType::Float16:
      launch_prep_in<__half>(ct, in, n, stride, d, packed, pitch, norm2, st);
      break;
    case DType::BFloat16:
      launch_prep_in<__nv_bfloat16>(ct, in, n, stride, d, packed, pitch, norm2, st);
      break;
  }
}

template <int CT>
void launch_tc(const KArgs& k, int grid, cudaStream_t st) {
  MEDS_CUDA_CHECK(cudaFuncSetAttribute(group_min_tc_kernel<CT>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, tc::SMEM));
  group_min_tc_kernel<CT><<<grid, tc::THREADS, tc::SMEM, st>>>(k);
  check_launch("group_min_tc_kernel");
}

// ---- kernel choice between mma.sync and wgmma ---------------------------------------------
enum class TcMode { Auto, Mma, Wgmma };

// MEDS_CUDA_TC: unset, "" or "auto" -> Auto; "mma"; "wgmma". Anything else is an error (a typo
// must not silently benchmark the wrong kernel).
TcMode tc_mode_from_env() {
  const char* v = std::getenv("MEDS_CUDA_TC");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return TcMode::Auto;
  if (std::strcmp(v, "mma") == 0) return TcMode::Mma;
  if (std::strcmp(v, "wgmma") == 0) return TcMode::Wgmma;
  throw std::invalid_argument(
      std::string("group_min_distance: environment variable MEDS_CUDA_TC must be 'auto', "
                  "'mma' or 'wgmma', got '") +
      v + "'");
}

enum LastKernel : int { kLastNone = 0, kLastSimt = 1, kLastMma = 2, kLastWgmma = 3 };
std::atomic<int> g_last_kernel{kLastNone};

// cuTensorMapEncodeTiled from the driver, fetched through the runtime (no link to libcuda).
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFn encode_tiled_fn() {
  static const EncodeTiledFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t e =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
#else
    const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &q);
#endif
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      f = nullptr;
    }
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

// Whether the variant of group_min_wgmma_kernel<CT> that the runtime loaded for the current
// device is the real sm_90a one: only that variant declares static shared memory (its
// mbarriers); the stub of every other compilation (sm_75..sm_89, compute_90 PTX JIT-compiled,
// or a build without 90a) declares none. This looks at the very function that would be
// launched, so it holds whichever cubin the driver picked from the fatbinary.
template <int CT>
bool wgmma_kernel_is_real(std::string* why) {
  cudaFuncAttributes fa{};
  const cudaError_t e = cudaFuncGetAttributes(&fa, group_min_wgmma_kernel<CT>);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (why) *why = std::string("cudaFuncGetAttributes failed: ") + cudaGetErrorName(e);
    return false;
  }
  if (fa.sharedSizeBytes < static_cast<size_t>(wg::STATIC_SMEM) ||
      fa.maxThreadsPerBlock < wg::THREADS) {
    if (why) {
      *why = "the loaded variant of the wgmma kernel is not the sm_90a one (binaryVersion " +
             std::to_string(fa.binaryVersion) + ", ptxVersion " + std::to_string(fa.ptxVersion) +
             ", static shared " + std::to_string(fa.sharedSizeBytes) + " B)";
    }
    return false;
  }
  return true;
}

// nullptr-equivalent (empty string) when the wgmma kernel can run on `device` for compute type
// ct, else the reason. Cheap (attribute queries only; no launch, no synchronisation), so it is
// evaluated at every call and is safe during stream capture.
std::string wgmma_unavailable(int device, int ct) {
  int major = 0, minor = 0, optin = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess) {
    (void)cudaGetLastError();
    return "device attributes unavailable";
  }
  if (major != 9 || minor != 0) {
    return "device is compute capability " + std::to_string(major) + "." + std::to_string(minor) +
           ", the wgmma kernel is sm_90a only";
  }
  if (optin < wg::SMEM + wg::STATIC_SMEM) return "not enough opt-in shared memory per block";
  if (encode_tiled_fn() == nullptr) return "cuTensorMapEncodeTiled is not available from the driver";
  std::string why;
  bool real = false;
  switch (ct) {
    case kTF32: real = wgmma_kernel_is_real<kTF32>(&why); break;
    case kBF16: real = wgmma_kernel_is_real<kBF16>(&why); break;
    case kF16: real = wgmma_kernel_is_real<kF16>(&why); break;
    default: return "not a tensor-core compute type";
  }
  return real ? std::string() : why;
}

// Tensor map of a row-major (rows x cols) matrix with row pitch `ld` elements, boxes of
// (box_rows x 128 bytes), 128-byte swizzle, zero fill out of bounds. False when the driver
// refuses it (the caller then falls back to mma.sync).
bool make_tensor_map(CUtensorMap* map, int ct, const void* base, int64_t rows, int64_t cols,
                     int64_t ld, int box_rows) {
  const EncodeTiledFn fn = encode_tiled_fn();
  if (fn == nullptr) return false;
  const int64_t es = ct == kTF32 ? 4 : 2;
  const CUtensorMapDataType dt = ct == kTF32   ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
                                 : ct == kBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                               : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld * es)};  // bytes, dims 1..rank-1
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(wg::KB / es),
                             static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t estr[2] = {1, 1};
  const CUresult r = fn(map, dt, 2, const_cast<void*>(base), dims, strides, box, estr,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

template <int CT>
void launch_wgmma(const CUtensorMap& ta, const CUtensorMap& tb, const KArgs& k, int kt_count,
                  int grid, cudaStream_t st) {
  MEDS_CUDA_CHECK(cudaFuncSetAttribute(group_min_wgmma_kernel<CT>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, wg::SMEM));
  group_min_wgmma_kernel<CT><<<grid, wg::THREADS, wg::SMEM, st>>>(ta, tb, k, kt_count);
  check_launch("group_min_wgmma_kernel");
}

}  // namespace

const char* cuda_last_group_min_kernel() noexcept {
  switch (g_last_kernel.load()) {
    case kLastSimt: return "simt";
    case kLastMma: return "mma";
    case kLastWgmma: return "wgmma";
    default: return "none";
  }
}

std::string cuda_wgmma_status(int device) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || device < 0 || device >= n) {
    (void)cudaGetLastError();
    return "no such CUDA device";
  }
  DeviceGuard guard(device);
  for (int ct : {kTF32, kBF16, kF16}) {
    const std::string why = wgmma_unavailable(device, ct);
    if (!why.empty()) return why;
  }
  return "ok";
}

int cuda_device_count() noexcept {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // clear; no driver / no device is not an error here
    return 0;
  }
  return n;
}

void group_min_distance_cuda(const GroupMinArgs& a) {
  const TcMode tc_mode = tc_mode_from_env();  // throws on a bad MEDS_CUDA_TC, before any work
  g_last_kernel.store(kLastNone);
  if (a.nq == 0 || a.n_groups == 0) return;
  DeviceGuard guard(a.device);
  const cudaStream_t st = static_cast<cudaStream_t>(a.stream);
  const int64_t total_out = a.nq * a.n_groups;

  MEDS_CUDA_CHECK(cudaMemsetAsync(a.out, 0xFF, static_cast<size_t>(total_out) * sizeof(float), st));

  if (a.nm > 0) {
    // Compute type: tensor cores on sm_80+, else exact fp32. TF32 on 16-bit inputs uses the
    // input's own tensor-core format (products of 16-bit values are exact in fp32).
    int major = 0, smem_optin = 0;
    MEDS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, a.device));
    MEDS_CUDA_CHECK(
        cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, a.device));
    int ct = kF32;
    if (a.precision != Precision::Fp32 && major >= 8 && smem_optin >= tc::SMEM) {
      if (a.dtype == DType::Float16) {
        ct = a.precision == Precision::BF16 ? kBF16 : kF16;
      } else if (a.dtype == DType::BFloat16) {
        ct = a.precision == Precision::FP16 ? kF16 : kBF16;
      } else {
        ct = a.precision == Precision::TF32 ? kTF32 : a.precision == Precision::BF16 ? kBF16 : kF16;
      }
    }
    const int64_t es = (ct == kF32 || ct == kTF32) ? 4 : 2;
    // Hopper wgmma kernel? Only for tensor-core compute types, when MEDS_CUDA_TC allows it, the
    // device is cc 9.0, the loaded binary holds the real sm_90a kernel and the sizes fit the
    // TMA's 32-bit coordinates. Anything else: the mma.sync kernel.
    const int64_t kLim = (int64_t{1} << 31) - 1024;
    bool use_wg = ct != kF32 && tc_mode != TcMode::Mma && a.nq < kLim && a.nm < kLim &&
                  a.d < kLim / 4 && wgmma_unavailable(a.device, ct).empty();
    const DType native = es == 4 ? DType::Float32 : (ct == kBF16 ? DType::BFloat16 : DType::Float16);
    const int64_t pitch = (a.d + (16 / es) - 1) / (16 / es) * (16 / es);  // 16-byte rows
    auto usable = [&](const void* ptr, int64_t stride) {
      return a.dtype == native && reinterpret_cast<uintptr_t>(ptr) % 16 == 0 &&
             (stride * es) % 16 == 0 && (!use_wg || stride >= a.d);  // TMA: no overlapping rows
    };
    // The wgmma kernel reads tf32 operands straight from shared memory (the hardware would
    // truncate the fp32 mantissa), so for it TF32 operands are always packed, rounded to tf32
    // by the prep pass exactly like the cvt.rna of the mma.sync kernel.
    const bool round_tf32 = use_wg && ct == kTF32;
    const bool pack_q = round_tf32 || !usable(a.queries, a.query_row_stride);
    const bool pack_m = round_tf32 || !usable(a.memory, a.memory_row_stride);

    size_t off = 0;
    const size_t off_qn = off;
    off = align_up(off + static_cast<size_t>(a.nq) * 4, 256);
    const size_t off_mn = off;
    off = align_up(off + static_cast<size_t>(a.nm) * 4, 256);
    const size_t off_qp = off;
    if (pack_q) off = align_up(off + static_cast<size_t>(a.nq * pitch * es), 256);
    const size_t off_mp = off;
    if (pack_m) off = align_up(off + static_cast<size_t>(a.nm * pitch * es), 256);
    Workspace ws(off, a.device, st);
    float* qn2 = reinterpret_cast<float*>(ws.get() + off_qn);
    float* mn2 = reinterpret_cast<float*>(ws.get() + off_mn);
    void* qpack = pack_q ? ws.get() + off_qp : nullptr;
    void* mpack = pack_m ? ws.get() + off_mp : nullptr;

    launch_prep(a.dtype, ct, a.queries, a.nq, a.query_row_stride, a.d, qpack, pitch, qn2, st);
    launch_prep(a.dtype, ct, a.memory, a.nm, a.memory_row_stride, a.d, mpack, pitch, mn2, st);

    KArgs k;
    k.A = pack_q ? qpack : a.queries;
    k.lda = pack_q ? pitch : a.query_row_stride;
    k.B = pack_m ? mpack : a.memory;
    k.ldb = pack_m ? pitch : a.memory_row_stride;
    k.nq = a.nq;
    k.nm = a.nm;
    k.d = a.d;
    k.qn2 = qn2;
    k.mn2 = mn2;
    k.groups = a.groups;
    k.qgroups = a.exclude_self ? a.query_groups : nullptr;
    k.G = a.n_groups;
    k.out = reinterpret_cast<uint32_t*>(a.out);
    k.cosine = a.metric == Metric::Cosine ? 1 : 0;

    // Tensor maps for the wgmma kernel. Packed operands expose their zero padding (pitch
    // columns, at least 16 bytes); direct operands expose exactly d columns. Should the driver
    // refuse either map, the mma.sync kernel runs (it accepts every layout used here, and
    // tf32 values already rounded by the prep pass round to themselves).
    CUtensorMap tmap_a, tmap_b;
    if (use_wg) {
      use_wg = make_tensor_map(&tmap_a, ct, k.A, a.nq, pack_q ? pitch : a.d, k.lda, wg::BM) &&
               make_tensor_map(&tmap_b, ct, k.B, a.nm, pack_m ? pitch : a.d, k.ldb, wg::BN);
    }

    const int64_t bm = ct == kF32 ? simt::BM : use_wg ? wg::BM : tc::BM;
    const int64_t bn = ct == kF32 ? simt::BN : use_wg ? wg::BN : tc::BN;
    k.tiles_m = (a.nq + bm - 1) / bm;
    k.tiles_n = (a.nm + bn - 1) / bn;
    const int64_t tiles = k.tiles_m * k.tiles_n;
    if (use_wg) {
      // Persistent: one CTA per SM (the kernel needs ~200 KiB of shared memory).
      int sms = 0;
      MEDS_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, a.device));
      const int grid = grid_for(tiles, 1, std::max(sms, 1));
      const int kt_count = static_cast<int>((a.d * es + wg::KB - 1) / wg::KB);
      switch (ct) {
        case kTF32: launch_wgmma<kTF32>(tmap_a, tmap_b, k, kt_count, grid, st); break;
        case kBF16: launch_wgmma<kBF16>(tmap_a, tmap_b, k, kt_count, grid, st); break;
        default: launch_wgmma<kF16>(tmap_a, tmap_b, k, kt_count, grid, st); break;
      }
      g_last_kernel.store(kLastWgmma);
    } else {
      const int grid = grid_for(tiles, 1, INT_MAX);
      switch (ct) {
        case kF32:
          group_min_simt_kernel<<<grid, simt::THREADS, 0, st>>>(k);
          check_launch("group_min_simt_kernel");
          break;
        case kTF32: launch_tc<kTF32>(k, grid, st); break;
        case kBF16: launch_tc<kBF16>(k, grid, st); break;
        default: launch_tc<kF16>(k, grid, st); break;
      }
      g_last_kernel.store(ct == kF32 ? kLastSimt : kLastMma);
    }
  }

  finalize_kernel<<<grid_for(total_out, 256, 65536), 256, 0, st>>>(a.out, total_out,
                                                                    a.metric == Metric::L2);
  check_launch("finalize_kernel");
}

}  // namespace meds
