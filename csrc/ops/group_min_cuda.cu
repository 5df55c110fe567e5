// CUDA implementation of group_min (contract: ops/group_min.h): the host side. plan() makes
// every launch decision of a call; group_min_distance_cuda() carries the plan out.
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
//      (clamped >= 0, as uint bits) into out[q, g]. One of:
//        - simt  (group_min_cuda_simt.cuh): fp32 precision, and every precision below sm_80.
//        - mma   (group_min_cuda_mma.cuh): tf32 / bf16 / fp16 through mma.sync on sm_80+.
//        - wgmma (group_min_cuda_wgmma.cuh): the same precisions on Hopper (cc 9.0, only when
//          the sm_90a code is compiled in and loaded): wgmma + TMA, warp-specialised.
//      The environment variable MEDS_CUDA_TC=auto|mma|wgmma (read at every call; unset =
//      auto) chooses between the two tensor-core kernels: auto uses the wgmma kernel where
//      it can run and mma.sync elsewhere, mma always mma.sync, wgmma always wgmma (a call it
//      cannot run fails). cuda_last_group_min_kernel() reports which kernel the latest call
//      launched.
//      Epilogue (group_min_cuda_common.cuh): when every column of the tile belongs to one
//      group (the normal case: a group is one image's ~784 contiguous patches) each thread
//      reduces its registers, a few warp shuffles finish the row minimum, one atomic per row
//      and warp. Otherwise the dot tile is staged through shared memory and each thread scans
//      a segment of one row, flushing one atomic per run of equal group ids (correct for any
//      group order).
//   4. finalize_kernel: 0xFFFFFFFF (no eligible row) -> NaN; sqrt for the l2 metric.
#ifndef MEDS_WITH_CUDA
#define MEDS_WITH_CUDA 1  // this file is only ever compiled into a CUDA build
#endif

#include <cuda.h>
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
// The kernels: one translation unit, so one fatbinary (see group_min_cuda_common.cuh).
#include "ops/group_min_cuda_common.cuh"
#include "ops/group_min_cuda_mma.cuh"
#include "ops/group_min_cuda_passes.cuh"
#include "ops/group_min_cuda_simt.cuh"
#include "ops/group_min_cuda_wgmma.cuh"

