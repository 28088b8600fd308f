// A training step's device budget, counted by the emulated runtime (tools/kdemu/runtime.cpp): once
// the trainer is built, a KD step calls neither cudaMalloc nor cudaFree, synchronises the host
// exactly once, and returns every stream-ordered scratch buffer it takes within the step.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "engine/train/cuda_backend.h"
#include "model/gpt2.h"

namespace {

TEST(EmulatedStep, NoAllocationAndOneHostSyncPerStep) {
  kd::GPT2Config sc;
  sc.n_layer = 2;
  sc.n_head = 2;
  sc.n_embd = 128;
  sc.vocab_size = 301;
  sc.block_size = 64;
  kd::GPT2Config tc = sc;
  tc.n_head = 4;
  tc.n_embd = 256;
  tc.vocab_size = 320;
  kd::GPT2 student(sc), teacher(tc);
  student.init_random(1);
  teacher.init_random(2);
  kd::LossConfig loss;
  loss.ce_weight = 0.5f;
  loss.kd_weight = 0.5f;
  loss.temperature = 2.0f;
  constexpr int kB = 2, kT = 64, kA = 2, kSteps = 3;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> tok(0, sc.vocab_size - 1);
  std::vector<int32_t> inputs(kA * kB * kT), targets(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    inputs[i] = tok(rng);
    targets[i] = i % 11 == 0 ? -1 : tok(rng);
  }

  kd::CudaBackend tr(student, &teacher, loss, kd::AdamWConfig{}, {kB, kT, kA});
  ASSERT_TRUE(tr.step(inputs.data(), targets.data(), 1e-3f, 1.0f, 1).finite);
  const emu::RuntimeCounts before = emu::runtime_counts();
  for (int t = 2; t < 2 + kSteps; ++t)
    ASSERT_TRUE(tr.step(inputs.data(), targets.data(), 1e-3f, 1.0f, t).finite);
  const emu::RuntimeCounts after = emu::runtime_counts();

  EXPECT_EQ(after.mallocs - before.mallocs, 0) << "cudaMalloc inside a step";
  EXPECT_EQ(after.frees - before.frees, 0) << "cudaFree inside a step";
  EXPECT_EQ(after.host_syncs - before.host_syncs, kSteps) << "host synchronisations per step";
  EXPECT_EQ(after.async_mallocs - before.async_mallocs, after.async_frees - before.async_frees)
      << "stream-ordered scratch not returned within the step";
  const long long launches = (after.launches - before.launches) / kSteps;
  EXPECT_GT(launches, 50) << "a KD step of two layers launches far more kernels than that";
  std::printf("per step: %lld kernel launches, %lld stream-ordered scratch allocations\n", launches,
              (after.async_mallocs - before.async_mallocs) / kSteps);
}

}  // namespace
