// Tensor-core kernel of group_min through mma.sync (sm_80+; tf32 / bf16 / fp16 precisions,
// fp32 accumulation): 256 (queries) x 128 (memory) tile, 64 bytes of K per stage (32 bf16/f16
// or 16 tf32), 4-stage cp.async pipeline, 8 warps as 4 (M) x 2 (N) of 64 x 64, ldmatrix from
// XOR-swizzled shared memory. Included only by group_min_cuda.cu, after
// group_min_cuda_common.cuh.
#pragma once

#include <cstdint>

#include "common/cuda_check.h"
#include "ops/group_min_cuda_common.cuh"

namespace meds {
namespace {

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

template <int CT>
void launch_mma(const KArgs& k, int grid, cudaStream_t st) {
  MEDS_CUDA_CHECK(cudaFuncSetAttribute(group_min_tc_kernel<CT>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, tc::SMEM));
  group_min_tc_kernel<CT><<<grid, tc::THREADS, tc::SMEM, st>>>(k);
  MEDS_CUDA_CHECK_LAUNCH("group_min_tc_kernel");
}

}  // namespace
}  // namespace meds