namespace meds {
namespace {

// ------------------------------------------------------------------------------------------
// Device and scratch memory.
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

// ------------------------------------------------------------------------------------------
// Kernel choice.
// The fused kernel of a call (also what cuda_last_group_min_kernel() reports).
enum class Kernel : int { None = 0, Simt = 1, Mma = 2, Wgmma = 3 };
std::atomic<int> g_last_kernel{static_cast<int>(Kernel::None)};

// Every launch decision of one call.
struct Plan {
  Kernel kernel = Kernel::None;  // None: no memory rows, only the memset and finalize passes
  int ct = kF32;                 // compute type
  int64_t es = 4;                // bytes per element of the compute storage type
  int64_t pitch = 0;             // row pitch (elements) of the packed copies
  bool pack_q = false, pack_m = false;
  int64_t tiles_m = 0, tiles_n = 0;
  int grid = 1;
  int kt_count = 0;  // wgmma: 128-byte K stages per tile
  // Workspace layout (bytes): squared norms of queries and memory, then the packed copies.
  size_t off_qn = 0, off_mn = 0, off_qp = 0, off_mp = 0, bytes = 0;
};

// Decides the compute type, the fused kernel, which operands get packed, the workspace layout
// and the grid. `wgmma_refused` non-empty: the wgmma kernel was chosen before but cannot run
// for this call (the driver refused its tensor maps), the reason.
Plan plan(const GroupMinArgs& a, TcMode mode, const std::string& wgmma_refused) {
  Plan p;
  if (a.nm == 0) return p;
  // Compute type: tensor cores on sm_80+, else exact fp32. TF32 on 16-bit inputs uses the
  // input's own tensor-core format (products of 16-bit values are exact in fp32).
  int major = 0, smem_optin = 0;
  MEDS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, a.device));
  MEDS_CUDA_CHECK(
      cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, a.device));
  if (a.precision != Precision::Fp32 && major >= 8 && smem_optin >= tc::SMEM) {
    if (a.dtype == DType::Float16) {
      p.ct = a.precision == Precision::BF16 ? kBF16 : kF16;
    } else if (a.dtype == DType::BFloat16) {
      p.ct = a.precision == Precision::FP16 ? kF16 : kBF16;
    } else {
      p.ct = a.precision == Precision::TF32 ? kTF32 : a.precision == Precision::BF16 ? kBF16 : kF16;
    }
  }
  p.es = (p.ct == kF32 || p.ct == kTF32) ? 4 : 2;
  // Hopper wgmma kernel? Only for tensor-core compute types, when MEDS_CUDA_TC allows it, the
  // device is cc 9.0, the loaded binary holds the real sm_90a kernel and the sizes fit the
  // TMA's 32-bit coordinates. Anything else: the mma.sync kernel, or an error when
  // MEDS_CUDA_TC=wgmma asks for wgmma.
  std::string why_not_wg;  // empty: the wgmma kernel can run this call
  if (p.ct == kF32) {
    if (mode == TcMode::Wgmma && a.precision != Precision::Fp32) {  // only for the message
      why_not_wg = wgmma_unavailable(a.device, kTF32);
      if (why_not_wg.empty()) why_not_wg = "the device runs no tensor-core kernel";
    }
  } else if (!wgmma_refused.empty()) {
    why_not_wg = wgmma_refused;
  } else if (mode != TcMode::Mma) {
    const int64_t kLim = (int64_t{1} << 31) - 1024;
    why_not_wg = a.nq < kLim && a.nm < kLim && a.d < kLim / 4
                     ? wgmma_unavailable(a.device, p.ct)
                     : "the sizes exceed the 32-bit coordinates of its tensor maps";
  }
  const bool use_wg = p.ct != kF32 && mode != TcMode::Mma && why_not_wg.empty();
  if (mode == TcMode::Wgmma && a.precision != Precision::Fp32 && !use_wg) {
    throw std::runtime_error(
        "group_min_distance: MEDS_CUDA_TC=wgmma, but the wgmma kernel cannot run this call on "
        "cuda:" + std::to_string(a.device) + ": " + why_not_wg +
        " (unset MEDS_CUDA_TC or set it to 'auto' or 'mma')");
  }
  p.kernel = p.ct == kF32 ? Kernel::Simt : use_wg ? Kernel::Wgmma : Kernel::Mma;

  const DType native =
      p.es == 4 ? DType::Float32 : (p.ct == kBF16 ? DType::BFloat16 : DType::Float16);
  const int64_t per16 = 16 / p.es;
  p.pitch = (a.d + per16 - 1) / per16 * per16;  // 16-byte rows
  auto usable = [&](const void* ptr, int64_t stride) {
    return a.dtype == native && reinterpret_cast<uintptr_t>(ptr) % 16 == 0 &&
           (stride * p.es) % 16 == 0 && (!use_wg || stride >= a.d);  // TMA: no overlapping rows
  };
  // The wgmma kernel reads tf32 operands straight from shared memory (the hardware would
  // truncate the fp32 mantissa), so for it TF32 operands are always packed, rounded to tf32
  // by the prep pass exactly like the cvt.rna of the mma.sync kernel.
  const bool round_tf32 = use_wg && p.ct == kTF32;
  p.pack_q = round_tf32 || !usable(a.queries, a.query_row_stride);
  p.pack_m = round_tf32 || !usable(a.memory, a.memory_row_stride);

  size_t off = 0;
  p.off_qn = off;
  off = align_up(off + static_cast<size_t>(a.nq) * 4, 256);
  p.off_mn = off;
  off = align_up(off + static_cast<size_t>(a.nm) * 4, 256);
  p.off_qp = off;
  if (p.pack_q) off = align_up(off + static_cast<size_t>(a.nq * p.pitch * p.es), 256);
  p.off_mp = off;
  if (p.pack_m) off = align_up(off + static_cast<size_t>(a.nm * p.pitch * p.es), 256);
  p.bytes = off;

  const int64_t bm = p.kernel == Kernel::Simt ? simt::BM : use_wg ? wg::BM : tc::BM;
  const int64_t bn = p.kernel == Kernel::Simt ? simt::BN : use_wg ? wg::BN : tc::BN;
  p.tiles_m = (a.nq + bm - 1) / bm;
  p.tiles_n = (a.nm + bn - 1) / bn;
  const int64_t tiles = p.tiles_m * p.tiles_n;
  if (use_wg) {
    // Persistent: one CTA per SM (the kernel needs ~200 KiB of shared memory).
    int sms = 0;
    MEDS_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, a.device));
    p.grid = grid_for(tiles, 1, std::max(sms, 1));
    p.kt_count = static_cast<int>((a.d * p.es + wg::KB - 1) / wg::KB);
  } else {
    p.grid = grid_for(tiles, 1, INT_MAX);
  }
  return p;
}

