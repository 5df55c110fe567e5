// What the CUDA side of this build can see at run time. Safe to call on a machine with no
// GPU and no driver: nothing here throws.
#pragma once

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace meds {

// MEDS_CUDA_TC, read at every call: which tensor-core kernel runs the tf32/bf16/fp16
// precisions (fp32 always runs the SIMT kernel).
//   unset, "" or "auto": the wgmma kernel where it can run, mma.sync elsewhere
//   "mma": always mma.sync
//   "wgmma": always wgmma; a call it cannot run fails instead of falling back
enum class TcMode { Auto, Mma, Wgmma };

// The MEDS_CUDA_TC setting; throws std::invalid_argument naming the variable for any other
// value (a typo must not silently benchmark the wrong kernel).
inline TcMode cuda_tc_mode_from_env() {
  const char* v = std::getenv("MEDS_CUDA_TC");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return TcMode::Auto;
  if (std::strcmp(v, "mma") == 0) return TcMode::Mma;
  if (std::strcmp(v, "wgmma") == 0) return TcMode::Wgmma;
  throw std::invalid_argument(
      std::string("group_min_distance: environment variable MEDS_CUDA_TC must be 'auto', "
                  "'mma' or 'wgmma', got '") +
      v + "'");
}

inline const char* tc_mode_name(TcMode m) {
  switch (m) {
    case TcMode::Mma: return "mma";
    case TcMode::Wgmma: return "wgmma";
    case TcMode::Auto: break;
  }
  return "auto";
}

#ifdef MEDS_WITH_CUDA
// Number of visible CUDA devices; 0 when there is no driver, no device, or the driver is too
// old for the statically linked runtime (the CUDA error is swallowed, never thrown).
int cuda_device_count() noexcept;
// Which fused kernel the latest group_min_distance call on CUDA launched in this process:
// "simt" (fp32), "mma" (mma.sync tensor cores), "wgmma" (Hopper sm_90a) or "none". A debugging
// aid for tests and benchmarks (one process-wide value; not meaningful across threads).
const char* cuda_last_group_min_kernel() noexcept;
// "ok" when the sm_90a wgmma kernel can run on `device` (cc 9.0, the sm_90a code compiled in
// and loaded, the driver's tensor-map encoder available), otherwise the reason it cannot.
// MEDS_CUDA_TC then picks between it and mma.sync (see TcMode).
std::string cuda_wgmma_status(int device);
#else
inline int cuda_device_count() noexcept { return 0; }
inline const char* cuda_last_group_min_kernel() noexcept { return "none"; }
inline std::string cuda_wgmma_status(int) { return "this build of meds has no CUDA support"; }
#endif

}  // namespace meds
