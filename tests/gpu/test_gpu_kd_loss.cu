// The fused distillation loss kernel against the plainly written CPU reference
// kd::cpu::ref::kd_loss: every divergence (forward KL, reverse KL, JSD at several beta and at its
// KL ends), plain CE, T in {0.5, 1, 2, 4}, masked rows, a padded teacher vocabulary (padding is
// NaN: reading it would show), a padded student row stride (the padding columns of dlogits must
// come out exactly 0), both the 16-byte vector path (strides that are multiples of 8) and the
// one-by-one path (odd strides), the gradient written in place over the logits or into a poisoned
// buffer, evaluation without a gradient, and the real vocabulary: V = 50257 with the padded widths
// 50304 (the row fits the shared-memory cache) and V = 60000 (it does not: the uncached path).
// Inputs are rounded to bf16 first and fed to the reference as floats.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cuda/kd_loss.cuh"
#include "engine/ops/cpu/ops.h"
#include "engine/ops/cpu/reference/ops_ref.h"
#include "tests/gpu/gpu_test_util.h"

namespace {

using kd::Divergence;
using kd::LossConfig;
using kd::LossSums;
using kd::cuda::bf16;
using kd::test::close_norm;
using kd::test::DeviceBuffer;
using kd::test::kBf16Tol;
using kd::test::random_uniform;
using kd::test::round_to_bf16;

// Row sums are fp32 per row on the GPU (double on the CPU) and summed in double on both sides.
constexpr double kSumTol = 1e-4;

struct Case {
  int N, V, Vs, Vt;  // Vs: the student's row stride (>= V); Vt = 0: no teacher (plain CE)
  Divergence div;
  float beta;
  float temperature;
  bool t2;
  bool in_place;  // gradient over the logits, else into a separate buffer
  bool with_grad;
};

std::string name_of(const Case& c) {
  const char* d = c.div == Divergence::ForwardKL   ? "FKL"
                  : c.div == Divergence::ReverseKL ? "RKL"
                                                   : "JSD";
  std::string s = "N" + std::to_string(c.N) + "_V" + std::to_string(c.V) + "_Vs" +
                  std::to_string(c.Vs) + "_Vt" + std::to_string(c.Vt) + "_" + d + "_b" +
                  std::to_string(static_cast<int>(c.beta * 100)) + "_T" +
                  std::to_string(static_cast<int>(c.temperature * 10)) + (c.t2 ? "_t2" : "") +
                  (c.in_place ? "_inplace" : "") + (c.with_grad ? "" : "_nograd");
  return s;
}

::testing::AssertionResult sum_close(double gpu, double cpu, double scale, const char* what) {
  const double err = std::fabs(gpu - cpu) / std::max(std::fabs(cpu), scale);
  if (std::isnan(gpu) || !(err <= kSumTol))
    return ::testing::AssertionFailure()
           << what << ": gpu " << gpu << " cpu " << cpu << " rel " << err;
  return ::testing::AssertionSuccess();
}

void run_case(const Case& c) {
  const int N = c.N, V = c.V, Vs = c.Vs, Vt = c.Vt;
  const bool teacher = Vt > 0;
  std::mt19937 rng(17 + N * 31 + V + Vs + Vt + static_cast<int>(c.div) * 7 +
                   static_cast<int>(c.temperature * 10));
  auto z = random_uniform(static_cast<size_t>(N) * V, rng, -4, 4);
  // The student's rows on the device: stride Vs, the padding columns random (as padded logits
  // would not be, so a gradient that leaves them alone shows).
  std::vector<float> zs = random_uniform(static_cast<size_t>(N) * Vs, rng, -4, 4);
  std::vector<float> t;
  if (teacher) {
    // Teacher = student + noise, so the two distributions are related as in real distillation.
    t.assign(static_cast<size_t>(N) * Vt, std::numeric_limits<float>::quiet_NaN());
    std::normal_distribution<float> noise(0.0f, 1.5f);
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < V; ++k)
        t[static_cast<size_t>(n) * Vt + k] = z[static_cast<size_t>(n) * V + k] + noise(rng);
  }
  std::vector<int32_t> targets(N);
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  for (int n = 0; n < N; ++n) targets[n] = (n % 5 == 3) ? -1 : tok(rng);  // every 5th row masked
  round_to_bf16(z);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < V; ++k)
      zs[static_cast<size_t>(n) * Vs + k] = z[static_cast<size_t>(n) * V + k];
  const auto z_h = round_to_bf16(zs);
  std::vector<bf16> t_h;
  if (teacher) {
    t_h.resize(t.size());
    for (size_t i = 0; i < t.size(); ++i) {
      t_h[i] = __float2bfloat16(t[i]);
      t[i] = __bfloat162float(t_h[i]);  // NaN padding stays NaN
    }
  }
  LossConfig cfg;
  cfg.ce_weight = 0.7f;
  cfg.kd_weight = teacher ? 0.6f : 0.0f;
  cfg.temperature = c.temperature;
  cfg.divergence = c.div;
  cfg.beta = c.beta;
  cfg.t2_scaling = c.t2;
  const float inv_norm = 1.0f / static_cast<float>(N);

  // Both sides start from the same non-zero sums: the call adds.
  LossSums start;
  start.loss = 1.25;
  start.ce = 0.5;
  start.kd = 0.25;
  start.kl = 0.125;
  start.teacher_entropy = 2.0;
  start.student_entropy = 3.0;
  start.rows = 11;
  LossSums cpu_sums = start;
  std::vector<float> dz_cpu(z.size());
  kd::cpu::ref::kd_loss(c.with_grad ? dz_cpu.data() : nullptr, &cpu_sums, z.data(),
                        teacher ? t.data() : nullptr, Vt, targets.data(), N, V, cfg, inv_norm);

  DeviceBuffer<bf16> d_z(z_h), d_dz(c.in_place ? 0 : zs.size());
  DeviceBuffer<bf16> d_t(t_h);
  DeviceBuffer<int32_t> d_targets(targets);
  DeviceBuffer<LossSums> d_sums(std::vector<LossSums>{start});
  bf16* dz = nullptr;
  if (c.with_grad) {
    if (c.in_place) {
      dz = d_z.get();
    } else {
      d_dz.poison();
      dz = d_dz.get();
    }
  }
  kd::cuda::kd_loss(dz, d_sums.get(), d_z.get(), Vs, teacher ? d_t.get() : nullptr, Vt,
                    d_targets.get(), N, V, cfg, inv_norm, 0);
  const LossSums g = d_sums.download()[0];
  EXPECT_EQ(g.rows, cpu_sums.rows);
  EXPECT_TRUE(sum_close(g.loss, cpu_sums.loss, 1e-3, "loss"));
  EXPECT_TRUE(sum_close(g.ce, cpu_sums.ce, 1e-3, "ce"));
  EXPECT_TRUE(sum_close(g.kd, cpu_sums.kd, 1e-3, "kd"));
  EXPECT_TRUE(sum_close(g.kl, cpu_sums.kl, 1e-3, "kl"));
  EXPECT_TRUE(sum_close(g.teacher_entropy, cpu_sums.teacher_entropy, 1e-3, "teacher_entropy"));
  EXPECT_TRUE(sum_close(g.student_entropy, cpu_sums.student_entropy, 1e-3, "student_entropy"));
  if (c.with_grad) {
    const auto all = c.in_place ? d_z.download() : d_dz.download();
    std::vector<bf16> got(static_cast<size_t>(N) * V);
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < V; ++k)
        got[static_cast<size_t>(n) * V + k] = all[static_cast<size_t>(n) * Vs + k];
    EXPECT_TRUE(close_norm(got, dz_cpu, kBf16Tol, "dlogits"));
    // Masked rows and the padding columns of every row are exactly zero.
    for (int n = 0; n < N; ++n) {
      for (int k = targets[n] >= 0 ? V : 0; k < Vs; ++k) {
        const float v = __bfloat162float(all[static_cast<size_t>(n) * Vs + k]);
        if (v != 0.0f) {
          ADD_FAILURE() << (k < V ? "masked row " : "padding of row ") << n << " column " << k
                        << " has gradient " << v;
          return;
        }
      }
    }
  } else {
    // Evaluation must leave the logits untouched.
    const auto after = d_z.download();
    EXPECT_EQ(0, std::memcmp(after.data(), z_h.data(), after.size() * sizeof(bf16)));
  }
}

