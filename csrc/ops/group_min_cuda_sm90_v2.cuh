// Hopper (sm_90a) wgmma kernel of group_min, variant 2 (MEDS_CUDA_WGMMA=v2; v1 in
// group_min_cuda_sm90.cuh stays the default). Included by group_min_cuda.cu right after
// group_min_cuda_sm90.cuh, whose constants (wg::) and device helpers (wgd::) it uses.
//
// Same tile (128 x 256, two consumer warpgroups of m64n256 sharing the B stage), same TMA +
// 4-stage mbarrier ring, same producer, same epilogue contract and numerics as v1. What
// differs is only where the consumers wait, so that the tensor cores idle less while the
// epilogues run (v1: both warpgroups finish their main loops together, run their epilogues
// together, and meet at a 256-thread barrier before the next tile, so the tensor cores idle for
// the whole epilogue plus the latency of the row-info loads at every tile):
//   1. The two consumer warpgroups are decoupled: each keeps its own copy of the tile's column
//      info (double-buffered) and its own named barriers (128 threads) for the one-/two-group
//      test. They then meet only through the stage ring (a slot is refilled when all 8
//      consumer warps released it) and through the lag barrier below.
//   2. Lag: at every tile, warpgroup 1 starts its main loop only once warpgroup 0 has issued
//      `lag` stages of that tile (named barrier BAR_LAG: warpgroup 0 arrives, warpgroup 1
//      syncs). Warpgroup 1 thus still has wgmma work queued when warpgroup 0 enters its
//      epilogue, and warpgroup 0 already runs the next tile's first stages while warpgroup 1
//      is in its epilogue: the epilogues overlap the other warpgroup's MMAs instead of each
//      other. The ring bounds the useful lag (a slot is only refilled after the lagging
//      warpgroup released it), so lag < STAGES. Deadlock- and overrun-free only when
//      kt_count >= STAGES (then warpgroup 0's arrive for tile i+1 needs a slot that
//      warpgroup 1 releases after its sync of tile i, so arrivals never pile up on the
//      barrier); with fewer stages per tile, or lag == 0, the lag barrier is not used at all.
//   3. Row info (query norm, query group) of the thread's two rows is loaded before the main
//      loop instead of after it (its global-load latency was on the critical path).
//   4. Cheaper one-/two-group epilogue: the split column n_a is warpgroup-uniform, so each
//      8-column block j is all-group-A, all-group-B or (one block at most) mixed; a uniform
//      branch per block leaves 4 FFMA + 4 FMNMX per block in the common case, and one code
//      path serves one-group and two-group tiles.
#pragma once

namespace wg2 {
constexpr int WG_THREADS = 128;
// gs (int64) + cab (float2) per column, per consumer warpgroup, double-buffered.
constexpr int COLINFO_V2 = 2 * 2 * wg::BN * (8 + 8);
constexpr int SMEM_V2 = wg::ALIGN + wg::PIPE + COLINFO_V2;
constexpr int BAR_COLS0 = 1;  // named barriers 1 and 2: column info of warpgroup 0 / 1
constexpr int BAR_LAG = 3;    // warpgroup 0 arrives, warpgroup 1 syncs (256 threads)
constexpr int MAX_LAG = wg::STAGES - 1;
constexpr int DEFAULT_LAG = 2;
static_assert(SMEM_V2 + wg::STATIC_SMEM <= 227 * 1024, "fits the sm_90 opt-in shared memory");
static_assert(wg::BN == 2 * WG_THREADS, "two columns per consumer thread for the column info");
static_assert(DEFAULT_LAG >= 0 && DEFAULT_LAG <= MAX_LAG, "lag bounded by the ring");
}  // namespace wg2

#if MEDS_SM90A_DEVICE
namespace wgd2 {
using namespace wgd;

__device__ __forceinline__ void named_bar_arrive(int id, int nthreads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(nthreads) : "memory");
}
__device__ __forceinline__ void named_bar_sync(int id, int nthreads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(nthreads) : "memory");
}

