// Hopper (sm_90a) tensor-core kernel of group_min: wgmma.mma_async + TMA + mbarrier pipeline,
// and the host code that tells whether it can run and builds its tensor maps. Included only by
// group_min_cuda.cu, after group_min_cuda_common.cuh, so that this kernel lives in the same CUDA
// module (fatbinary, hence the same cubin choice by the driver) as the mma.sync fallback.
//
// Design (one CTA per SM, persistent over output tiles):
//   * CTA tile 128 (queries) x 256 (memory rows); K is consumed 128 bytes per stage (64 bf16/f16
//     or 32 tf32 elements), which is exactly one 128-byte swizzle row, so a stage is one TMA box
//     per operand and the canonical "K-major, 128B swizzle" wgmma layout.
//   * 384 threads: warps 0-7 are two consumer warpgroups (WG w computes query rows 64w..64w+63
//     of the tile against all 256 columns with wgmma m64n256, fp32 accumulators in 128
//     registers per thread); warpgroup 2 is the producer, whose first thread issues the TMA
//     loads. setmaxnreg moves registers from the producer (40 per thread) to the consumers
//     (232 per thread): 128 x 40 + 256 x 232 = 64512 <= 65536, per SM sub-partition one warp
//     of each warpgroup: 32 x (40 + 232 + 232) = 16128 <= 16384.
//   * STAGES-deep ring of shared-memory stages. full[s]: producer arrive.expect_tx + TMA
//     complete_tx (count 1). empty[s]: one arrive per consumer warp after its wgmma reading that
//     stage has completed (count 8).
//   * Epilogue per tile (same contract as the mma.sync kernel): key = a_col * dot + b_col, min
//     over the columns of a group per row, one atomicMin per (row, group run); NaN/exclude_self/
//     metric handling through RowInfo/flush exactly as in the other kernels.
//       - "two runs" (the normal case, groups sorted: the tile's valid columns are one run of
//         group gA followed by at most one run of group gB): per-thread min over its columns, a
//         quad shuffle, one atomic per row and run.
//       - anything else: each thread scans its own columns in order, one atomic per run.
//   * Tails: TMA zero-fills out-of-bounds rows (M, N) and K elements, so the dot products of
//     padding are exactly 0; padding columns get key +inf (a = 0, b = +inf), padding rows are
//     never flushed.
// Host-side requirements (checked by plan() in group_min_cuda.cu): 16-byte aligned base
// addresses and row pitches, row pitch >= d, TF32 operands pre-rounded (the prep pass packs them
// rounded to tf32 with cvt.rna semantics, because wgmma reads fp32 bit patterns and would
// truncate).
#pragma once

// <cuda.h> for CUtensorMap and its enums only: the driver function that encodes a map is
// fetched at run time through the runtime, libcuda is not linked.
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common/cuda_check.h"
#include "ops/group_min_cuda_common.cuh"

// The kernel body exists only in the sm_90a compilation (arch-specific features). Every other
// device pass compiles a stub that traps and declares no shared memory, which is how the host
// tells the two variants apart (see wgmma_kernel_is_real below).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MEDS_SM90A_DEVICE 1
#else
#define MEDS_SM90A_DEVICE 0
#endif

