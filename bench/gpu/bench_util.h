// Helpers for the GPU benchmarks: device buffers filled on the device, CUDA-event timing, the
// device-to-device copy ceiling, and the rate counters every benchmark reports.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

#include "cuda/common.cuh"
#include "engine/train/device.h"

namespace kd::bench {

using kd::cuda::bf16;

// Uniform values in [lo, hi) from a hash of the index and a seed (no host data needed).
template <typename T>
__global__ void fill_uniform(T* p, size_t n, float lo, float hi, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ull ^ (static_cast<uint64_t>(seed) << 32);
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    const float u = static_cast<float>(x >> 40) * (1.0f / 16777216.0f);
    p[i] = static_cast<T>(lo + (hi - lo) * u);
  }
}

template <typename T>
class Buffer {
 public:
  explicit Buffer(size_t n) : n_(n) { KD_CUDA_CHECK(cudaMalloc(&p_, (n > 0 ? n : 1) * sizeof(T))); }
  ~Buffer() { cudaFree(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  void fill(float lo, float hi, uint32_t seed) {
    fill_uniform<T><<<1024, 256>>>(p_, n_, lo, hi, seed);
    KD_CUDA_CHECK(cudaGetLastError());
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

// How many copies of a working set of `bytes` make the rotation exceed L2 several times over.
inline int rotation_sets(double bytes) {
  const double target = 256.0 * 1024 * 1024;
  int sets = static_cast<int>(target / bytes) + 1;
  return sets < 1 ? 1 : (sets > 16 ? 16 : sets);
}

// Bytes per second of a device-to-device copy of 1 GiB (reads + writes), best of 5: the ceiling.
inline double copy_ceiling() {
  static double ceiling = [] {
    const size_t bytes = size_t{1} << 30;
    void *a = nullptr, *b = nullptr;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
      cudaFree(a);
      return 0.0;
    }
    cudaMemset(a, 1, bytes);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    float best = 1e30f;
    for (int rep = 0; rep < 6; ++rep) {
      cudaEventRecord(e0);
      cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
      cudaEventRecord(e1);
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      if (rep > 0 && ms < best) best = ms;  // the first copy warms up
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return 2.0 * bytes / (best * 1e-3);
  }();
  return ceiling;
}

// Runs `step(i)` (i = iteration number, for rotating inputs) once per benchmark iteration, timed
// with CUDA events, and reports: GB/s (bytes per call / time), TFLOP/s, and frac_copy (GB/s over
// the device-to-device copy ceiling measured in the same process).
inline void run_timed(benchmark::State& state, double bytes, double flops,
                      const std::function<void(int)>& step) {
  if (!kd::probe_device().cuda_usable) {
    state.SkipWithError("no usable GPU");
    return;
  }
  const double ceiling = copy_ceiling();
  for (int w = 0; w < 3; ++w) step(w);  // warm-up
  KD_CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t e0, e1;
  KD_CUDA_CHECK(cudaEventCreate(&e0));
  KD_CUDA_CHECK(cudaEventCreate(&e1));
  double total = 0.0;
  int it = 0;
  for (auto _ : state) {
    KD_CUDA_CHECK(cudaEventRecord(e0));
    step(it++);
    KD_CUDA_CHECK(cudaEventRecord(e1));
    KD_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0.0f;
    KD_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    state.SetIterationTime(ms * 1e-3);
    total += ms * 1e-3;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  KD_CUDA_CHECK(cudaGetLastError());
  const double per_call = it > 0 ? total / it : 0.0;
  if (per_call > 0) {
    state.counters["GBps"] = bytes / per_call * 1e-9;
    state.counters["TFLOPps"] = flops / per_call * 1e-12;
    state.counters["frac_copy"] = ceiling > 0 ? bytes / per_call / ceiling : 0.0;
  }
  state.counters["bytes"] = bytes;
  state.counters["flops"] = flops;
}

}  // namespace kd::bench