// Column info of one tile for one consumer thread of a warpgroup: columns t and t + 128.
struct ColFetch2 {
  int64_t g0, g1;  // groups, -1 past nm
  float n0, n1;    // squared norms
  int64_t ga, gb;  // group of the tile's first / last valid column
};

__device__ __forceinline__ ColFetch2 fetch_cols2(const KArgs& p, int64_t tile, int t) {
  int64_t tm, tn;
  tile_coords(tile, p.tiles_m, p.tiles_n, tm, tn);
  const int64_t col0 = tn * wg::BN;
  ColFetch2 f;
  f.ga = __ldg(p.groups + col0);
  f.gb = __ldg(p.groups + (min(col0 + wg::BN, p.nm) - 1));
  f.g0 = f.g1 = -1;
  f.n0 = f.n1 = 0.f;
  const int64_t c0 = col0 + t, c1 = col0 + t + wg2::WG_THREADS;
  if (c0 < p.nm) {
    f.g0 = __ldg(p.groups + c0);
    f.n0 = __ldg(p.mn2 + c0);
  }
  if (c1 < p.nm) {
    f.g1 = __ldg(p.groups + c1);
    f.n1 = __ldg(p.mn2 + c1);
  }
  return f;
}

// key = a * dot + b (see load_col_info in group_min_cuda.cu).
__device__ __forceinline__ float2 col_ab(const KArgs& p, int64_t g, float n2) {
  float2 ab = make_float2(0.f, kInf);
  if (g >= 0) {
    if (p.cosine) {
      ab.x = n2 > 0.f ? -1.0f / sqrtf(n2) : 0.f;
      ab.y = 0.f;
    } else {
      ab.x = -2.f;
      ab.y = n2;
    }
  }
  return ab;
}
}  // namespace wgd2
#endif  // MEDS_SM90A_DEVICE

