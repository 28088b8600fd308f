// Checks of the emulator itself (tools/kdemu/emu.h): that it catches what it claims to catch — a
// missing __syncthreads, a read past a buffer's end, a divergent barrier, a launch over the shared
// memory limit — and that its warp shuffles and tensor-core fragments follow the documented
// layouts (checked against plain loops over the same matrices).
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "cuda/mma.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace {

using kd::cuda::bf16;
using kd::test::DeviceBuffer;

constexpr int kThreads = 256;

// Sums `in` (one value per thread) through shared memory; `with_barrier` = false drops the barrier
// between each warp's write and the final reads: a real race.
__global__ void block_total(float* out, const float* in, bool with_barrier) {
  __shared__ float partial[kThreads / 32];
  float v = in[threadIdx.x];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  if (with_barrier) __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  out[threadIdx.x] = total;
}

std::vector<float> run_block_total(bool with_barrier) {
  std::vector<float> in(kThreads);
  for (int i = 0; i < kThreads; ++i) in[i] = static_cast<float>(i % 7 + 1);
  DeviceBuffer<float> d_in(in), d_out(kThreads);
  block_total<<<1, kThreads>>>(d_out.get(), d_in.get(), with_barrier);
  KD_CUDA_CHECK(cudaGetLastError());
  return d_out.download();
}

TEST(Emulator, BarrierMakesTheSumRightAndItsAbsenceShows) {
  float expect = 0.0f;
  for (int i = 0; i < kThreads; ++i) expect += static_cast<float>(i % 7 + 1);
  for (float v : run_block_total(true)) EXPECT_EQ(v, expect);
  int wrong = 0;
  for (float v : run_block_total(false)) wrong += v != expect;
  EXPECT_GT(wrong, 0) << "the emulator let a missing __syncthreads pass";
}

__global__ void read_one_past(float* out, const float* in, int n) {
  out[0] = in[n - 1 + threadIdx.x * 4];  // thread 0 reads the last value, thread 1 12 bytes past it
}

void launch_read_one_past() {
  DeviceBuffer<float> in(64);
  DeviceBuffer<float> out(1);
  read_one_past<<<1, 2>>>(out.get(), in.get(), 64);
}

TEST(EmulatorDeathTest, ReadPastTheEndStopsWithTheKernelName) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      launch_read_one_past(),
      "kernel read_one_past, block \\(0,0,0\\), thread \\(1,0,0\\): invalid memory access");
}

__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1.0f;
  __syncthreads();
}

void launch_divergent_barrier() {
  DeviceBuffer<float> out(64);
  divergent_barrier<<<1, 64>>>(out.get());
}

TEST(EmulatorDeathTest, DivergentBarrierIsADeadlock) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(launch_divergent_barrier(), "deadlock");
}

__global__ void uses_dynamic_smem(float* out) {
  extern __shared__ float dyn[];
  dyn[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = dyn[blockDim.x - 1 - threadIdx.x];
}

TEST(Emulator, DynamicSharedMemoryAbove48KiBNeedsTheAttribute) {
  DeviceBuffer<float> out(32);
  const size_t big = 64 * 1024;
  uses_dynamic_smem<<<1, 32, big>>>(out.get());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  KD_CUDA_CHECK(
      cudaFuncSetAttribute(uses_dynamic_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, big));
  out.poison();
  uses_dynamic_smem<<<1, 32, big>>>(out.get());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> got = out.download();
  for (int i = 0; i < 32; ++i) EXPECT_EQ(got[i], static_cast<float>(31 - i));
}

__global__ void shuffles(int* out) {
  const int lane = threadIdx.x % 32;
  const int v = 100 * (threadIdx.x / 32) + lane;
  out[4 * threadIdx.x + 0] = __shfl_xor_sync(0xffffffffu, v, 5);
  out[4 * threadIdx.x + 1] = __shfl_down_sync(0xffffffffu, v, 3);
  out[4 * threadIdx.x + 2] = __shfl_up_sync(0xffffffffu, v, 2);
  out[4 * threadIdx.x + 3] = __shfl_sync(0xffffffffu, v, 7);
}

TEST(Emulator, ShufflesFollowTheirDefinitions) {
  DeviceBuffer<int> out(4 * 64);
  out.poison();
  shuffles<<<1, 64>>>(out.get());
  const std::vector<int> got = out.download();
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32, base = 100 * (t / 32);
    EXPECT_EQ(got[4 * t + 0], base + (lane ^ 5));
    EXPECT_EQ(got[4 * t + 1], base + (lane + 3 < 32 ? lane + 3 : lane));
    EXPECT_EQ(got[4 * t + 2], base + (lane >= 2 ? lane - 2 : lane));
    EXPECT_EQ(got[4 * t + 3], base + 7);
  }
}

// One warp: C (16 x 8) = A (16 x 16, row-major) B (16 x 8, stored transposed as Bt[n][k]) through
// ldmatrix and mma, written out from the accumulator fragments as documented in cuda/mma.cuh.
__global__ void one_mma(float* c, const bf16* a, const bf16* bt) {
  __shared__ __align__(16) bf16 sa[16 * 16];
  __shared__ __align__(16) bf16 sb[16 * 16];
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) {
    sa[i] = a[i];
    sb[i] = i < 128 ? bt[i] : __float2bfloat16(0.0f);
  }
  __syncwarp();
  float acc[2][4] = {};
  uint32_t af[1][4];
  kd::cuda::mma::load_a_frags<1>(af, sa, 16, lane);
  kd::cuda::mma::gemm_rA_Bnk<1, 2>(acc, af, sb, 16, lane);
  const int g = lane / 4, q = lane % 4;
  c[g * 8 + 2 * q] = acc[0][0];
  c[g * 8 + 2 * q + 1] = acc[0][1];
  c[(g + 8) * 8 + 2 * q] = acc[0][2];
  c[(g + 8) * 8 + 2 * q + 1] = acc[0][3];
}

TEST(Emulator, MmaFragmentsGiveTheMatrixProduct) {
  std::mt19937 rng(7);
  std::vector<float> a = kd::test::random_uniform(256, rng, -1, 1);
  std::vector<float> bt = kd::test::random_uniform(128, rng, -1, 1);
  DeviceBuffer<bf16> d_a(kd::test::round_to_bf16(a)), d_bt(kd::test::round_to_bf16(bt));
  DeviceBuffer<float> d_c(128);
  d_c.poison();
  one_mma<<<1, 32>>>(d_c.get(), d_a.get(), d_bt.get());
  const std::vector<float> c = d_c.download();
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double ref = 0.0;
      for (int k = 0; k < 16; ++k) ref += static_cast<double>(a[m * 16 + k]) * bt[n * 16 + k];
      EXPECT_NEAR(c[m * 8 + n], ref, 1e-5) << "m " << m << " n " << n;
    }
}

}  // namespace
