// FP32 SIMT kernel of group_min (fp32 precision, and every precision below sm_80): 128 x 128
// tile, K chunks of 16, 256 threads, 8x8 outputs per thread, register-staged double buffering.
// Included only by group_min_cuda.cu, after group_min_cuda_common.cuh.
#pragma once

#include <cstdint>

#include "common/cuda_check.h"
#include "ops/group_min_cuda_common.cuh"

namespace meds {
namespace {

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

void launch_simt(const KArgs& k, int grid, cudaStream_t st) {
  group_min_simt_kernel<<<grid, simt::THREADS, 0, st>>>(k);
  MEDS_CUDA_CHECK_LAUNCH("group_min_simt_kernel");
}

}  // namespace
}  // namespace meds
