// What the CUDA side of this build can see at run time. Safe to call on a machine with no
// GPU and no driver: nothing here throws.
#pragma once

#include <string>

namespace meds {

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
// MEDS_CUDA_TC=auto|mma|wgmma then picks between it and mma.sync (see group_min_cuda.cu).
std::string cuda_wgmma_status(int device);
#else
inline int cuda_device_count() noexcept { return 0; }
inline const char* cuda_last_group_min_kernel() noexcept { return "none"; }
inline std::string cuda_wgmma_status(int) { return "this build of meds has no CUDA support"; }
#endif

}  // namespace meds