class GpuKdLoss : public ::testing::TestWithParam<Case> {};

TEST_P(GpuKdLoss, MatchesCpu) {
  KD_REQUIRE_GPU();
  run_case(GetParam());
}

std::vector<Case> small_cases() {
  std::vector<Case> out;
  const struct {
    int N, V, Vs, Vt;
  } shapes[] = {
      {7, 37, 37, 37},     // odd strides: every column one by one
      {5, 131, 192, 136},  // padded strides (multiples of 8): 16-byte vectors and a tail of 3
      {6, 67, 67, 70},     // teacher stride not a multiple of 8: one by one
      {13, 3001, 3008, 3008},
  };
  for (const auto& s : shapes) {
    for (float T : {0.5f, 1.0f, 2.0f, 4.0f}) {
      out.push_back({s.N, s.V, s.Vs, s.Vt, Divergence::ForwardKL, 0.5f, T, true, true, true});
      out.push_back({s.N, s.V, s.Vs, s.Vt, Divergence::ReverseKL, 0.5f, T, true, false, true});
      out.push_back({s.N, s.V, s.Vs, s.Vt, Divergence::JSD, 0.5f, T, true, true, true});
    }
    for (float beta : {0.1f, 0.9f})
      out.push_back({s.N, s.V, s.Vs, s.Vt, Divergence::JSD, beta, 2.0f, true, false, true});
    out.push_back({s.N, s.V, s.Vs, 0, Divergence::ForwardKL, 0.5f, 1.0f, true, true, true});  // CE
  }
  // JSD at its ends takes the KL formulas; no T^2; evaluation without gradient.
  out.push_back({6, 257, 264, 260, Divergence::JSD, 0.0f, 2.0f, true, true, true});
  out.push_back({6, 257, 264, 260, Divergence::JSD, 1.0f, 2.0f, true, true, true});
  out.push_back({6, 257, 264, 264, Divergence::ForwardKL, 0.5f, 2.0f, false, false, true});
  out.push_back({6, 257, 257, 260, Divergence::JSD, 0.3f, 0.5f, true, true, false});
  out.push_back({6, 257, 264, 264, Divergence::ReverseKL, 0.3f, 1.0f, true, true, false});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Small, GpuKdLoss, ::testing::ValuesIn(small_cases()),
                         [](const auto& info) { return name_of(info.param); });

