// Hopper (sm_90a) group_min kernel, variant v3 (MEDS_CUDA_WGMMA=v3): the v1 kernel of
// group_min_cuda_sm90.cuh (same 128 x 256 tile, 384 threads, TMA ring, wgmma main loop and
// epilogue, all shared with it) run in thread-block clusters of two CTAs along M that share
// the memory (B) operand through TMA multicast, so that each B stage leaves L2 once per
// cluster instead of once per CTA (v1 pulls ~6.8 TB/s from L2 at tf32; this halves the B
// part of that traffic: per CTA and stage 16 KiB of A + 16 KiB of B instead of 16 + 32 KiB).
// Included by group_min_cuda.cu right after group_min_cuda_sm90.cuh.
//
// Protocol (CTA rank r = 0, 1 of a cluster; both CTAs have the same shared-memory layout):
//   * Scheduler: work items are pairs of M tiles with one N tile, (pm, tn) -> M tiles 2pm and
//     2pm + 1, in the grouped order of tile_coords over (ceil(tiles_m / 2), tiles_n); cluster c
//     takes items c, c + #clusters, ... and CTA r the M tile 2pm + r. With an odd tiles_m the
//     last pair's second tile is out of range: that CTA runs the same loop (it must: its peer
//     multicasts into it and waits for its releases), it loads the A tile of the last real
//     M tile (harmless: only read by its own wgmmas) and its epilogue writes nothing (its row
//     base is tiles_m * 128 >= nq, and rows >= nq are never flushed).
//   * Loads: per stage, CTA r loads its own A box (128 rows) into its own slot and rows
//     [128r, 128r + 128) of the B tile (a 128-row box) multicast into the same slot of both
//     CTAs. Each CTA's full[s] therefore receives A_BYTES + 2 x B_BYTES/2 = STAGE_BYTES,
//     exactly what its own producer announces with arrive.expect_tx (the peer's bytes may land
//     before that announcement: the transaction count may go transiently negative, the phase
//     cannot complete before the local arrive).
//   * Release: empty[s] of each CTA counts 16 arrives, one per consumer warp of BOTH CTAs
//     (each consumer warp arrives on its own CTA's barrier and, through mapa, on the peer's).
//     A producer overwrites slot s (its A locally, its B half in both CTAs) only after both
//     CTAs' consumers released it. Both CTAs run the same item sequence with the same
//     kt_count, so their slot / parity sequences are identical; an arrive for use k + 1 of a
//     slot can only follow the completion of phase k (it needs data that was loaded after it).
//   * Cluster barrier after the barrier initialisation (no multicast or remote arrive may
//     reach a barrier that is not initialised yet) and before exit (no CTA may exit while its
//     peer can still write into its shared memory or arrive on its barriers).
//   * The mbarrier waits keep v1's 20 s timeout trap.
#pragma once

namespace wg3 {
constexpr int CLUSTER = 2;                     // CTAs per cluster, along M
constexpr int B_HALF_ROWS = wg::BN / CLUSTER;  // rows of the B box each CTA loads (128)
constexpr int B_HALF_BYTES = B_HALF_ROWS * wg::KB;
constexpr int EMPTY_ARRIVES = CLUSTER * (wg::CONSUMER_THREADS / 32);  // 16 consumer warps
static_assert(B_HALF_BYTES % wg::ALIGN == 0, "B halves keep the 1024-byte swizzle alignment");
static_assert(wg::A_BYTES + CLUSTER * B_HALF_BYTES == wg::STAGE_BYTES, "bytes per stage");
}  // namespace wg3

#if MEDS_SM90A_DEVICE
namespace wgd {
__device__ __forceinline__ uint32_t cluster_ctarank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_id_x() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%clusterid.x;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t nclusters_x() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%nclusterid.x;\n" : "=r"(r));
  return r;
}
// All threads of all CTAs of the cluster (every thread must execute it, warps converged).
__device__ __forceinline__ void cluster_sync_all() {
  asm volatile(
      "barrier.cluster.arrive.release.aligned;\n"
      "barrier.cluster.wait.acquire.aligned;\n" ::
          : "memory");
}
// Arrive on the mbarrier at the same shared-memory offset in CTA `rank` of the cluster.
__device__ __forceinline__ void mbar_arrive_cluster(uint32_t bar, uint32_t rank) {
  asm volatile(
      "{\n.reg .b32 ra;\n"
      "mapa.shared::cluster.u32 ra, %0, %1;\n"
      "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [ra];\n}\n" ::"r"(bar),
      "r"(rank)
      : "memory");
}
// 2-D tiled TMA load multicast to the CTAs in cta_mask: the box lands at offset dst and
// signals complete_tx on the mbarrier at offset bar of each of those CTAs.
__device__ __forceinline__ void tma_load_2d_multicast(uint32_t dst, const CUtensorMap* map,
                                                      int32_t c0, int32_t c1, uint32_t bar,
                                                      uint16_t cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      ".multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar), "h"(cta_mask)
      : "memory");
}
}  // namespace wgd
#endif  // MEDS_SM90A_DEVICE

