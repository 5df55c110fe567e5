// MEDS_CUDA_CHECK(expr): throws std::runtime_error (Python RuntimeError) naming the failed
// call, file, line and the CUDA error string when a CUDA runtime call does not return
// cudaSuccess. MEDS_CUDA_CHECK_LAUNCH(name): the same right after a kernel launch, naming the
// kernel. Never aborts. Include only from code compiled with MEDS_WITH_CUDA.
#pragma once

#include <cuda_runtime.h>

#include <sstream>
#include <stdexcept>
#include <string>

namespace meds {
namespace detail {
// "CUDA error in <what> at <file>:<line>: <name> (<description>)"
inline std::string cuda_error_message(const char* what, const char* file, int line,
                                      cudaError_t err) {
  std::ostringstream os;
  os << "CUDA error in " << what << " at " << file << ":" << line << ": " << cudaGetErrorName(err)
     << " (" << cudaGetErrorString(err) << ")";
  return os.str();
}
}  // namespace detail
}  // namespace meds

#define MEDS_CUDA_CHECK(expr)                                                             \
  do {                                                                                    \
    const cudaError_t meds_err_ = (expr);                                                 \
    if (meds_err_ != cudaSuccess) {                                                       \
      throw std::runtime_error(                                                           \
          ::meds::detail::cuda_error_message(#expr, __FILE__, __LINE__, meds_err_));      \
    }                                                                                     \
  } while (0)

// After a kernel launch: reports launch-configuration errors at once (asynchronous
// execution errors surface at the next synchronising call).
#define MEDS_CUDA_CHECK_LAUNCH(kernel_name)                                               \
  do {                                                                                    \
    const cudaError_t meds_err_ = cudaGetLastError();                                     \
    if (meds_err_ != cudaSuccess) {                                                       \
      throw std::runtime_error(::meds::detail::cuda_error_message(                        \
          "the launch of " kernel_name, __FILE__, __LINE__, meds_err_));                  \
    }                                                                                     \
  } while (0)
