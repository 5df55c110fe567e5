// MEDS_CUDA_CHECK(expr): throws std::runtime_error (Python RuntimeError) naming the failed
// call, file, line and the CUDA error string when a CUDA runtime call does not return
// cudaSuccess. Never aborts. Include only from code compiled with MEDS_WITH_CUDA.
#pragma once

#include <cuda_runtime.h>

#include <sstream>
#include <stdexcept>

#define MEDS_CUDA_CHECK(expr)                                                          \
  do {                                                                                 \
    cudaError_t meds_err_ = (expr);                                                    \
    if (meds_err_ != cudaSuccess) {                                                    \
      std::ostringstream meds_os_;                                                     \
      meds_os_ << "CUDA error in " << #expr << " at " << __FILE__ << ":" << __LINE__   \
               << ": " << cudaGetErrorName(meds_err_) << " ("                          \
               << cudaGetErrorString(meds_err_) << ")";                                \
      throw std::runtime_error(meds_os_.str());                                        \
    }                                                                                  \
  } while (0)

// After a kernel launch: reports launch-configuration errors at once (asynchronous
// execution errors surface at the next synchronising call).
#define MEDS_CUDA_CHECK_LAUNCH() MEDS_CUDA_CHECK(cudaGetLastError())