namespace meds {
namespace {

namespace wg {
constexpr int BM = 128;           // query rows per CTA tile (2 warpgroups x 64)
constexpr int BN = 256;           // memory rows (columns) per CTA tile = wgmma N
constexpr int KB = 128;           // bytes of K per pipeline stage = one 128B swizzle row
constexpr int KSTEP = 32;         // bytes of K per wgmma (k16 x 2 B, or k8 x 4 B)
constexpr int STAGES = 4;
constexpr int CONSUMER_THREADS = 256;
constexpr int THREADS = CONSUMER_THREADS + 128;  // + one producer warpgroup
constexpr int PRODUCER_REGS = 40;                // setmaxnreg targets (multiples of 8)
constexpr int CONSUMER_REGS = 232;
constexpr int A_BYTES = BM * KB;                // 16 KiB
constexpr int B_BYTES = BN * KB;                // 32 KiB
constexpr int STAGE_BYTES = A_BYTES + B_BYTES;  // 48 KiB
constexpr int PIPE = STAGES * STAGE_BYTES;      // 192 KiB
constexpr int COLINFO = 2 * BN * (8 + 8);       // gs (int64) + cab (float2), double-buffered
constexpr int ALIGN = 1024;                     // 128B-swizzle atom: 8 rows x 128 B
constexpr int SMEM = ALIGN + PIPE + COLINFO;    // dynamic shared memory requested
constexpr int STATIC_SMEM = 2 * STAGES * 8;     // the mbarriers (static __shared__)
constexpr int ACC = BN / 2;                     // fp32 accumulators per thread (m64n256)
constexpr int BAR_CONSUMERS = 1;                // named barrier of the 256 consumer threads

static_assert(KB == 128, "one stage must be exactly one 128-byte swizzle row");
static_assert(KB % KSTEP == 0, "whole wgmma K steps per stage");
static_assert(A_BYTES % ALIGN == 0 && B_BYTES % ALIGN == 0 && (64 * KB) % ALIGN == 0,
              "stage, operand and warpgroup offsets must keep the 1024-byte swizzle alignment");
static_assert(BM == 2 * 64, "two consumer warpgroups of 64 rows each");
static_assert(BN <= 256 && BM <= 256, "TMA box dimensions are at most 256");
static_assert(BN == CONSUMER_THREADS, "one consumer thread per tile column for the column info");
static_assert(SMEM + STATIC_SMEM <= 227 * 1024, "fits the sm_90 opt-in shared memory");
static_assert(128 * PRODUCER_REGS + CONSUMER_THREADS * CONSUMER_REGS <= 65536,
              "register budget after setmaxnreg");
static_assert(PRODUCER_REGS % 8 == 0 && CONSUMER_REGS % 8 == 0 && PRODUCER_REGS >= 24 &&
                  CONSUMER_REGS <= 256,
              "setmaxnreg counts");
}  // namespace wg

#if MEDS_SM90A_DEVICE
namespace wgd {
using namespace wg;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier ------------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok != 0;
}
__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}
// Waits for the completion of the phase with the given parity. A wait that has not finished
// after 20 s is a bug (a lost arrive or transaction count): trap, so that the launch fails with
// an error instead of hanging the process.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  if (mbar_try_wait(bar, parity)) return;
  const uint64_t t0 = global_timer_ns();
  while (!mbar_try_wait(bar, parity)) {
    if (global_timer_ns() - t0 > 20000000000ull) __trap();
  }
}

