// kdemu: runs the project's CUDA kernels on the CPU, so that machines without a GPU can check them
// against their CPU twins with the very GPU tests that run on a real card.
//
// How: every kernel source (cuda/*.cu) and every GPU test is compiled as plain C++ with this header
// forced in first (g++ -include), after tools/kdemu/rewrite.pl has turned `k<<<grid, block, smem,
// stream>>>(args)` into an emulated launch and each `__shared__` declaration into per-block
// storage. The CUDA runtime and cuBLASLt functions the project calls are implemented by
// tools/kdemu/*.cpp on host memory, so the emulated binaries link no NVIDIA library.
//
// Execution model (tools/kdemu/emu.cpp): the blocks of a grid run one after another; the threads of
// a block are fibers (own stacks, switched without system calls) on one OS thread. Between two
// block barriers the warps run one at a time, in an order drawn afresh each time, each until all
// its lanes wait at the barrier or have ended; inside a warp the lanes run in random order between
// warp-collectives (shuffles, __syncwarp, ldmatrix, mma). One warp can therefore finish a whole
// barrier interval before another starts it, and a missing __syncthreads changes the results
// instead of passing by luck of ordering (tools/kdemu/test_emu.cu shows it). It also checks:
//   - global memory: every cudaMalloc buffer ends at a guard page (reading or writing past its end,
//     rounded up to 16 bytes, stops the test naming the kernel, block and thread) and starts
//     filled with 0xFF (NaN);
//   - shared memory: poisoned with 0xFF for every block; static size <= 48 KiB; dynamic sizes above
//     48 KiB only after cudaFuncSetAttribute(MaxDynamicSharedMemorySize), at most 227 KiB;
//   - launch limits (<= 1024 threads, grid.y/z <= 65535); every live thread reaching the same
//     __syncthreads() call, and every live lane of a warp its collectives (else: a deadlock
//     report).
// What it cannot check: speed, races inside one barrier interval beyond what reordering exposes,
// the exact rounding of hardware approximations, and cuBLASLt itself (tools/kdemu/cublaslt.cpp is a
// plain reference implementation of the calls the project makes).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#ifndef KD_CUDA_EMU
#error "tools/kdemu/emu.h is for the emulated build (KD_CUDA_EMU)"
#endif

namespace emu {

struct Thread {
  uint3 tid;
  uint3 bid;
  int linear;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  int lane;
  int warp;
};

extern dim3 g_block_dim;
extern dim3 g_grid_dim;
Thread& self();

// `file` and `line` name the __syncthreads() call: every live thread must wait at the same one.
void syncthreads(const char* file, int line);
// Waits for every live lane of the calling warp (mask must name them all); no data.
void syncwarp(unsigned mask);
// Posts `bytes` (<= 64) from `v`, waits for every live lane of the warp, and returns the 32 posts
// (64 bytes apart, indexed by lane). The posts stay readable until the lane's next exchange.
const unsigned char* warp_exchange(unsigned mask, const void* v, size_t bytes);
constexpr size_t kSlot = 64;

// Per-block storage of one `__shared__` declaration (see rewrite.pl).
class SharedSite {
 public:
  template <typename T>
  T* get() {
    return static_cast<T*>(get_bytes(sizeof(T), alignof(T) < 16 ? 16 : alignof(T)));
  }

 private:
  void* get_bytes(size_t bytes, size_t align);
  unsigned long long epoch_ = 0;
  void* ptr_ = nullptr;
};
void* dynamic_shared_bytes();
template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_bytes());
}

// What the emulated runtime has been asked to do so far (tests check a training step's budget).
struct RuntimeCounts {
  long long mallocs = 0, frees = 0;              // cudaMalloc / cudaFree
  long long async_mallocs = 0, async_frees = 0;  // cudaMallocAsync / cudaFreeAsync
  long long host_syncs = 0;  // cudaDevice/Stream/EventSynchronize and synchronous cudaMemcpy
  long long launches = 0;
};
RuntimeCounts runtime_counts();

// The emulated NCCL's record of this process's collectives (tools/kdemu/nccl.cpp), for tests: how
// many it made, and for the i-th its name ("AllReduce", "Reduce", ...), its element count and how
// many kernels the process had launched before it (runtime_counts().launches). Every emulated
// stream is synchronous, so a collective runs where it was launched among the kernels.
struct CollectiveRecord {
  char op[16];
  size_t count;
  long long launches_before;
};
size_t collective_count();
CollectiveRecord collective(size_t i);

// One kernel launch: `(Launch("name", grid, block, smem, stream) % kernel)(args...)`.
void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem,
              const std::function<void()>& body);

struct Launch {
  const char* name;
  dim3 grid, block;
  size_t smem;
  Launch(const char* n, dim3 g, dim3 b, size_t sm = 0, cudaStream_t = nullptr)
      : name(n), grid(g), block(b), smem(sm) {}
};

