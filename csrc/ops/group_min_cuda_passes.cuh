// The memory-bound passes of group_min on CUDA: the range check of the group ids (run by
// validate(), before any other work), the row pass before the fused kernel (squared norms,
// optional packed copy in the compute type) and the finalize pass after it. Included only by
// group_min_cuda.cu, after group_min_cuda_common.cuh.
#pragma once

#include <cstdint>

#include "common/cuda_check.h"
#include "ops/group_min.h"
#include "ops/group_min_cuda_common.cuh"

namespace meds {
namespace {

// *first = min(*first, smallest index i with ids[i] outside [0, n_groups)). Grid-stride: a
// thread stops at its first hit, every later index of its stride is larger.
__global__ void __launch_bounds__(256) find_bad_id_kernel(const int64_t* __restrict__ ids,
                                                          int64_t n, int64_t n_groups,
                                                          unsigned long long* __restrict__ first) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (static_cast<uint64_t>(ids[i]) >= static_cast<uint64_t>(n_groups)) {
      atomicMin(first, static_cast<unsigned long long>(i));
      return;
    }
  }
}

// Row norms (+ optional packed copy). One warp per row, grid-stride over rows.
template <typename InT, int CT>
__global__ void __launch_bounds__(256) prep_rows_kernel(const InT* __restrict__ in, int64_t n,
                                                        int64_t stride, int64_t d,
                                                        void* __restrict__ packed, int64_t pitch,
                                                        float* __restrict__ norm2) {
  const int lane = threadIdx.x & 31;
  const int64_t kend = packed ? pitch : d;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5); row < n;
       row += static_cast<int64_t>(gridDim.x) * 8) {
    const InT* src = in + row * stride;
    float acc = 0.f;
    for (int64_t k = lane; k < kend; k += 32) {
      float v = k < d ? round_ct<CT>(to_float(src[k])) : 0.f;
      acc = fmaf(v, v, acc);
      if (packed) store_ct<CT>(packed, row * pitch + k, v);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) norm2[row] = acc;
  }
}

// 0xFFFFFFFF -> NaN (no eligible row), sqrt for l2.
__global__ void __launch_bounds__(256) finalize_kernel(float* __restrict__ out, int64_t total,
                                                       bool take_sqrt) {
  uint32_t* bits = reinterpret_cast<uint32_t*>(out);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t u = bits[i];
    float v;
    if (u == 0xFFFFFFFFu) {
      v = __uint_as_float(0x7fc00000u);
    } else {
      v = __uint_as_float(u);
      if (take_sqrt) v = sqrtf(v);
    }
    out[i] = v;
  }
}


template <typename InT, int CT>
void launch_prep_t(const void* in, int64_t n, int64_t stride, int64_t d, void* packed,
                   int64_t pitch, float* norm2, cudaStream_t st) {
  prep_rows_kernel<InT, CT><<<grid_for(n, 8, 1 << 20), 256, 0, st>>>(
      static_cast<const InT*>(in), n, stride, d, packed, pitch, norm2);
  MEDS_CUDA_CHECK_LAUNCH("prep_rows_kernel");
}

template <typename InT>
void launch_prep_in(int ct, const void* in, int64_t n, int64_t stride, int64_t d, void* packed,
                    int64_t pitch, float* norm2, cudaStream_t st) {
  switch (ct) {
    case kF32: launch_prep_t<InT, kF32>(in, n, stride, d, packed, pitch, norm2, st); break;
    case kTF32: launch_prep_t<InT, kTF32>(in, n, stride, d, packed, pitch, norm2, st); break;
    case kBF16: launch_prep_t<InT, kBF16>(in, n, stride, d, packed, pitch, norm2, st); break;
    default: launch_prep_t<InT, kF16>(in, n, stride, d, packed, pitch, norm2, st); break;
  }
}

void launch_prep(DType dt, int ct, const void* in, int64_t n, int64_t stride, int64_t d,
                 void* packed, int64_t pitch, float* norm2, cudaStream_t st) {
  if (n == 0) return;
  switch (dt) {
    case DType::Float32:
      launch_prep_in<float>(ct, in, n, stride, d, packed, pitch, norm2, st);
      break;
    case DType::Float16:
      launch_prep_in<__half>(ct, in, n, stride, d, packed, pitch, norm2, st);
      break;
    case DType::BFloat16:
      launch_prep_in<__nv_bfloat16>(ct, in, n, stride, d, packed, pitch, norm2, st);
      break;
  }
}


void launch_find_bad_id(const int64_t* ids, int64_t n, int64_t n_groups,
                        unsigned long long* first, cudaStream_t st) {
  find_bad_id_kernel<<<grid_for(n, 256, 4096), 256, 0, st>>>(ids, n, n_groups, first);
  MEDS_CUDA_CHECK_LAUNCH("find_bad_id_kernel");
}

void launch_finalize(float* out, int64_t total, bool take_sqrt, cudaStream_t st) {
  finalize_kernel<<<grid_for(total, 256, 65536), 256, 0, st>>>(out, total, take_sqrt);
  MEDS_CUDA_CHECK_LAUNCH("finalize_kernel");
}

}  // namespace
}  // namespace meds
