// The chunked LM head + loss on the GPU (cuda::lm_head_kd_loss) against its CPU twin
// kd::cpu::lm_head_kd_loss on the same bf16-rounded inputs, and the GPU's chunked path against its
// own single-chunk (unchunked) path: every divergence, T in {0.5, 1, 2, 4}, chunk sizes that do
// and do not divide N (1, 5, 36, N, N + 13, automatic), masked rows, a padded teacher vocabulary
// whose extra embedding rows are large (their logits must never count), a padded student embedding
// (rows V.. zero, as the GPU model holds it: their gradient must stay exactly zero), evaluation
// without gradients. dh and dwte start from random values: the op adds into them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cuda/lm_head_kd_loss.cuh"
#include "engine/ops/cpu/ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace {

using kd::Divergence;
using kd::LossConfig;
using kd::LossSums;
using kd::cuda::bf16;
using kd::test::close_norm;
using kd::test::DeviceBuffer;
using kd::test::random_uniform;
using kd::test::round_to_bf16;

constexpr int kN = 37, kC = 32, kCt = 64, kV = 131;

struct Inputs {
  int Vs, Vt;  // the two embeddings' rows (>= kV)
  std::vector<float> h, wte, ht, wte_t, dh0, dwte0;
  std::vector<int32_t> targets;
};

Inputs make_inputs(int Vs, int Vt, uint32_t seed) {
  std::mt19937 rng(seed);
  Inputs in;
  in.Vs = Vs;
  in.Vt = Vt;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto normal = [&](size_t n, float sd) {
    std::vector<float> v(n);
    for (float& x : v) x = sd * nd(rng);
    return v;
  };
  in.h = normal(size_t(kN) * kC, 1.0f);
  in.wte = normal(size_t(Vs) * kC, 0.3f);
  for (size_t i = size_t(kV) * kC; i < in.wte.size(); ++i) in.wte[i] = 0.0f;  // padding rows
  in.ht = normal(size_t(kN) * kCt, 1.0f);
  in.wte_t = normal(size_t(Vt) * kCt, 0.25f);
  for (size_t i = size_t(kV) * kCt; i < in.wte_t.size(); ++i) in.wte_t[i] *= 40.0f;  // huge logits
  in.dh0 = random_uniform(size_t(kN) * kC, rng, -0.01f, 0.01f);
  in.dwte0 = random_uniform(size_t(Vs) * kC, rng, -0.01f, 0.01f);
  for (size_t i = size_t(kV) * kC; i < in.dwte0.size(); ++i) in.dwte0[i] = 0.0f;
  std::uniform_int_distribution<int32_t> tok(0, kV - 1);
  in.targets.resize(kN);
  for (int n = 0; n < kN; ++n) in.targets[n] = n % 5 == 2 ? -1 : tok(rng);
  round_to_bf16(in.h);
  round_to_bf16(in.wte);
  round_to_bf16(in.ht);
  round_to_bf16(in.wte_t);
  round_to_bf16(in.dh0);  // dh is bf16 on the GPU
  return in;
}

struct Result {
  LossSums sums;
  std::vector<float> dh, dwte;
};

Result run_gpu(const Inputs& in, bool teacher, bool grad, const LossConfig& cfg, int chunk) {
  std::vector<float> h = in.h, wte = in.wte, ht = in.ht, wte_t = in.wte_t, dh0 = in.dh0;
  DeviceBuffer<bf16> d_h(round_to_bf16(h)), d_wte(round_to_bf16(wte)), d_ht(round_to_bf16(ht)),
      d_wte_t(round_to_bf16(wte_t)), d_dh(round_to_bf16(dh0));
  DeviceBuffer<float> d_dwte(in.dwte0);
  DeviceBuffer<int32_t> d_targets(in.targets);
  DeviceBuffer<LossSums> d_sums(std::vector<LossSums>{LossSums{}});
  const float inv_norm = 1.0f / 29.0f;
  kd::cuda::lm_head_kd_loss(
      grad ? d_dh.get() : nullptr, grad ? d_dwte.get() : nullptr, d_sums.get(), d_h.get(),
      d_wte.get(), in.Vs, teacher ? d_ht.get() : nullptr, teacher ? d_wte_t.get() : nullptr, kCt,
      teacher ? in.Vt : 0, d_targets.get(), kN, kC, kV, cfg, inv_norm, chunk, nullptr, 0);
  Result r;
  r.sums = d_sums.download()[0];
  r.dh = kd::test::to_float(d_dh.download());
  r.dwte = d_dwte.download();
  return r;
}