// ---- TMA -----------------------------------------------------------------------------------
// 2-D tiled bulk tensor load global -> shared, completion counted in bytes on `bar`.
// c0: element index along K (innermost), c1: row index.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int32_t c0,
                                            int32_t c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void tma_prefetch_desc(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// ---- register reallocation between warpgroups (all warps of a warpgroup execute it) -------
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

// ---- named barriers (consumer warpgroups only; the producer warpgroup never joins) ---------
__device__ __forceinline__ int bar_red_popc(int id, int nthreads, bool pred) {
  int r;
  asm volatile(
      "{\n.reg .pred p;\n"
      "setp.ne.u32 p, %3, 0;\n"
      "bar.red.popc.u32 %0, %1, %2, p;\n}\n"
      : "=r"(r)
      : "r"(id), "r"(nthreads), "r"(static_cast<uint32_t>(pred))
      : "memory");
  return r;
}
__device__ __forceinline__ bool bar_red_and(int id, int nthreads, bool pred) {
  uint32_t r;
  asm volatile(
      "{\n.reg .pred p, q;\n"
      "setp.ne.u32 p, %3, 0;\n"
      "bar.red.and.pred q, %1, %2, p;\n"
      "selp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(r)
      : "r"(id), "r"(nthreads), "r"(static_cast<uint32_t>(pred))
      : "memory");
  return r != 0;
}

// ---- wgmma ---------------------------------------------------------------------------------
// Shared-memory matrix descriptor for a K-major operand stored as rows of 128 bytes with the
// 128-byte swizzle (16-byte chunk c of row r lives at chunk c ^ (r % 8); this is the layout the
// TMA writes with CU_TENSOR_MAP_SWIZZLE_128B), the 8-row swizzle atoms 1024 bytes apart:
//   bits  0-13  start address >> 4
//   bits 16-29  leading-dimension byte offset >> 4: unused for swizzled K-major layouts whose
//               K extent per instruction (32 B) stays inside the 128-byte row; set to 1
//   bits 32-45  stride-dimension byte offset >> 4: 1024 B between consecutive 8-row groups
//   bits 49-51  base offset: 0 (every operand base is 1024-byte aligned)
//   bits 62-63  swizzle mode: 1 = 128-byte swizzle
// K steps inside the row are taken by adding the byte offset (32, 64, 96) to the start address;
// the hardware applies the XOR swizzle on the final address bits, which is consistent with the
// TMA layout because the atom base is 1024-byte aligned.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t saddr) {
  return static_cast<uint64_t>((saddr & 0x3FFFFu) >> 4) | (static_cast<uint64_t>(1) << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) | (static_cast<uint64_t>(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins the accumulator registers after a wgmma_wait so that the compiler cannot move reads of
// them above the wait (the wait does not name them).
__device__ __forceinline__ void fence_acc(float (&d)[ACC]) {
#pragma unroll
  for (int i = 0; i < ACC; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// %0 .. %127: the 128 fp32 accumulator registers of one m64n256 wgmma (generated list).
#define MEDS_WG_ACC_REGS \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
// The matching "+f" operand list for an accumulator array `d` of 128 floats.
#define MEDS_WG_ACC_OPERANDS(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
  "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
  "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
  "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
  "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
  "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
  "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
  "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// d[0..127] += A(64 x k) * B(256 x k)^T, both K-major in shared memory (scale-d = 1: the
// accumulators are zeroed by the caller at the start of each tile).
template <int CT>
__device__ __forceinline__ void wgmma_m64n256(float (&d)[ACC], uint64_t desc_a, uint64_t desc_b) {
  if constexpr (CT == kTF32) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k8.f32.tf32.tf32 {" MEDS_WG_ACC_REGS
        "}, %128, %129, p, 1, 1;\n}\n"
        : MEDS_WG_ACC_OPERANDS(d)
        : "l"(desc_a), "l"(desc_b), "r"(1));
  } else if constexpr (CT == kBF16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" MEDS_WG_ACC_REGS
        "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
        : MEDS_WG_ACC_OPERANDS(d)
        : "l"(desc_a), "l"(desc_b), "r"(1));
  } else {
    static_assert(CT == kF16, "tensor-core compute types only");
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {" MEDS_WG_ACC_REGS
        "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
        : MEDS_WG_ACC_OPERANDS(d)
        : "l"(desc_a), "l"(desc_b), "r"(1));
  }
}

// Column info of one tile, fetched into registers one tile ahead (its global-load latency then
// hides behind the main loop of the current tile).
struct ColFetch {
  int64_t g;    // group of this thread's column, -1 past nm
  float n2;     // squared norm of that memory row
  int64_t ga;   // group of the tile's first column
  int64_t gb;   // group of the tile's last valid column
};

__device__ __forceinline__ ColFetch fetch_cols(const KArgs& p, int64_t tile, int ctid) {
  int64_t tm, tn;
  tile_coords(tile, p.tiles_m, p.tiles_n, tm, tn);
  const int64_t col0 = tn * BN;
  const int64_t c = col0 + ctid;
  ColFetch f;
  f.ga = __ldg(p.groups + col0);
  f.gb = __ldg(p.groups + (min(col0 + BN, p.nm) - 1));
  f.g = -1;
  f.n2 = 0.f;
  if (c < p.nm) {
    f.g = __ldg(p.groups + c);
    f.n2 = __ldg(p.mn2 + c);
  }
  return f;
}
}  // namespace wgd
#endif  // MEDS_SM90A_DEVICE

// The kernel. Grid: min(#tiles, #SMs) persistent CTAs; block: wg::THREADS; dynamic shared
// memory: wg::SMEM. kt_count = ceil(d * element_size / 128) stages per tile.
template <int CT>
__global__ void __launch_bounds__(wg::THREADS, 1)
    group_min_wgmma_kernel(const __grid_constant__ CUtensorMap tmap_a,
                           const __grid_constant__ CUtensorMap tmap_b, const KArgs p,
                           int kt_count) {
#if MEDS_SM90A_DEVICE
  using namespace wgd;
  constexpr int ES = (CT == kTF32) ? 4 : 2;  // bytes per element in shared memory
  static_assert(KB % ES == 0, "whole elements per stage");

  // Static shared memory: only the sm_90a variant has it (the host checks for it).
  __shared__ __align__(8) uint64_t bars[2 * STAGES];  // full[0..S), empty[S..2S)
  extern __shared__ unsigned char dsmem[];

  // 1024-byte aligned base of the stage ring (the SMEM request includes the slack).
  const uint32_t raw = smem_addr(dsmem);
  const uint32_t pipe = (raw + (ALIGN - 1)) & ~static_cast<uint32_t>(ALIGN - 1);
  unsigned char* const pipe_ptr = dsmem + (pipe - raw);
  int64_t* const gs_all = reinterpret_cast<int64_t*>(pipe_ptr + PIPE);           // [2][BN]
  float2* const cab_all = reinterpret_cast<float2*>(pipe_ptr + PIPE + 2 * BN * 8);  // [2][BN]
  const uint32_t full0 = smem_addr(&bars[0]);
  const uint32_t empty0 = smem_addr(&bars[STAGES]);

  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31;
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, CONSUMER_THREADS / 32);
    }
    // Make the initialised barriers visible to the async proxy (TMA complete_tx).
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();  // the last CTA-wide barrier: from here on the roles never meet again

  const int64_t total = p.tiles_m * p.tiles_n;

  if (warp >= CONSUMER_THREADS / 32) {
    // ------------------------------------------------- producer warpgroup (one thread works)
    setmaxnreg_dec<PRODUCER_REGS>();
    if (tid == CONSUMER_THREADS) {
      tma_prefetch_desc(&tmap_a);
      tma_prefetch_desc(&tmap_b);
      uint32_t s = 0, phase = 0;
      for (int64_t tile = blockIdx.x; tile < total; tile += gridDim.x) {
        int64_t tm, tn;
        tile_coords(tile, p.tiles_m, p.tiles_n, tm, tn);
        const int32_t row0 = static_cast<int32_t>(tm * BM);
        const int32_t col0 = static_cast<int32_t>(tn * BN);
        for (int kt = 0; kt < kt_count; ++kt) {
          // Wait until the consumers released this slot (a fresh barrier passes parity 1).
          mbar_wait(empty0 + 8 * s, phase ^ 1u);
          const uint32_t sa = pipe + s * STAGE_BYTES;
          const uint32_t full = full0 + 8 * s;
          // The full box is always counted, also where it is partly out of bounds (zero fill).
          mbar_arrive_expect_tx(full, STAGE_BYTES);
          const int32_t k0 = kt * (KB / ES);
          tma_load_2d(sa, &tmap_a, k0, row0, full);
          tma_load_2d(sa + A_BYTES, &tmap_b, k0, col0, full);
          if (++s == STAGES) {
            s = 0;
            phase ^= 1u;
          }
        }
      }
    }
    return;
  }

  // ------------------------------------------------------------------ consumers (256 threads)
  setmaxnreg_inc<CONSUMER_REGS>();
  const int ctid = tid;            // 0..255: also this thread's column in the column info
  const int wgi = warp >> 2;       // consumer warpgroup: query rows 64*wgi .. 64*wgi+63
  const int wq = warp & 3;         // warp in the warpgroup: rows 16*wq .. 16*wq+15 of those
  const int q = lane & 3, g8 = lane >> 2;
  uint32_t s = 0, phase = 0;
  ColFetch cf;
  if (static_cast<int64_t>(blockIdx.x) < total) cf = fetch_cols(p, blockIdx.x, ctid);

  int buf = 0;
  for (int64_t tile = blockIdx.x; tile < total; tile += gridDim.x, buf ^= 1) {
    int64_t tm, tn;
    tile_coords(tile, p.tiles_m, p.tiles_n, tm, tn);
    const int64_t row0 = tm * BM;

    // Column info of this tile -> shared memory (double-buffered: a thread still in the
    // previous tile's epilogue reads the other buffer; the buffer written here was last read
    // two tiles ago, before every consumer passed the previous tile's barrier below).
    int64_t* const gs = gs_all + buf * BN;
    float2* const cab = cab_all + buf * BN;
    {
      float2 ab = make_float2(0.f, kInf);
      if (cf.g >= 0) {
        if (p.cosine) {
          ab.x = cf.n2 > 0.f ? -1.0f / sqrtf(cf.n2) : 0.f;
          ab.y = 0.f;
        } else {
          ab.x = -2.f;
          ab.y = cf.n2;
        }
      }
      gs[ctid] = cf.g;
      cab[ctid] = ab;
    }
    const int64_t ga = cf.ga, gb = cf.gb;
    const bool valid = cf.g >= 0;
    const bool is_a = valid && cf.g == ga;
    // n_a = number of columns of group ga; "two runs" = the columns of ga are exactly
    // [0, n_a) and every other valid column belongs to gb. Both reductions are barriers of the
    // 256 consumer threads, and they also publish gs/cab.
    const int n_a = bar_red_popc(BAR_CONSUMERS, CONSUMER_THREADS, is_a);
    const bool two_runs =
        bar_red_and(BAR_CONSUMERS, CONSUMER_THREADS, !valid || (is_a ? ctid < n_a : cf.g == gb));

    // Prefetch the next tile's column info (consumed at the top of the next iteration).
    if (tile + gridDim.x < total) cf = fetch_cols(p, tile + gridDim.x, ctid);

    // ---- main loop: kt_count stages, one wgmma group in flight
    float acc[ACC];
#pragma unroll
    for (int i = 0; i < ACC; ++i) acc[i] = 0.f;
    uint32_t prev = 0;
    for (int kt = 0; kt < kt_count; ++kt) {
      mbar_wait(full0 + 8 * s, phase);
      const uint32_t sa = pipe + s * STAGE_BYTES + wgi * (64 * KB);  // this WG's 64 rows of A
      const uint32_t sb = pipe + s * STAGE_BYTES + A_BYTES;          // all 256 rows of B
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < KB / KSTEP; ++kk)
        wgmma_m64n256<CT>(acc, sw128_desc(sa + kk * KSTEP), sw128_desc(sb + kk * KSTEP));
      wgmma_commit();
      if (kt > 0) {
        // The group of the previous stage has completed: release that slot.
        wgmma_wait<1>();
        if (lane == 0) mbar_arrive(empty0 + 8 * prev);
      }
      prev = s;
      if (++s == STAGES) {
        s = 0;
        phase ^= 1u;
      }
    }
    wgmma_wait<0>();
    if (lane == 0) mbar_arrive(empty0 + 8 * prev);
    fence_acc(acc);

    // ---- epilogue. acc[4j + e]: row 64*wgi + 16*wq + g8 + 8*(e >> 1),
    //                             col 8j + 2q + (e & 1),  j = 0..31.
    const float4* const cab4 = reinterpret_cast<const float4*>(cab);  // columns 2x, 2x+1
    const int64_t rbase = row0 + 64 * wgi + 16 * wq + g8;
    if (two_runs) {
      // Columns [0, n_a) are group ga, the other valid columns group gb (gb == ga: one group).
      const bool one = ga == gb;
      float ma[2] = {kInf, kInf}, mb[2] = {kInf, kInf};
      if (one) {
#pragma unroll
        for (int j = 0; j < ACC / 4; ++j) {
          const float4 cb = cab4[4 * j + q];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            ma[h] = fminf(ma[h], fmaf(acc[4 * j + 2 * h], cb.x, cb.y));
            ma[h] = fminf(ma[h], fmaf(acc[4 * j + 2 * h + 1], cb.z, cb.w));
          }
        }
      } else {
#pragma unroll
        for (int j = 0; j < ACC / 4; ++j) {
          const float4 cb = cab4[4 * j + q];
          const int c0 = 8 * j + 2 * q;
          const bool a0 = c0 < n_a, a1 = c0 + 1 < n_a;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float k0 = fmaf(acc[4 * j + 2 * h], cb.x, cb.y);
            const float k1 = fmaf(acc[4 * j + 2 * h + 1], cb.z, cb.w);
            if (a0) ma[h] = fminf(ma[h], k0); else mb[h] = fminf(mb[h], k0);
            if (a1) ma[h] = fminf(ma[h], k1); else mb[h] = fminf(mb[h], k1);
          }
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int o = 1; o < 4; o <<= 1) {
          ma[h] = fminf(ma[h], __shfl_xor_sync(0xffffffffu, ma[h], o));
          mb[h] = fminf(mb[h], __shfl_xor_sync(0xffffffffu, mb[h], o));
        }
        const int64_t r = rbase + 8 * h;
        if (q == 0 && r < p.nq) {
          const RowInfo ri = row_info(p, r);
          uint32_t* const orow = p.out + r * p.G;
          if (ma[h] < kInf && ri.qg != ga) flush(orow, ga, ma[h], ri);
          if (!one && mb[h] < kInf && ri.qg != gb) flush(orow, gb, mb[h], ri);
        }
      }
    } else {
      // General group layout: each thread scans its own 64 columns of each of its two rows in
      // increasing column order and flushes one atomic per run of equal group ids.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t r = rbase + 8 * h;
        if (r < p.nq) {
          const RowInfo ri = row_info(p, r);
          uint32_t* const orow = p.out + r * p.G;
          int64_t cur_g = -1;
          float cur = kInf;
#pragma unroll
          for (int j = 0; j < ACC / 4; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int c = 8 * j + 2 * q + e;
              const int64_t g = gs[c];
              if (g < 0 || g == ri.qg) continue;
              const float2 ab = cab[c];
              const float key = fmaf(acc[4 * j + 2 * h + e], ab.x, ab.y);
              if (g == cur_g) {
                cur = fminf(cur, key);
              } else {
                if (cur_g >= 0) flush(orow, cur_g, cur, ri);
                cur_g = g;
                cur = key;
              }
            }
          }
          if (cur_g >= 0) flush(orow, cur_g, cur, ri);
        }
      }
    }
  }
#else
  // Not the sm_90a variant: never launched (the host checks the variant before dispatching).
  __trap();
#endif
}

// ------------------------------------------------------------------------------------------
// Host side of the wgmma kernel.

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
  MEDS_CUDA_CHECK_LAUNCH("group_min_wgmma_kernel");
}

}  // namespace
}  // namespace meds
