// Shared helpers for the CUDA kernels: error checking, bf16 conversions, warp reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <stdexcept>
#include <string>

namespace kd::cuda {

using bf16 = __nv_bfloat16;

// Throws std::runtime_error with the failing call, file and line.
#define KD_CUDA_CHECK(call)                                                                   \
  do {                                                                                        \
    cudaError_t kd_err_ = (call);                                                             \
    if (kd_err_ != cudaSuccess)                                                               \
      throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(kd_err_) +    \
                               " at " + __FILE__ + ":" + std::to_string(__LINE__) + ": " #call); \
  } while (0)

inline int ceil_div(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

}  // namespace kd::cuda
