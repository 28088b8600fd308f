// Shared helpers for the CUDA kernels: error checking, bf16 conversions, warp reductions.
// Includable from host-compiled (.cpp) translation units: the device-only helpers are compiled
// only by nvcc (__CUDACC__) or for the CPU emulator (KD_CUDA_EMU, tools/kdemu); the bf16 alias,
// KD_CUDA_CHECK, ceil_div, aligned16 and StreamScratch are available everywhere.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <stdexcept>
#include <string>

namespace kd::cuda {

using bf16 = __nv_bfloat16;

// Throws std::runtime_error with the failing call, file and line.
#define KD_CUDA_CHECK(call)                                                                      \
  do {                                                                                           \
    cudaError_t kd_err_ = (call);                                                                \
    if (kd_err_ != cudaSuccess)                                                                  \
      throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(kd_err_) +       \
                               " at " + __FILE__ + ":" + std::to_string(__LINE__) + ": " #call); \
  } while (0)

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

// f[k] = p[k] for k < 8; p must be 16-byte aligned.
__device__ __forceinline__ void load_bf16x8(const bf16* p, float (&f)[kVec]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < kVec / 2; ++k) {
    const float2 two = __bfloat1622float2(h[k]);
    f[2 * k] = two.x;
    f[2 * k + 1] = two.y;
  }
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

// Checks the launch that was just queued (configuration errors); execution errors surface at the
// next synchronisation.
#define KD_CUDA_CHECK_LAUNCH() KD_CUDA_CHECK(cudaGetLastError())

}  // namespace kd::cuda
