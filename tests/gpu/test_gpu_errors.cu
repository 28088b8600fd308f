// The CUDA side of the exception policy (engine/base/error.h): KD_CUDA_CHECK, the one check for
// CUDA runtime and cuBLASLt calls, throws kd::CudaError naming the call; a kernel wrapper's broken
// precondition throws kd::ContractError before anything is launched (so those tests need no GPU).
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cuda/adamw.cuh"
#include "cuda/kd_loss.cuh"
#include "cuda/layernorm.cuh"
#include "cuda/matmul.cuh"
#include "engine/ops/ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace {

using kd::AdamWConfig;
using kd::Divergence;
using kd::LossConfig;
using kd::LossSums;
using kd::cuda::bf16;
using kd::test::DeviceBuffer;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Runs f, expects E, returns its message ("" and a failure when nothing or something else came).
template <class E>
std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no exception";
  return "";
}

// Fake device pointers for calls that must throw before touching memory.
template <class T>
T* fake(uintptr_t addr) {
  return reinterpret_cast<T*>(addr);
}

TEST(CudaCheck, SuccessEvaluatesTheCallOnce) {
  int calls = 0;
  auto ok = [&] {
    ++calls;
    return cudaSuccess;
  };
  KD_CUDA_CHECK(ok());
  auto lt_ok = [&] {
    ++calls;
    return CUBLAS_STATUS_SUCCESS;
  };
  KD_CUDA_CHECK(lt_ok());
  EXPECT_EQ(calls, 2);
}