// The kernel. Launched with cluster dimensions (2, 1, 1); grid: 2 x min(#pairs, max active
// clusters) persistent CTAs; block: wg::THREADS; dynamic shared memory: wg::SMEM. tmap_b has
// boxes of B_HALF_ROWS rows (tmap_a as v1: BM rows).
template <int CT>
__global__ void __launch_bounds__(wg::THREADS, 1)
    group_min_wgmma_cluster_kernel(const __grid_constant__ CUtensorMap tmap_a,
                                   const __grid_constant__ CUtensorMap tmap_b, const KArgs p,
                                   int kt_count) {
#if MEDS_SM90A_DEVICE
  using namespace wgd;
  using namespace wg3;
  constexpr int ES = (CT == kTF32) ? 4 : 2;  // bytes per element in shared memory
  static_assert(KB % ES == 0, "whole elements per stage");

  __shared__ __align__(8) uint64_t bars[2 * STAGES];  // full[0..S), empty[S..2S)
  extern __shared__ unsigned char dsmem[];

  const Ring ring = ring_layout(dsmem);
  const uint32_t full0 = smem_addr(&bars[0]);
  const uint32_t empty0 = smem_addr(&bars[STAGES]);

  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31;
  const uint32_t rank = cluster_ctarank();
  const int64_t cid = cluster_id_x(), ncl = nclusters_x();
  if (tid == 0) init_ring_barriers(full0, empty0, EMPTY_ARRIVES);
  cluster_sync_all();  // both CTAs' barriers are initialised before anyone uses them

  const int64_t pairs_m = (p.tiles_m + 1) / 2;
  const int64_t total = pairs_m * p.tiles_n;

  if (warp >= CONSUMER_THREADS / 32) {
    // ------------------------------------------------- producer warpgroup (one thread works)
    setmaxnreg_dec<PRODUCER_REGS>();
    if (tid == CONSUMER_THREADS) {
      tma_prefetch_desc(&tmap_a);
      tma_prefetch_desc(&tmap_b);
      uint32_t s = 0, phase = 0;
      for (int64_t item = cid; item < total; item += ncl) {
        int64_t pm, tn;
        tile_coords(item, pairs_m, p.tiles_n, pm, tn);
        // The missing tile of an odd pair loads the last real tile's A (never out of range,
        // so no reliance on how TMA counts a box that is entirely out of bounds); its
        // consumers still use row0 = tiles_m * BM >= nq, so they write nothing.
        const int32_t row0 =
            static_cast<int32_t>(min(2 * pm + static_cast<int64_t>(rank), p.tiles_m - 1) * BM);
        const int32_t brow = static_cast<int32_t>(tn * BN + rank * B_HALF_ROWS);
        for (int kt = 0; kt < kt_count; ++kt) {
          // Wait until the consumers of both CTAs released this slot.
          mbar_wait(empty0 + 8 * s, phase ^ 1u);
          const uint32_t sa = ring.pipe + s * STAGE_BYTES;
          const uint32_t full = full0 + 8 * s;
          // Own A box + both B halves (own and the peer's multicast), whole boxes always.
          mbar_arrive_expect_tx(full, STAGE_BYTES);
          const int32_t k0 = kt * (KB / ES);
          tma_load_2d(sa, &tmap_a, k0, row0, full);
          tma_load_2d_multicast(sa + A_BYTES + rank * B_HALF_BYTES, &tmap_b, k0, brow, full,
                                static_cast<uint16_t>((1u << CLUSTER) - 1u));
          if (++s == STAGES) {
            s = 0;
            phase ^= 1u;
          }
        }
      }
    }
  } else {
    // ---------------------------------------------------------------- consumers (256 threads)
    setmaxnreg_inc<CONSUMER_REGS>();
    const int ctid = tid;       // 0..255: also this thread's column in the column info
    const int wgi = warp >> 2;  // consumer warpgroup: query rows 64*wgi .. 64*wgi+63
    const int wq = warp & 3;    // warp in the warpgroup: rows 16*wq .. 16*wq+15 of those
    auto item_tn = [&](int64_t item) {
      int64_t pm, tn;
      tile_coords(item, pairs_m, p.tiles_n, pm, tn);
      return tn;
    };
    uint32_t s = 0, phase = 0;
    ColFetch cf;
    if (cid < total) cf = fetch_cols_tn(p, item_tn(cid), ctid);

    int buf = 0;
    for (int64_t item = cid; item < total; item += ncl, buf ^= 1) {
      int64_t pm, tn;
      tile_coords(item, pairs_m, p.tiles_n, pm, tn);
      const int64_t row0 = (2 * pm + rank) * BM;  // >= nq for the missing tile of an odd pair

      int64_t* const gs = ring.gs_all + buf * BN;
      float2* const cab = ring.cab_all + buf * BN;
      const TileCols tc = publish_cols(p, cf, gs, cab, ctid);

      if (item + ncl < total) cf = fetch_cols_tn(p, item_tn(item + ncl), ctid);

      float acc[ACC];
      tile_mainloop<CT>(acc, ring.pipe, full0, s, phase, kt_count, wgi, [&](uint32_t slot) {
        if (lane == 0) {
#pragma unroll
          for (uint32_t r = 0; r < CLUSTER; ++r) mbar_arrive_cluster(empty0 + 8 * slot, r);
        }
      });

      tile_epilogue(p, acc, gs, cab, tc, row0, wgi, wq, lane);
    }
  }
  __syncwarp();
  // No CTA leaves while its peer may still multicast into it or arrive on its barriers.
  cluster_sync_all();
#else
  // Not the sm_90a variant: never launched (the host checks the variant before dispatching).
  __trap();
#endif
}
