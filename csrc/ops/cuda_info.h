// What the CUDA side of this build can see at run time. Safe to call on a machine with no
// GPU and no driver: nothing here throws.
#pragma once

namespace meds {

#ifdef MEDS_WITH_CUDA
// Number of visible CUDA devices; 0 when there is no driver, no device, or the driver is too
// old for the statically linked runtime (the CUDA error is swallowed, never thrown).
int cuda_device_count() noexcept;
#else
inline int cuda_device_count() noexcept { return 0; }
#endif

}  // namespace meds