TEST(CudaCheck, RejectsAFailedRuntimeCallWithItsTextAndResetsTheLastError) {
  KD_REQUIRE_GPU();
  void* p = nullptr;
  const size_t huge = size_t{1} << 60;
  const std::string msg = message_of<kd::CudaError>([&] { KD_CUDA_CHECK(cudaMalloc(&p, huge)); });
  EXPECT_TRUE(contains(msg, "test_gpu_errors.cu:")) << msg;
  EXPECT_TRUE(contains(msg, "cudaMalloc(&p, huge) failed: ")) << msg;
  EXPECT_TRUE(contains(msg, cudaGetErrorString(cudaErrorMemoryAllocation))) << msg;
  // The check cleared the runtime's last error: the next launch check sees only its own launch.
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(CudaCheck, RejectsAFailedCublasStatusByName) {
  auto lt_call = [](cublasStatus_t s) { return s; };
  std::string msg =
      message_of<kd::CudaError>([&] { KD_CUDA_CHECK(lt_call(CUBLAS_STATUS_NOT_SUPPORTED)); });
  EXPECT_TRUE(contains(msg,
                       "lt_call(CUBLAS_STATUS_NOT_SUPPORTED) failed: "
                       "CUBLAS_STATUS_NOT_SUPPORTED (status 15)"))
      << msg;
  msg = message_of<kd::CudaError>([&] { KD_CUDA_CHECK(lt_call(CUBLAS_STATUS_INVALID_VALUE)); });
  EXPECT_TRUE(contains(msg, "CUBLAS_STATUS_INVALID_VALUE (status 7)")) << msg;
}

// ---- kernel wrappers' preconditions -------------------------------------------------------------

TEST(CudaPreconditions, KdLossRejectsBrokenPreconditions) {
  const int N = 4, V = 16;
  const bf16* logits = fake<const bf16>(4096);
  const bf16* teacher = fake<const bf16>(8192);
  const int32_t* targets = fake<const int32_t>(12288);
  LossConfig ok;
  ok.divergence = Divergence::JSD;
  ok.kd_weight = 0.5f;
  auto call = [&](const bf16* z, const bf16* t, int Vt, int n, int v, const LossConfig& cfg,
                  int Vs = -1) {
    return [=] {
      kd::cuda::kd_loss(nullptr, nullptr, z, Vs < 0 ? v : Vs, t, Vt, targets, n, v, cfg, 1.0f,
                        nullptr);
    };
  };
  using E = kd::ContractError;
  EXPECT_TRUE(contains(message_of<E>(call(logits, teacher, V, -1, V, ok)), "row count N"));
  EXPECT_TRUE(contains(message_of<E>(call(logits, teacher, V, N, 0, ok)), "vocabulary size V"));
  EXPECT_TRUE(contains(message_of<E>(call(nullptr, teacher, V, N, V, ok)), "must not be null"));
  EXPECT_TRUE(contains(message_of<E>(call(logits, teacher, V - 1, N, V, ok)), "row stride Vt"));
  EXPECT_TRUE(
      contains(message_of<E>(call(logits, teacher, V, N, V, ok, V - 1)), "student row stride Vs"));
  LossConfig bad = ok;
  bad.temperature = 0.0f;
  EXPECT_TRUE(contains(message_of<E>(call(logits, teacher, V, N, V, bad)), "temperature"));
  bad = ok;
  bad.beta = 1.5f;
  const std::string msg = message_of<E>(call(logits, teacher, V, N, V, bad));
  EXPECT_TRUE(contains(msg, "kd_loss.cu:")) << msg;
  EXPECT_TRUE(contains(msg, "contract violated: (")) << msg;
  EXPECT_TRUE(contains(msg, "JSD beta must be in [0, 1], got 1.5")) << msg;
}

// The same call with its preconditions met goes through (so the throws above are the checks').
TEST(CudaPreconditions, KdLossWithPreconditionsMetRuns) {
  KD_REQUIRE_GPU();
  const int N = 4, V = 16;
  std::vector<bf16> z(N * V), t(N * V);
  for (int i = 0; i < N * V; ++i) {
    z[i] = __float2bfloat16(0.1f * static_cast<float>((i * 7) % 13) - 0.6f);
    t[i] = __float2bfloat16(0.05f * static_cast<float>((i * 5) % 11) - 0.2f);
  }
  const std::vector<int32_t> tg = {3, -1, 15, 0};
  DeviceBuffer<bf16> dz(z), dt(t), dg(z.size());
  DeviceBuffer<int32_t> dtg(tg);
  DeviceBuffer<LossSums> sums(std::vector<LossSums>(1));
  LossConfig ok;
  ok.divergence = Divergence::JSD;
  ok.kd_weight = 0.5f;
  kd::cuda::kd_loss(dg.get(), sums.get(), dz.get(), V, dt.get(), V, dtg.get(), N, V, ok, 1.0f / 3,
                    nullptr);
  KD_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(sums.download()[0].rows, 3);
}

TEST(CudaPreconditions, AdamWRejectsBrokenPreconditions) {
  AdamWConfig ok;
  auto call = [&](const AdamWConfig& cfg, int t) {
    return [=] {
      kd::cuda::adamw_update(fake<bf16>(4096), fake<float>(8192), fake<const float>(12288),
                             fake<float>(16384), fake<float>(20480),
                             fake<const kd::ParamSpan>(24576), 1, 8, cfg, t, 1.0f, nullptr, {},
                             nullptr);
    };
  };
  using E = kd::ContractError;
  EXPECT_TRUE(contains(message_of<E>(call(ok, 0)), "step t must be >= 1, got 0"));
  AdamWConfig bad = ok;
  bad.beta2 = 1.0f;
  EXPECT_TRUE(contains(message_of<E>(call(bad, 1)), "beta1 and beta2 must be in [0, 1)"));
}

TEST(CudaPreconditions, MatmulRejectsBrokenPreconditions) {
  bf16* p = fake<bf16>(4096);
  using E = kd::ContractError;
  using kd::cuda::Layout;
  EXPECT_TRUE(contains(message_of<E>([&] {
                         kd::cuda::matmul_forward(p, p, p, nullptr, -1, 8, 8, Layout::InOut, false,
                                                  nullptr, nullptr);
                       }),
                       "matmul_forward: negative size N=-1"));
  EXPECT_TRUE(contains(message_of<E>([&] {
                         kd::cuda::matmul_forward(p, p, p, nullptr, 8, 8, 8, Layout::InOut, true,
                                                  nullptr, nullptr);
                       }),
                       "gelu_epilogue needs pre_gelu"));
  EXPECT_TRUE(contains(message_of<E>([&] {
                         kd::cuda::matmul_forward(p, p, p, nullptr, 8, 0, 8, Layout::InOut, false,
                                                  nullptr, nullptr);
                       }),
                       "C = 0 is not supported"));
  EXPECT_TRUE(contains(message_of<E>([&] {
                         kd::cuda::matmul_backward(p, nullptr, nullptr, p, p, p, 8, 8, -8,
                                                   Layout::InOut, nullptr);
                       }),
                       "matmul_backward: negative size"));
}

TEST(CudaPreconditions, LayerNormBackwardRejectsAWidthBeyondSharedMemory) {
  bf16* p = fake<bf16>(4096);
  float* f = fake<float>(8192);
  const int C = 1 << 15;  // two fp32 rows of C per warp exceed the block's shared memory
  const std::string msg = message_of<kd::ContractError>(
      [&] { kd::cuda::layernorm_backward(p, f, f, p, p, p, f, f, 4, C, nullptr); });
  EXPECT_TRUE(contains(msg, "layernorm_backward: C=32768 needs more shared memory")) << msg;
}

}  // namespace
