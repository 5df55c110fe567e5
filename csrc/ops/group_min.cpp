// Validation of GroupMinArgs and the one dispatch point between the CPU and CUDA kernels.
#include "ops/group_min.h"

#include <sstream>
#include <stdexcept>

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

  if (a.device < 0) {
    MEDS_CHECK_TYPE(a.dtype == DType::Float32, kFn, "queries",
                    "float32 on the CPU (float16/bfloat16 only on CUDA)", dtype_name(a.dtype));
    MEDS_CHECK_ARG(a.precision == Precision::Fp32, kFn, "precision",
                   "'fp32' on the CPU (tf32/bf16/fp16 only on CUDA)",
                   "'" << precision_name(a.precision) << "'");
  } else {
    // 16-bit inputs may be multiplied in fp32 or in their own format; a conversion between
    // float16 and bfloat16 would lose bits, so it is refused.
    const bool lossy = (a.dtype == DType::Float16 && a.precision == Precision::BF16) ||
                       (a.dtype == DType::BFloat16 && a.precision == Precision::FP16);
    MEDS_CHECK_ARG(!lossy, kFn, "precision",
                   "'fp32', 'tf32' or the input's own format for " << dtype_name(a.dtype)
                                                                   << " inputs",
                   "'" << precision_name(a.precision) << "'");
  }
}

}  // namespace

void group_min_distance(const GroupMinArgs& args) {
  validate(args);
  if (args.device < 0) {
    group_min_distance_cpu(args);
    return;
  }
#ifdef MEDS_WITH_CUDA
  group_min_distance_cuda(args);
#else
  throw TypeError(std::string(kFn) +
                  ": argument 'queries' must be on the CPU (this build of meds has no CUDA "
                  "support), got cuda:" + std::to_string(args.device));
#endif
}

}  // namespace meds
