// pybind11 module meds._C: the only Python-facing C++ code. Arrays arrive as raw numbers
// (data pointer, sizes, strides in elements, dtype code, device ordinal, CUDA stream); the
// Python side (meds/kernels/ops.py) allocates the output. The GIL is released around the
// kernels.
// No libtorch: the extension links only the C++ runtime, OpenMP and (optionally) cudart.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif
#ifdef MEDS_WITH_CUDA
#include <cuda_runtime_api.h>  // CUDART_VERSION
#endif

#include "common/checks.h"
#include "ops/cuda_info.h"
#include "ops/group_min.h"

namespace py = pybind11;

namespace {

template <class T>
T* as_ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void group_min_distance_py(uintptr_t queries, int64_t nq, int64_t query_row_stride,
                           uintptr_t memory, int64_t nm, int64_t memory_row_stride, int64_t d,
                           int dtype, uintptr_t groups, int64_t n_groups, uintptr_t query_groups,
                           bool exclude_self, int metric, int precision, uintptr_t out,
                           int device, uintptr_t stream, int num_threads) {
  meds::GroupMinArgs a;
  a.queries = as_ptr<const void>(queries);
  a.nq = nq;
  a.query_row_stride = query_row_stride;
  a.memory = as_ptr<const void>(memory);
  a.nm = nm;
  a.memory_row_stride = memory_row_stride;
  a.d = d;
  a.dtype = static_cast<meds::DType>(dtype);
  a.groups = as_ptr<const int64_t>(groups);
  a.n_groups = n_groups;
  a.query_groups = as_ptr<const int64_t>(query_groups);
  a.exclude_self = exclude_self;
  a.metric = static_cast<meds::Metric>(metric);
  a.precision = static_cast<meds::Precision>(precision);
  a.out = as_ptr<float>(out);
  a.device = device;
  a.stream = as_ptr<void>(stream);
  a.num_threads = num_threads;
  meds::group_min_distance(a);
}

std::string compiler_string() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(',', start);
    const std::string item = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!item.empty()) out.push_back(item);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

#ifdef MEDS_WITH_CUDA
// Whether an sm_90a target ("90a", "90a-real", "sm_90a", ...) is in the compiled arch list:
// the Hopper wgmma kernel exists only then.
bool has_sm90a(const std::vector<std::string>& archs) {
  for (const std::string& a : archs) {
    const size_t at = a.find("90a");
    if (at != std::string::npos && (at == 0 || a[at - 1] == '_')) return true;
  }
  return false;
}
#endif

// Why the kernels would reject the current MEDS_CUDA_TC, empty if they accept it: a value
// other than auto|mma|wgmma, or wgmma where no visible device can run the wgmma kernel.
std::string tc_setting_error(bool sm90a_compiled) {
  meds::TcMode mode;
  try {
    mode = meds::cuda_tc_mode_from_env();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  if (mode != meds::TcMode::Wgmma) return std::string();
  const std::string prefix = "MEDS_CUDA_TC=wgmma, but the wgmma kernel cannot run here: ";
  if (!sm90a_compiled) {
#ifdef MEDS_WITH_CUDA
    return prefix + "this build of meds has no sm_90a code";
#else
    return prefix + "this build of meds has no CUDA support";
#endif
  }
  const int n = meds::cuda_device_count();
  if (n == 0) return prefix + "no CUDA device is visible";
  std::string first_reason;
  for (int dev = 0; dev < n; ++dev) {
    const std::string status = meds::cuda_wgmma_status(dev);
    if (status == "ok") return std::string();
    if (dev == 0) first_reason = "cuda:0: " + status;
  }
  return prefix + first_reason;
}

py::dict build_info() {
  py::dict info;
#ifdef MEDS_WITH_CUDA
  info["cuda"] = true;
#ifdef MEDS_CUDA_ARCHS
  const std::vector<std::string> archs = split_commas(MEDS_CUDA_ARCHS);
#else
  const std::vector<std::string> archs;
#endif
  const bool sm90a = has_sm90a(archs);
  info["cuda_archs"] = archs;
  info["cuda_sm90a"] = sm90a;
  info["cuda_runtime_version"] = CUDART_VERSION;
#else
  info["cuda"] = false;
  const bool sm90a = false;
  info["cuda_archs"] = std::vector<std::string>{};
  info["cuda_sm90a"] = sm90a;
  info["cuda_runtime_version"] = py::none();
#endif
  // The MEDS_CUDA_TC setting, only if the kernels would accept it (else None, and why not).
  const std::string tc_error = tc_setting_error(sm90a);
  if (tc_error.empty()) {
    info["cuda_tc"] = std::string(meds::tc_mode_name(meds::cuda_tc_mode_from_env()));
    info["cuda_tc_error"] = py::none();
  } else {
    info["cuda_tc"] = py::none();
    info["cuda_tc_error"] = tc_error;
  }
  info["cuda_device_count"] = meds::cuda_device_count();
#if defined(_OPENMP)
  info["openmp"] = true;
  info["openmp_version"] = _OPENMP;
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_version"] = py::none();
  info["openmp_max_threads"] = 1;
#endif
  info["simd_compiled"] = split_commas(meds::group_min_cpu_simd_compiled());
  info["simd_selected"] = std::string(meds::group_min_cpu_simd_selected());
  info["compiler"] = compiler_string();
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "meds C++/CUDA kernels (raw-pointer interface; use meds.kernels.ops instead)";

  // meds::TypeError -> TypeError; std::invalid_argument -> ValueError (pybind11's default);
  // std::bad_alloc -> MemoryError; other std::exception -> RuntimeError.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const meds::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });

  m.def("group_min_distance", &group_min_distance_py, py::arg("queries"), py::arg("nq"),
        py::arg("query_row_stride"), py::arg("memory"), py::arg("nm"),
        py::arg("memory_row_stride"), py::arg("d"), py::arg("dtype"), py::arg("groups"),
        py::arg("n_groups"), py::arg("query_groups"), py::arg("exclude_self"),
        py::arg("metric"), py::arg("precision"), py::arg("out"), py::arg("device"),
        py::arg("stream"), py::arg("num_threads"), py::call_guard<py::gil_scoped_release>(),
        "out[q, g] = min distance from queries[q] to the memory rows of group g (raw pointers; "
        "strides in elements; dtype 0/1/2 = float32/float16/bfloat16; metric 0/1/2 = "
        "cosine/l2/sqeuclidean; precision 0..3 = fp32/tf32/bf16/fp16; device -1 = CPU).");
  m.def("build_info", &build_info, "What this build of the extension contains.");
  m.def("cuda_device_count", &meds::cuda_device_count,
        "Number of visible CUDA devices (0 without CUDA support or without a device).");
  m.def("cuda_last_kernel", &meds::cuda_last_group_min_kernel,
        "Fused kernel launched by the latest CUDA group_min_distance call in this process: "
        "'simt', 'mma', 'wgmma' or 'none' (debugging aid).");
  m.def("cuda_wgmma_status", &meds::cuda_wgmma_status, py::arg("device") = 0,
        "'ok' when the Hopper (sm_90a) wgmma kernel can run on this CUDA device, otherwise the "
        "reason it cannot. MEDS_CUDA_TC=auto|mma|wgmma selects between it and mma.sync.");
}
