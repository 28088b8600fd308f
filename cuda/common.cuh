// Shared helpers for the CUDA kernels: the CUDA error check, bf16 conversions, warp reductions.
// Includable from host-compiled (.cpp) translation units: the device-only helpers are compiled
// only by nvcc (__CUDACC__) or for the CPU emulator (KD_CUDA_EMU, tools/kdemu); the bf16 alias,
// KD_CUDA_CHECK, ceil_div, aligned16 and StreamScratch are available everywhere.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "engine/base/error.h"

namespace kd::cuda {

using bf16 = __nv_bfloat16;

// ---- the CUDA error check ----------------------------------------------------------------------
// KD_CUDA_CHECK(call) is the one check for every CUDA runtime and cuBLASLt call: `call` returns a
// cudaError_t or a cublasStatus_t; anything but success throws kd::CudaError (engine/base/error.h)
// with FILE:LINE, the call's text and the error's name and description. A launch is checked with
// KD_CUDA_CHECK(cudaGetLastError()) right after it (configuration errors); errors while a kernel
// runs surface at the next synchronising call, which is checked the same way.
#define KD_CUDA_CHECK(call) \
  ::kd::cuda::detail::check((call), #call, __FILE__, ::kd::detail::kErrorHeader, __LINE__)

namespace detail {

[[noreturn]] inline void cuda_failed(const char* file, std::string_view error_header, int line,
                                     const char* call, const std::string& error) {
  throw CudaError(kd::detail::source_path(file, error_header) + ":" + std::to_string(line) + ": " +
                  call + " failed: " + error);
}

inline void check(cudaError_t e, const char* call, const char* file, std::string_view error_header,
                  int line) {
  if (e == cudaSuccess) [[likely]]
    return;
  // Reset the runtime's last-error state, so that the next launch check reports its own launch
  // and not this call (errors that corrupt the context stay, whatever is done here).
  cudaGetLastError();
  std::string error = cudaGetErrorString(e);
  const char* name = cudaGetErrorName(e);
  if (std::strcmp(name, error.c_str()) != 0) error += std::string(" (") + name + ")";
  cuda_failed(file, error_header, line, call, error);
}

inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "an unknown cuBLAS status";
}

// cuBLASLt's own status (cublasGetStatusString lives in libcublas, which is not linked).
inline void check(cublasStatus_t s, const char* call, const char* file,
                  std::string_view error_header, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) [[likely]]
    return;
  cuda_failed(file, error_header, line, call,
              std::string(cublas_status_name(s)) + " (status " + std::to_string(s) + ")");
}

}  // namespace detail

inline int ceil_div(long long a, long long b) {
  return static_cast<int>((a + b - 1) / b);
}

// ---- bf16 vectors: 8 values in one 16-byte load or store ------------------------------------
constexpr int kVec = 8;  // bf16 values per 16-byte vector

__host__ __device__ inline bool aligned16(const void* p) {
  return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}

#if defined(__CUDACC__) || defined(KD_CUDA_EMU)
__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// f[k] = the k-th of the 8 bf16 values packed in raw.
__device__ __forceinline__ void unpack_bf16x8(const uint4& raw, float (&f)[kVec]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < kVec / 2; ++k) {
    const float2 two = __bfloat1622float2(h[k]);
    f[2 * k] = two.x;
    f[2 * k + 1] = two.y;
  }
}

// f[k] = p[k] for k < 8; p must be 16-byte aligned.
__device__ __forceinline__ void load_bf16x8(const bf16* p, float (&f)[kVec]) {
  unpack_bf16x8(*reinterpret_cast<const uint4*>(p), f);
}

// p[k] = bf16(f[k]) (round to nearest even) for k < 8; p must be 16-byte aligned.
__device__ __forceinline__ void store_bf16x8(bf16* p, const float (&f)[kVec]) {
  uint4 raw;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < kVec / 2; ++k) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// ---- block reductions (blockDim.x a multiple of 32, at most 1024) ----------------------------
// Sum of v over the block, returned to every thread. The order is fixed by the block shape, so the
// result is the same on every run. `scratch` holds 32 floats; the call synchronises the block
// twice, so it may be called repeatedly with the same scratch.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // an earlier call may still be reading scratch
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(r);
}
#endif  // __CUDACC__ || KD_CUDA_EMU

// ---- stream-ordered scratch memory -----------------------------------------------------------
// Device memory from the stream-ordered allocator: allocated on `s` and freed on `s` when the
// object goes out of scope, after the kernels queued on `s` that use it. No host synchronisation.
class StreamScratch {
 public:
  StreamScratch(size_t bytes, cudaStream_t s) : stream_(s) {
    if (bytes > 0) KD_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, s));
  }
  ~StreamScratch() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace kd::cuda