Result run_cpu(const Inputs& in, bool teacher, const LossConfig& cfg) {
  Result r;
  r.dh = in.dh0;
  r.dwte = in.dwte0;
  // The caller passes the student's embedding cut to its kV rows (the CPU model has no padding);
  // the teacher keeps its padded rows, which the twin, like the GPU, reads on the first kV.
  kd::cpu::lm_head_kd_loss(r.dh.data(), r.dwte.data(), &r.sums, in.h.data(), in.wte.data(),
                           teacher ? in.ht.data() : nullptr, teacher ? in.wte_t.data() : nullptr,
                           kCt, teacher ? in.Vt : 0, in.targets.data(), kN, kC, kV, cfg,
                           1.0f / 29.0f, 0, nullptr);
  return r;
}

::testing::AssertionResult sum_close(double gpu, double cpu, double tol, const char* what) {
  const double err = std::fabs(gpu - cpu) / std::max(std::fabs(cpu), 1e-3);
  if (std::isfinite(gpu) && err <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": gpu " << gpu << " ref " << cpu << " rel " << err << " (tol " << tol << ")";
}

void expect_sums(const LossSums& g, const LossSums& c, double tol, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(g.rows, c.rows);
  EXPECT_TRUE(sum_close(g.loss, c.loss, tol, "loss"));
  EXPECT_TRUE(sum_close(g.ce, c.ce, tol, "ce"));
  EXPECT_TRUE(sum_close(g.kd, c.kd, 2 * tol, "kd"));
  EXPECT_TRUE(sum_close(g.kl, c.kl, 2 * tol, "kl"));
  EXPECT_TRUE(sum_close(g.teacher_entropy, c.teacher_entropy, tol, "teacher_entropy"));
  EXPECT_TRUE(sum_close(g.student_entropy, c.student_entropy, tol, "student_entropy"));
}

// The gradients' increments (what the op added), GPU against reference, norm-wise.
::testing::AssertionResult added_close(const std::vector<float>& gpu, const std::vector<float>& ref,
                                       const std::vector<float>& start, size_t n, double tol,
                                       const char* what) {
  std::vector<float> g(n), r(n);
  for (size_t i = 0; i < n; ++i) {
    g[i] = gpu[i] - start[i];
    r[i] = ref[i] - start[i];
  }
  return close_norm(g, r, tol, what);
}

struct Case {
  Divergence div;
  float beta, temperature;
  bool teacher;
  int Vs, Vt;
};

std::string name_of(const Case& c) {
  const char* d = !c.teacher                       ? "CE"
                  : c.div == Divergence::ForwardKL ? "FKL"
                  : c.div == Divergence::ReverseKL ? "RKL"
                                                   : "JSD";
  return std::string(d) + "_T" + std::to_string(int(c.temperature * 10)) + "_Vs" +
         std::to_string(c.Vs) + "_Vt" + std::to_string(c.Vt);
}

class GpuLmHeadKdLoss : public ::testing::TestWithParam<Case> {};

TEST_P(GpuLmHeadKdLoss, ChunkedMatchesCpuAndUnchunked) {
  KD_REQUIRE_GPU();
  const Case& c = GetParam();
  const Inputs in = make_inputs(c.Vs, c.Vt, 7 + c.Vs + 3 * c.Vt + int(c.div));
  LossConfig cfg;
  cfg.ce_weight = 0.6f;
  cfg.kd_weight = 0.8f;
  cfg.temperature = c.temperature;
  cfg.divergence = c.div;
  cfg.beta = c.beta;
  // The CPU twin on an unpadded student embedding.
  Inputs cpu_in = in;
  cpu_in.wte.resize(size_t(kV) * kC);
  cpu_in.dwte0.resize(size_t(kV) * kC);
  const Result ref = run_cpu(cpu_in, c.teacher, cfg);
  const Result one = run_gpu(in, c.teacher, true, cfg, kN);  // a single chunk: unchunked
  // GPU logits are bf16 (relative rounding 2^-9), the twin's fp32: the loss sums differ by about
  // 1e-3; a wrong term is off by far more.
  expect_sums(one.sums, ref.sums, 4e-3, "unchunked vs cpu");
  EXPECT_TRUE(added_close(one.dh, ref.dh, in.dh0, one.dh.size(), 3e-2, "dh (unchunked vs cpu)"));
  EXPECT_TRUE(
      added_close(one.dwte, ref.dwte, in.dwte0, size_t(kV) * kC, 3e-2, "dwte (unchunked vs cpu)"));
  for (int chunk : {1, 5, 36, kN + 13, 0}) {
    const std::string what = "chunk " + std::to_string(chunk);
    const Result g = run_gpu(in, c.teacher, true, cfg, chunk);
    // Against the single chunk: the same products row by row; only the order in which dwte and
    // the sums receive the chunks differs.
    expect_sums(g.sums, one.sums, 1e-5, what + " vs unchunked");
    EXPECT_TRUE(close_norm(g.dh, one.dh, 1e-5, (what + ": dh").c_str()));
    EXPECT_TRUE(
        added_close(g.dwte, one.dwte, in.dwte0, g.dwte.size(), 1e-5, (what + ": dwte").c_str()));
    // The padding rows of the student's embedding get no gradient at all.
    for (size_t i = size_t(kV) * kC; i < g.dwte.size(); ++i)
      if (g.dwte[i] != 0.0f) {
        ADD_FAILURE() << what << ": padding row " << i / kC << " of dwte got " << g.dwte[i];
        break;
      }
  }
  // Evaluation: the same sums, nothing written into the gradients.
  const Result e = run_gpu(in, c.teacher, false, cfg, 5);
  expect_sums(e.sums, one.sums, 1e-5, "evaluation");
  EXPECT_EQ(e.dwte, in.dwte0);
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (float T : {0.5f, 1.0f, 2.0f, 4.0f}) {
    out.push_back({Divergence::ForwardKL, 0.5f, T, true, kV, 136});
    out.push_back({Divergence::ReverseKL, 0.5f, T, true, 192, 136});
    out.push_back({Divergence::JSD, 0.5f, T, true, 192, 192});
  }
  out.push_back({Divergence::JSD, 0.1f, 2.0f, true, kV, kV});
  out.push_back({Divergence::ForwardKL, 0.5f, 1.0f, false, 192, 0});
  out.push_back({Divergence::ForwardKL, 0.5f, 1.0f, false, kV, 0});
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, GpuLmHeadKdLoss, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return name_of(info.param); });

TEST(GpuLmHeadKdLossChunk, AutomaticSize) {
  // Small steps take one chunk; GPT-2's vocabulary on both sides (201 KB of bf16 logits a row)
  // gives chunks of at most 256 MiB, spread evenly, rounded up to 64 rows.
  EXPECT_EQ(kd::cuda::lm_head_kd_loss_auto_chunk(100, 50304, 50304), 100);
  EXPECT_EQ(kd::cuda::lm_head_kd_loss_auto_chunk(1024, 50304, 50304), 1024);
  // 8192 rows: 1334 rows fit the budget -> 7 chunks -> 1171 rows each -> rounded up to 1216.
  const int c = kd::cuda::lm_head_kd_loss_auto_chunk(8192, 50304, 50304);
  EXPECT_EQ(c, 1216);
  EXPECT_LE(size_t(c) * (50304 + 50304) * 2, size_t(256) << 20);
  // The floor: huge vocabularies still get 1024 rows.
  EXPECT_EQ(kd::cuda::lm_head_kd_loss_auto_chunk(4096, 256000, 256000), 1024);
}

}  // namespace
