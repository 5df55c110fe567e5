// A non-owning view of a strided array that crossed from Python as raw numbers:
// data pointer, element type, device, shape and strides (in elements). No torch, no Python.
#pragma once

#include <cstdint>
#include <string>

#include "common/checks.h"

namespace meds {

enum class ScalarType : int { Float32 = 0, Float16 = 1, BFloat16 = 2, Int64 = 3, Int32 = 4, Bool = 5 };

inline const char* scalar_type_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float32: return "float32";
    case ScalarType::Float16: return "float16";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Int64: return "int64";
    case ScalarType::Int32: return "int32";
    case ScalarType::Bool: return "bool";
  }
  return "unknown";
}

inline std::string device_name(int device) {
  return device < 0 ? std::string("cpu") : "cuda:" + std::to_string(device);
}

struct ArrayView {
  static constexpr int kMaxDims = 4;
  const void* data = nullptr;
  ScalarType dtype = ScalarType::Float32;
  int device = -1;  // -1 = CPU, else CUDA ordinal
  int ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};
  int64_t strides[kMaxDims] = {0, 0, 0, 0};  // in elements

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  bool is_row_major_rows() const {  // last dimension contiguous
    return ndim == 0 || shape[ndim - 1] <= 1 || strides[ndim - 1] == 1;
  }
  bool is_contiguous() const {
    int64_t expect = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expect) return false;
      expect *= shape[i];
    }
    return true;
  }
};

// Checks that `a` has `ndim` dimensions (ValueError) and the given dtype/device (TypeError).
inline void check_view(const ArrayView& a, const char* fn, const char* arg, int ndim,
                       ScalarType dtype, int device) {
  MEDS_CHECK_ARG(a.ndim == ndim, fn, arg, ndim << "-D", a.ndim << "-D");
  MEDS_CHECK_TYPE(a.dtype == dtype, fn, arg, scalar_type_name(dtype),
                  scalar_type_name(a.dtype));
  MEDS_CHECK_TYPE(a.device == device, fn, arg, "on " << device_name(device),
                  "on " << device_name(a.device));
}

}  // namespace meds