template <typename... P>
struct BoundKernel {
  Launch launch;
  void (*kernel)(P...);
  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel argument count");
    const std::tuple<std::decay_t<P>...> params(static_cast<P>(std::forward<A>(args))...);
    void (*k)(P...) = kernel;
    run_grid(launch.name, reinterpret_cast<const void*>(k), launch.grid, launch.block, launch.smem,
             [&params, k] { std::apply(k, params); });
  }
};

template <typename... P>
BoundKernel<P...> operator%(const Launch& l, void (*k)(P...)) {
  return BoundKernel<P...>{l, k};
}

// ---- warp shuffles (width 32) -----------------------------------------------------------------
template <typename T>
T shfl_pick(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= kSlot && std::is_trivially_copyable_v<T>, "shuffle type");
  const unsigned char* posts = warp_exchange(mask, &v, sizeof(T));
  T r;
  std::memcpy(&r, posts + static_cast<size_t>(src) * kSlot, sizeof(T));
  return r;
}

}  // namespace emu

// ---- the CUDA built-ins, in terms of the emulator ----------------------------------------------
#define threadIdx (::emu::self().tid)
#define blockIdx (::emu::self().bid)
#define blockDim (::emu::g_block_dim)
#define gridDim (::emu::g_grid_dim)
#define __launch_bounds__(...)
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::emu::syncwarp(0xffffffffu)

constexpr int warpSize = 32;

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int = 32) {
  return ::emu::shfl_pick(mask, v, src & 31);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int = 32) {
  return ::emu::shfl_pick(mask, v, (::emu::self().lane ^ lane_mask) & 31);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int = 32) {
  const int src = ::emu::self().lane + static_cast<int>(delta);
  return ::emu::shfl_pick(mask, v, src < 32 ? src : ::emu::self().lane);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int = 32) {
  const int src = ::emu::self().lane - static_cast<int>(delta);
  return ::emu::shfl_pick(mask, v, src >= 0 ? src : ::emu::self().lane);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  const int p = pred != 0;
  const unsigned char* posts = ::emu::warp_exchange(mask, &p, sizeof p);
  unsigned r = 0;
  for (int l = 0; l < 32; ++l) {
    int q;
    std::memcpy(&q, posts + l * ::emu::kSlot, sizeof q);
    if ((mask >> l & 1u) && q) r |= 1u << l;
  }
  return r;
}
inline int __any_sync(unsigned mask, int pred) {
  return __ballot_sync(mask, pred) != 0;
}
inline int __all_sync(unsigned mask, int pred) {
  return __ballot_sync(mask, pred) == __ballot_sync(mask, 1);
}

// Atomics: fibers never run at the same time, so a plain read-modify-write is atomic here.
template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  const T old = *p;
  *p = std::max(old, v);
  return old;
}

// Device math that has no host declaration.
inline float __expf(float x) {
  return std::exp(x);
}
inline float __logf(float x) {
  return std::log(x);
}
inline float __fdividef(float a, float b) {
  return a / b;
}
inline float rsqrtf(float x) {
  return 1.0f / std::sqrt(x);
}
inline double rsqrt(double x) {
  return 1.0 / std::sqrt(x);
}
inline float __saturatef(float x) {
  return std::fmin(std::fmax(x, 0.0f), 1.0f);
}
inline float __int_as_float(int x) {
  return std::bit_cast<float>(x);
}
inline int __float_as_int(float x) {
  return std::bit_cast<int>(x);
}
inline float __uint_as_float(unsigned x) {
  return std::bit_cast<float>(x);
}
inline unsigned __float_as_uint(float x) {
  return std::bit_cast<unsigned>(x);
}
inline int __popc(unsigned x) {
  return __builtin_popcount(x);
}
inline int __clz(int x) {
  return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x));
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __fadd_rn(float a, float b) {
  return a + b;
}
inline float __fsub_rn(float a, float b) {
  return a - b;
}
inline float __fmul_rn(float a, float b) {
  return a * b;
}
inline float __fdiv_rn(float a, float b) {
  return a / b;
}
inline float __fsqrt_rn(float x) {
  return std::sqrt(x);
}
using std::isfinite;
using std::isinf;
using std::isnan;
using std::max;
using std::min;

// The typed overload nvcc's headers provide for kernels.
template <typename T>
inline cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// ---- tensor-core helpers of cuda/mma.cuh, emulated warp-wide --------------------------------
// Same contracts as the inline-PTX versions there (which are compiled only for the GPU).
namespace kd::cuda::mma {
void cp_async_16(void* smem, const void* gmem, bool valid);
inline void cp_async_commit() {}
inline void cp_async_wait_all() {}
void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* p);
void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* p);
void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
inline float fast_exp2(float x) {
  return std::exp2(x);
}
}  // namespace kd::cuda::mma