// The real vocabulary, unpadded (odd V: rows not 4-byte aligned) and padded to 50304 as the GPU
// model holds it; and V = 60000, whose row pair (240 KB) does not fit the shared-memory cache.
INSTANTIATE_TEST_SUITE_P(
    Gpt2Vocab, GpuKdLoss,
    ::testing::Values(
        Case{4, 50257, 50257, 50304, Divergence::ForwardKL, 0.5f, 2.0f, true, true, true},
        Case{4, 50257, 50304, 50304, Divergence::ReverseKL, 0.5f, 0.5f, true, true, true},
        Case{4, 50257, 50304, 50304, Divergence::JSD, 0.5f, 2.0f, true, true, true},
        Case{4, 50257, 50304, 50304, Divergence::JSD, 0.1f, 0.5f, true, false, true},
        Case{4, 50257, 50304, 0, Divergence::ForwardKL, 0.5f, 1.0f, true, true, true},
        Case{3, 60000, 60032, 60032, Divergence::JSD, 0.5f, 4.0f, true, true, true},
        Case{3, 60000, 60032, 60032, Divergence::ReverseKL, 0.5f, 1.0f, true, true, true},
        Case{3, 60000, 60000, 60001, Divergence::ForwardKL, 0.5f, 2.0f, true, false, true},
        Case{256, 50257, 50304, 50304, Divergence::ForwardKL, 0.5f, 2.0f, true, true, true}),
    [](const auto& info) { return name_of(info.param); });

TEST(GpuKdLossDeterminism, SameSumsEveryRun) {
  KD_REQUIRE_GPU();
  const int N = 64, V = 5000;
  std::mt19937 rng(3);
  auto z = random_uniform(static_cast<size_t>(N) * V, rng, -4, 4);
  auto t = random_uniform(static_cast<size_t>(N) * V, rng, -4, 4);
  std::vector<int32_t> targets(N, 42);
  DeviceBuffer<bf16> d_z(round_to_bf16(z)), d_t(round_to_bf16(t));
  DeviceBuffer<int32_t> d_targets(targets);
  LossConfig cfg;
  cfg.kd_weight = 1.0f;
  cfg.temperature = 2.0f;
  cfg.divergence = Divergence::JSD;
  std::vector<LossSums> runs;
  for (int r = 0; r < 3; ++r) {
    DeviceBuffer<LossSums> d_sums(std::vector<LossSums>{LossSums{}});
    kd::cuda::kd_loss(nullptr, d_sums.get(), d_z.get(), V, d_t.get(), V, d_targets.get(), N, V, cfg,
                      1.0f, 0);
    runs.push_back(d_sums.download()[0]);
  }
  for (int r = 1; r < 3; ++r) {
    EXPECT_EQ(runs[r].loss, runs[0].loss);
    EXPECT_EQ(runs[r].kd, runs[0].kd);
    EXPECT_EQ(runs[r].student_entropy, runs[0].student_entropy);
  }
}

}  // namespace
