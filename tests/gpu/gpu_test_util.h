// Helpers for the GPU kernel tests: skipping without a GPU, an RAII device buffer, bf16 rounding of
// host data, and the norm-wise comparison against a CPU twin.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <vector>

#include "cuda/common.cuh"
#include "engine/train/device.h"

// Skips the test (with the probe's reason) when no usable GPU is present.
#define KD_REQUIRE_GPU()                                                           \
  do {                                                                             \
    const kd::DeviceInfo& kd_dev_ = kd::probe_device();                            \
    if (!kd_dev_.cuda_usable) GTEST_SKIP() << "no usable GPU: " << kd_dev_.reason; \
  } while (0)

namespace kd::test {

using kd::cuda::bf16;

// Owns n device values of T. Freed on destruction.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n > 0) KD_CUDA_CHECK(cudaMalloc(&ptr_, n * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_) {
    o.ptr_ = nullptr;
    o.n_ = 0;
  }

  T* get() const { return ptr_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& host) {
    if (host.size() != n_) throw std::runtime_error("DeviceBuffer::upload: size mismatch");
    if (n_ > 0)
      KD_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    KD_CUDA_CHECK(cudaDeviceSynchronize());
    if (n_ > 0)
      KD_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  // All bytes 0xFF: NaN for fp32 and bf16, -1 for integers. Outputs are poisoned before a kernel
  // runs, so a value the kernel forgot to write cannot pass.
  void poison() {
    if (n_ > 0) KD_CUDA_CHECK(cudaMemset(ptr_, 0xFF, n_ * sizeof(T)));
  }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

inline std::vector<float> random_uniform(size_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Rounds every value to bf16 in place (so the CPU twin sees exactly the GPU's inputs) and returns
// the bf16 copy.
inline std::vector<bf16> round_to_bf16(std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    out[i] = __float2bfloat16(v[i]);
    v[i] = __bfloat162float(out[i]);
  }
  return out;
}

inline std::vector<float> to_float(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}

// Passes when ||gpu - cpu|| / ||cpu|| <= tol and no GPU value is NaN or infinite where the CPU
// value is finite. The message names the relative error, the first non-finite index, and the first
// index whose error exceeds tol * (|cpu| + rms(cpu)).
inline ::testing::AssertionResult close_norm(const std::vector<float>& gpu,
                                             const std::vector<float>& cpu, double tol,
                                             const char* what = "") {
  if (gpu.size() != cpu.size())
    return ::testing::AssertionFailure() << what << ": size " << gpu.size() << " vs " << cpu.size();
  double diff = 0.0, ref = 0.0;
  long long first_bad = -1, first_nonfinite = -1;
  for (size_t i = 0; i < cpu.size(); ++i) ref += static_cast<double>(cpu[i]) * cpu[i];
  const double rms = cpu.empty() ? 0.0 : std::sqrt(ref / cpu.size());
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double g = gpu[i], c = cpu[i];
    if (!std::isfinite(g) && std::isfinite(c)) {
      if (first_nonfinite < 0) first_nonfinite = static_cast<long long>(i);
      continue;
    }
    diff += (g - c) * (g - c);
    if (first_bad < 0 && std::fabs(g - c) > tol * (std::fabs(c) + rms))
      first_bad = static_cast<long long>(i);
  }
  const double rel = ref > 0.0 ? std::sqrt(diff / ref) : std::sqrt(diff);
  std::ostringstream msg;
  msg << what << ": rel err " << rel << " (tol " << tol << ", n " << cpu.size() << ")";
  if (first_nonfinite >= 0)
    msg << "; first non-finite GPU value at " << first_nonfinite << " (cpu " << cpu[first_nonfinite]
        << ")";
  if (first_bad >= 0)
    msg << "; first large mismatch at " << first_bad << ": gpu " << gpu[first_bad] << " cpu "
        << cpu[first_bad];
  if (first_nonfinite >= 0 || !(rel <= tol)) return ::testing::AssertionFailure() << msg.str();
  return ::testing::AssertionSuccess() << msg.str();
}

inline ::testing::AssertionResult close_norm(const std::vector<bf16>& gpu,
                                             const std::vector<float>& cpu, double tol,
                                             const char* what = "") {
  return close_norm(to_float(gpu), cpu, tol, what);
}

// bf16 outputs: the CPU twin is fp32 and the GPU rounds once to bf16 (2^-9 relative); 1e-2 leaves
// room for fp32 summation-order differences while a wrong term gives errors of order 1e-1 or more.
constexpr double kBf16Tol = 1e-2;
// fp32 outputs computed from identical (bf16-rounded) inputs: only the summation order differs.
constexpr double kF32Tol = 1e-5;

}  // namespace kd::test