// Runs the prep passes and the fused kernel of `p` (p.kernel != None). Returns false, having
// launched nothing, when the driver refuses the tensor maps of the wgmma kernel.
bool run_plan(const GroupMinArgs& a, const Plan& p, cudaStream_t st) {
  Workspace ws(p.bytes, a.device, st);
  float* qn2 = reinterpret_cast<float*>(ws.get() + p.off_qn);
  float* mn2 = reinterpret_cast<float*>(ws.get() + p.off_mn);
  void* qpack = p.pack_q ? ws.get() + p.off_qp : nullptr;
  void* mpack = p.pack_m ? ws.get() + p.off_mp : nullptr;

  KArgs k;
  k.A = p.pack_q ? qpack : a.queries;
  k.lda = p.pack_q ? p.pitch : a.query_row_stride;
  k.B = p.pack_m ? mpack : a.memory;
  k.ldb = p.pack_m ? p.pitch : a.memory_row_stride;
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
  k.tiles_m = p.tiles_m;
  k.tiles_n = p.tiles_n;

  // Tensor maps of the wgmma kernel. Packed operands expose their zero padding (pitch
  // columns, at least 16 bytes); direct operands expose exactly d columns.
  CUtensorMap tmap_a, tmap_b;
  if (p.kernel == Kernel::Wgmma &&
      !(make_tensor_map(&tmap_a, p.ct, k.A, a.nq, p.pack_q ? p.pitch : a.d, k.lda, wg::BM) &&
        make_tensor_map(&tmap_b, p.ct, k.B, a.nm, p.pack_m ? p.pitch : a.d, k.ldb, wg::BN))) {
    return false;
  }

  launch_prep(a.dtype, p.ct, a.queries, a.nq, a.query_row_stride, a.d, qpack, p.pitch, qn2, st);
  launch_prep(a.dtype, p.ct, a.memory, a.nm, a.memory_row_stride, a.d, mpack, p.pitch, mn2, st);
  switch (p.kernel) {
    case Kernel::Simt: launch_simt(k, p.grid, st); break;
    case Kernel::Mma:
      switch (p.ct) {
        case kTF32: launch_mma<kTF32>(k, p.grid, st); break;
        case kBF16: launch_mma<kBF16>(k, p.grid, st); break;
        default: launch_mma<kF16>(k, p.grid, st); break;
      }
      break;
    case Kernel::Wgmma:
      switch (p.ct) {
        case kTF32: launch_wgmma<kTF32>(tmap_a, tmap_b, k, p.kt_count, p.grid, st); break;
        case kBF16: launch_wgmma<kBF16>(tmap_a, tmap_b, k, p.kt_count, p.grid, st); break;
        default: launch_wgmma<kF16>(tmap_a, tmap_b, k, p.kt_count, p.grid, st); break;
      }
      break;
    case Kernel::None: break;
  }
  return true;
}

}  // namespace

const char* cuda_last_group_min_kernel() noexcept {
  switch (static_cast<Kernel>(g_last_kernel.load())) {
    case Kernel::Simt: return "simt";
    case Kernel::Mma: return "mma";
    case Kernel::Wgmma: return "wgmma";
    case Kernel::None: break;
  }
  return "none";
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

IdCheck find_group_id_out_of_range_cuda(const int64_t* ids, int64_t n, int64_t n_groups,
                                        int device, void* stream) {
  IdCheck r;
  if (n == 0) return r;
  DeviceGuard guard(device);
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  MEDS_CUDA_CHECK(cudaStreamIsCapturing(st, &capture));
  if (capture != cudaStreamCaptureStatusNone) {
    r.checked = false;  // nothing can be read back to the host during capture
    return r;
  }
  Workspace ws(sizeof(unsigned long long), device, st);
  auto* first = reinterpret_cast<unsigned long long*>(ws.get());
  MEDS_CUDA_CHECK(cudaMemsetAsync(first, 0xFF, sizeof(unsigned long long), st));  // none found
  launch_find_bad_id(ids, n, n_groups, first, st);
  unsigned long long found = 0;
  MEDS_CUDA_CHECK(cudaMemcpyAsync(&found, first, sizeof(found), cudaMemcpyDeviceToHost, st));
  MEDS_CUDA_CHECK(cudaStreamSynchronize(st));
  if (found != ~0ull) {
    r.index = static_cast<int64_t>(found);
    MEDS_CUDA_CHECK(
        cudaMemcpyAsync(&r.id, ids + r.index, sizeof(r.id), cudaMemcpyDeviceToHost, st));
    MEDS_CUDA_CHECK(cudaStreamSynchronize(st));
  }
  return r;
}

void group_min_distance_cuda(const GroupMinArgs& a) {
  const TcMode tc_mode = cuda_tc_mode_from_env();  // throws on a bad value, before any work
  g_last_kernel.store(static_cast<int>(Kernel::None));
  if (a.nq == 0) return;
  DeviceGuard guard(a.device);
  const cudaStream_t st = static_cast<cudaStream_t>(a.stream);
  const int64_t total_out = a.nq * a.n_groups;

  Plan p = plan(a, tc_mode, std::string());
  MEDS_CUDA_CHECK(cudaMemsetAsync(a.out, 0xFF, static_cast<size_t>(total_out) * sizeof(float), st));
  if (p.kernel != Kernel::None && !run_plan(a, p, st)) {
    // The driver refused a tensor map of the wgmma kernel: plan again without it (mma.sync,
    // or the error MEDS_CUDA_TC=wgmma asks for).
    p = plan(a, tc_mode, "the driver refused its tensor maps");
    run_plan(a, p, st);
  }
  g_last_kernel.store(static_cast<int>(p.kernel));
  launch_finalize(a.out, total_out, a.metric == Metric::L2, st);
}

}  // namespace meds
