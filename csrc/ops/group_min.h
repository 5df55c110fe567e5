// group_min: for every query row, the smallest distance to the memory rows of each group.
//
//   out[q, g] = min over memory rows r with groups[r] == g (and, with exclude_self,
//               groups[r] != query_groups[q]) of dist(queries[q], memory[r])
//
// A group with no eligible row gives NaN. Distances are clamped at 0 (round-off).
// This header is the one contract shared by the CPU and CUDA implementations and the
// dispatch point; it knows nothing of Python or torch.
#pragma once

#include <cstdint>

namespace meds {

enum class Metric : int { Cosine = 0, L2 = 1, SqEuclidean = 2 };

// Element type of `queries` and `memory` (CUDA also accepts the 16-bit types).
enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// How the CUDA kernel multiplies: exact fp32 FMA, or tensor cores (fp32 accumulation).
// The CPU always computes in fp32.
enum class Precision : int { Fp32 = 0, TF32 = 1, BF16 = 2, FP16 = 3 };

struct GroupMinArgs {
  // Inputs. Rows may be strided (element stride between rows); columns are contiguous.
  const void* queries = nullptr;  // (nq, d)
  int64_t nq = 0;
  int64_t query_row_stride = 0;   // in elements
  const void* memory = nullptr;   // (nm, d)
  int64_t nm = 0;
  int64_t memory_row_stride = 0;  // in elements
  int64_t d = 0;
  DType dtype = DType::Float32;

  // Group of every memory row, contiguous, values in [0, n_groups).
  const int64_t* groups = nullptr;  // (nm,)
  int64_t n_groups = 0;

  // Leave-one-out: when exclude_self, query q never matches rows of group query_groups[q].
  const int64_t* query_groups = nullptr;  // (nq,) or nullptr
  bool exclude_self = false;

  Metric metric = Metric::Cosine;
  Precision precision = Precision::Fp32;

  // Output, allocated by the caller: contiguous (nq, n_groups) float32.
  float* out = nullptr;

  // -1 for the CPU, else the CUDA device ordinal that holds every array above.
  int device = -1;
  void* stream = nullptr;  // cudaStream_t of the caller (nullptr = legacy default stream)
  int num_threads = 0;     // CPU: OpenMP threads, 0 = the OpenMP default
};

// Validates `args` (throws std::invalid_argument, or meds::TypeError for a dtype/device rule,
// naming the argument) and runs the implementation for args.device. The one gate of every
// backend: the backends check nothing again. It reads every group id (CPU: in parallel; CUDA:
// a small kernel, then one synchronisation of args.stream). The only place that knows about
// MEDS_WITH_CUDA.
void group_min_distance(const GroupMinArgs& args);

// Where a group-id array leaves [0, n_groups).
struct IdCheck {
  bool checked = true;  // false: the ids could not be read (CUDA stream capture)
  int64_t index = -1;   // the first index whose id is out of range, -1 if none
  int64_t id = 0;       // that id
};

void group_min_distance_cpu(const GroupMinArgs& args);
// CPU SIMD levels compiled in (e.g. "avx512,avx2,portable") and the one this machine uses
// (the best it supports; MEDS_CPU_SIMD=avx2|portable in the environment forces a lower one).
const char* group_min_cpu_simd_compiled();
const char* group_min_cpu_simd_selected();
#ifdef MEDS_WITH_CUDA
void group_min_distance_cuda(const GroupMinArgs& args);
// The range check of device-resident ids on `stream`. While the stream is captured into a CUDA
// graph nothing can be read back, so it returns checked = false; the kernels then skip
// out-of-range ids instead of writing out of bounds.
IdCheck find_group_id_out_of_range_cuda(const int64_t* ids, int64_t n, int64_t n_groups,
                                        int device, void* stream);
#endif

}  // namespace meds
