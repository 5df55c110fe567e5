// Validation of GroupMinArgs (the one gate of every backend) and the one dispatch point
// between the CPU and CUDA kernels.
#include "ops/group_min.h"

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "common/checks.h"

namespace meds {
namespace {

constexpr const char* kFn = "group_min_distance";

const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
  }
  return "unknown";
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::Fp32: return "fp32";
    case Precision::TF32: return "tf32";
    case Precision::BF16: return "bf16";
    case Precision::FP16: return "fp16";
  }
  return "unknown";
}

// The first id outside [0, n_groups) of a CPU array: one pass, an OpenMP min reduction over
// the indices of the bad ids (threads only for arrays worth waking them for).
IdCheck find_group_id_out_of_range_cpu(const int64_t* ids, int64_t n, int64_t n_groups,
                                       int num_threads) {
  constexpr int64_t kParallelFrom = int64_t{1} << 16;
  int64_t first = n;
#if defined(_OPENMP)
  const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) reduction(min : first) num_threads(threads) \
    if (n >= kParallelFrom && threads > 1)
#else
  (void)num_threads;
  (void)kParallelFrom;
#endif
  for (int64_t r = 0; r < n; ++r) {
    if (static_cast<uint64_t>(ids[r]) >= static_cast<uint64_t>(n_groups) && r < first) first = r;
  }
  IdCheck c;
  if (first < n) {
    c.index = first;
    c.id = ids[first];
  }
  return c;
}

void validate(const GroupMinArgs& a) {
  const int m = static_cast<int>(a.metric);
  MEDS_CHECK_ARG(m >= 0 && m <= 2, kFn, "metric", "0 (cosine), 1 (l2) or 2 (sqeuclidean)", m);
  const int dt = static_cast<int>(a.dtype);
  MEDS_CHECK_TYPE(dt >= 0 && dt <= 2, kFn, "dtype", "float32, float16 or bfloat16",
                  "dtype code " << dt);
  const int pr = static_cast<int>(a.precision);
  MEDS_CHECK_ARG(pr >= 0 && pr <= 3, kFn, "precision", "fp32, tf32, bf16 or fp16",
                 "precision code " << pr);

  MEDS_CHECK_ARG(a.nq >= 0, kFn, "queries", "nq >= 0 rows", a.nq);
  MEDS_CHECK_ARG(a.nm >= 0, kFn, "memory", "nm >= 0 rows", a.nm);
  MEDS_CHECK_ARG(a.d >= 1, kFn, "queries", "feature dimension d >= 1", a.d);
  MEDS_CHECK_ARG(a.n_groups >= 1, kFn, "n_groups", ">= 1", a.n_groups);
  MEDS_CHECK_ARG(a.query_row_stride >= 0, kFn, "queries", "row stride >= 0 (elements)",
                 a.query_row_stride);
  MEDS_CHECK_ARG(a.memory_row_stride >= 0, kFn, "memory", "row stride >= 0 (elements)",
                 a.memory_row_stride);
  MEDS_CHECK_ARG(a.nq == 0 || a.queries != nullptr, kFn, "queries", "a data pointer",
                 "nullptr");
  MEDS_CHECK_ARG(a.nm == 0 || a.memory != nullptr, kFn, "memory", "a data pointer", "nullptr");
  MEDS_CHECK_ARG(a.nm == 0 || a.groups != nullptr, kFn, "groups", "a data pointer", "nullptr");
  MEDS_CHECK_ARG(a.nq == 0 || a.out != nullptr, kFn, "out", "a data pointer", "nullptr");
  MEDS_CHECK_ARG(!a.exclude_self || a.query_groups != nullptr || a.nq == 0, kFn,
                 "query_groups", "given when exclude_self is true", "nullptr");

  // Device and precision rules.
  if (a.device < 0) {
    MEDS_CHECK_TYPE(a.dtype == DType::Float32, kFn, "queries",
                    "float32 on the CPU (float16/bfloat16 only on CUDA)", dtype_name(a.dtype));
    MEDS_CHECK_ARG(a.precision == Precision::Fp32, kFn, "precision",
                   "'fp32' on the CPU (tf32/bf16/fp16 only on CUDA)",
                   "'" << precision_name(a.precision) << "'");
  } else {
#ifndef MEDS_WITH_CUDA
    throw TypeError(std::string(kFn) +
                    ": argument 'queries' must be on the CPU (this build of meds has no CUDA "
                    "support), got cuda:" + std::to_string(a.device));
#endif
    // 16-bit inputs may be multiplied in fp32 or in their own format; a conversion between
    // float16 and bfloat16 would lose bits, so it is refused.
    const bool lossy = (a.dtype == DType::Float16 && a.precision == Precision::BF16) ||
                       (a.dtype == DType::BFloat16 && a.precision == Precision::FP16);
    MEDS_CHECK_ARG(!lossy, kFn, "precision",
                   "'fp32', 'tf32' or the input's own format for " << dtype_name(a.dtype)
                                                                   << " inputs",
                   "'" << precision_name(a.precision) << "'");
  }

  // Group ids index the output, so every id is checked (query_groups are only compared with
  // them: any value is valid, one outside [0, n_groups) excludes nothing).
  if (a.nm > 0) {
#ifdef MEDS_WITH_CUDA
    const IdCheck ids =
        a.device < 0
            ? find_group_id_out_of_range_cpu(a.groups, a.nm, a.n_groups, a.num_threads)
            : find_group_id_out_of_range_cuda(a.groups, a.nm, a.n_groups, a.device, a.stream);
#else
    const IdCheck ids = find_group_id_out_of_range_cpu(a.groups, a.nm, a.n_groups, a.num_threads);
#endif
    MEDS_CHECK_ARG(ids.index < 0, kFn, "groups", "ids in [0, " << a.n_groups << ")",
                   ids.id << " at index " << ids.index);
  }
}

}  // namespace

void group_min_distance(const GroupMinArgs& args) {
  validate(args);
#ifdef MEDS_WITH_CUDA
  if (args.device >= 0) {
    group_min_distance_cuda(args);
    return;
  }
#endif
  group_min_distance_cpu(args);
}

}  // namespace meds