// Grid: min(#tiles, #SMs) persistent CTAs; block: wg::THREADS; dynamic shared memory:
// wg2::SMEM_V2. kt_count = ceil(d * element_size / 128) stages per tile; lag in [0, MAX_LAG].
template <int CT>
__global__ void __launch_bounds__(wg::THREADS, 1)
    group_min_wgmma_v2_kernel(const __grid_constant__ CUtensorMap tmap_a,
                              const __grid_constant__ CUtensorMap tmap_b, const KArgs p,
                              int kt_count, int lag) {
#if MEDS_SM90A_DEVICE
  using namespace wgd2;
  using wg::A_BYTES;
  using wg::ACC;
  using wg::ALIGN;
  using wg::BM;
  using wg::BN;
  using wg::CONSUMER_THREADS;
  using wg::KB;
  using wg::KSTEP;
  using wg::PIPE;
  using wg::STAGE_BYTES;
  using wg::STAGES;
  using wg2::WG_THREADS;
  constexpr int ES = (CT == kTF32) ? 4 : 2;  // bytes per element in shared memory
  static_assert(KB % ES == 0, "whole elements per stage");

  // Static shared memory: only the sm_90a variant has it (the host checks for it).
  __shared__ __align__(8) uint64_t bars[2 * STAGES];  // full[0..S), empty[S..2S)
  extern __shared__ unsigned char dsmem[];

  const uint32_t raw = smem_addr(dsmem);
  const uint32_t pipe = (raw + (ALIGN - 1)) & ~static_cast<uint32_t>(ALIGN - 1);
  unsigned char* const pipe_ptr = dsmem + (pipe - raw);
  int64_t* const gs_all = reinterpret_cast<int64_t*>(pipe_ptr + PIPE);              // [2][2][BN]
  float2* const cab_all = reinterpret_cast<float2*>(pipe_ptr + PIPE + 4 * BN * 8);  // [2][2][BN]
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
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();  // the last CTA-wide barrier

  const int64_t total = p.tiles_m * p.tiles_n;

  if (warp >= CONSUMER_THREADS / 32) {
    // ------------------------------------------------- producer warpgroup (as in v1)
    setmaxnreg_dec<wg::PRODUCER_REGS>();
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
          mbar_wait(empty0 + 8 * s, phase ^ 1u);
          const uint32_t sa = pipe + s * STAGE_BYTES;
          const uint32_t full = full0 + 8 * s;
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
  setmaxnreg_inc<wg::CONSUMER_REGS>();
  const int wgi = warp >> 2;          // consumer warpgroup: query rows 64*wgi .. 64*wgi+63
  const int t = tid & (WG_THREADS - 1);  // thread in the warpgroup: columns t and t + 128
  const int wq = warp & 3;            // warp in the warpgroup: rows 16*wq .. 16*wq+15
  const int q = lane & 3, g8 = lane >> 2;
  const int bar_cols = wg2::BAR_COLS0 + wgi;
  // Lag barrier (see the header comment): warpgroup-uniform, identical in both warpgroups.
  const bool lag_on = lag > 0 && kt_count >= STAGES;
  const int lag_at = (lag < kt_count ? lag : kt_count) - 1;  // warpgroup 0 arrives after it
  uint32_t s = 0, phase = 0;
  ColFetch2 cf;
  if (static_cast<int64_t>(blockIdx.x) < total) cf = fetch_cols2(p, blockIdx.x, t);

  int buf = 0;
  for (int64_t tile = blockIdx.x; tile < total; tile += gridDim.x, buf ^= 1) {
    int64_t tm, tn;
    tile_coords(tile, p.tiles_m, p.tiles_n, tm, tn);
    const int64_t row0 = tm * BM;

    // Column info of this tile -> this warpgroup's shared-memory copy (double-buffered: the
    // buffer written here was last read two tiles ago, before every thread of this warpgroup
    // passed the previous tile's barriers below).
    int64_t* const gs = gs_all + (2 * wgi + buf) * BN;
    float2* const cab = cab_all + (2 * wgi + buf) * BN;
    gs[t] = cf.g0;
    gs[t + WG_THREADS] = cf.g1;
    cab[t] = col_ab(p, cf.g0, cf.n0);
    cab[t + WG_THREADS] = col_ab(p, cf.g1, cf.n1);
    const int64_t ga = cf.ga, gb = cf.gb;
    const bool val0 = cf.g0 >= 0, val1 = cf.g1 >= 0;
    const bool a0 = val0 && cf.g0 == ga, a1 = val1 && cf.g1 == ga;
    // n_a = number of columns of group ga; "two runs" = the columns of ga are exactly [0, n_a)
    // and every other valid column belongs to gb. Barriers of this warpgroup's 128 threads;
    // they also publish gs/cab to the warpgroup.
    const int n_a = bar_red_popc(bar_cols, WG_THREADS, a0) + bar_red_popc(bar_cols, WG_THREADS, a1);
    const bool ok0 = !val0 || (a0 ? t < n_a : cf.g0 == gb);
    const bool ok1 = !val1 || (a1 ? t + WG_THREADS < n_a : cf.g1 == gb);
    const bool two_runs = bar_red_and(bar_cols, WG_THREADS, ok0 && ok1);

    // Row info of this thread's two rows, loaded now: the main loop hides the latency.
    const int64_t rbase = row0 + 64 * wgi + 16 * wq + g8;
    RowInfo ri[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = rbase + 8 * h;
      if (r < p.nq) {
        ri[h] = row_info(p, r);
      } else {
        ri[h].qa = 0.f;
        ri[h].qb = 0.f;
        ri[h].qg = kNoGroup;
      }
    }

    // Prefetch the next tile's column info (consumed at the top of the next iteration).
    if (tile + gridDim.x < total) cf = fetch_cols2(p, tile + gridDim.x, t);

    // Warpgroup 1 waits until warpgroup 0 has issued `lag` stages of this tile.
    if (lag_on && wgi == 1) named_bar_sync(wg2::BAR_LAG, CONSUMER_THREADS);

    // ---- main loop (as in v1): kt_count stages, one wgmma group in flight
    float acc[ACC];
#pragma unroll
    for (int i = 0; i < ACC; ++i) acc[i] = 0.f;
    uint32_t prev = 0;
    for (int kt = 0; kt < kt_count; ++kt) {
      mbar_wait(full0 + 8 * s, phase);
      const uint32_t sa = pipe + s * STAGE_BYTES + wgi * (64 * KB);
      const uint32_t sb = pipe + s * STAGE_BYTES + A_BYTES;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < KB / KSTEP; ++kk)
        wgmma_m64n256<CT>(acc, sw128_desc(sa + kk * KSTEP), sw128_desc(sb + kk * KSTEP));
      wgmma_commit();
      if (lag_on && wgi == 0 && kt == lag_at) named_bar_arrive(wg2::BAR_LAG, CONSUMER_THREADS);
      if (kt > 0) {
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
    if (two_runs) {
      // Columns [0, n_a) are group ga, the other valid columns group gb (gb == ga: one group,
      // then every valid column is below n_a); padding columns have key +inf on either side.
      float ma[2] = {kInf, kInf}, mb[2] = {kInf, kInf};
#pragma unroll
      for (int j = 0; j < ACC / 4; ++j) {
        const float4 cb = cab4[4 * j + q];
        float k0[2], k1[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          k0[h] = fmaf(acc[4 * j + 2 * h], cb.x, cb.y);
          k1[h] = fmaf(acc[4 * j + 2 * h + 1], cb.z, cb.w);
        }
        if (8 * j + 8 <= n_a) {  // warpgroup-uniform
#pragma unroll
          for (int h = 0; h < 2; ++h) ma[h] = fminf(ma[h], fminf(k0[h], k1[h]));
        } else if (8 * j >= n_a) {
#pragma unroll
          for (int h = 0; h < 2; ++h) mb[h] = fminf(mb[h], fminf(k0[h], k1[h]));
        } else {
          const int c0 = 8 * j + 2 * q;
          const bool in0 = c0 < n_a, in1 = c0 + 1 < n_a;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            if (in0) ma[h] = fminf(ma[h], k0[h]); else mb[h] = fminf(mb[h], k0[h]);
            if (in1) ma[h] = fminf(ma[h], k1[h]); else mb[h] = fminf(mb[h], k1[h]);
          }
        }
      }
      const bool one = ga == gb;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int o = 1; o < 4; o <<= 1) {
          ma[h] = fminf(ma[h], __shfl_xor_sync(0xffffffffu, ma[h], o));
          mb[h] = fminf(mb[h], __shfl_xor_sync(0xffffffffu, mb[h], o));
        }
        const int64_t r = rbase + 8 * h;
        if (q == 0 && r < p.nq) {
          uint32_t* const orow = p.out + r * p.G;
          if (ma[h] < kInf && ri[h].qg != ga) flush(orow, ga, ma[h], ri[h]);
          if (!one && mb[h] < kInf && ri[h].qg != gb) flush(orow, gb, mb[h], ri[h]);
        }
      }
    } else {
      // General group layout (as in v1): each thread scans its own 64 columns of each of its
      // two rows in increasing column order and flushes one atomic per run of equal group ids.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t r = rbase + 8 * h;
        if (r < p.nq) {
          uint32_t* const orow = p.out + r * p.G;
          int64_t cur_g = -1;
          float cur = kInf;
#pragma unroll
          for (int j = 0; j < ACC / 4; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int c = 8 * j + 2 * q + e;
              const int64_t g = gs[c];
              if (g < 0 || g == ri[h].qg) continue;
              const float2 ab = cab[c];
              const float key = fmaf(acc[4 * j + 2 * h + e], ab.x, ab.y);
              if (g == cur_g) {
                cur = fminf(cur, key);
              } else {
                if (cur_g >= 0) flush(orow, cur_g, cur, ri[h]);
                cur_g = g;
                cur = key;
              }
            }
          }
          if (cur_g >= 0) flush(orow, cur_g, cur, ri[h]);
        }
      }
    }
  }
#else
  __trap();
#endif
}
