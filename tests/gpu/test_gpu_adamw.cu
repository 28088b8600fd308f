// Mixed-precision AdamW and the global gradient norm against the CPU twins kd::cpu::adamw_update
// and kd::cpu::global_norm. The GPU update uses the CPU twin's operation order with explicitly
// rounded fp32 operations, so master weights and moments are expected to match bit for bit (the
// test allows 1e-6 norm-wise and reports the count of differing values).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/adamw.cuh"
#include "engine/ops/cpu/ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace {

using kd::AdamWConfig;
using kd::ParamSpan;
using kd::cuda::bf16;
using kd::test::close_norm;
using kd::test::DeviceBuffer;
using kd::test::random_uniform;

size_t count_different(const std::vector<float>& a, const std::vector<float>& b) {
  size_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return n;
}

TEST(GpuAdamW, StepsMatchCpuWithClipping) {
  KD_REQUIRE_GPU();
  const size_t n = 300007;
  // Decaying and non-decaying spans, with a gap [1037, 1100) that no span covers.
  const std::vector<ParamSpan> spans = {
      {0, 1000, true}, {1000, 37, false}, {1100, 200000, true}, {201100, n - 201100, false}};
  std::mt19937 rng(11);
  auto master = random_uniform(n, rng, -1, 1);
  auto m = random_uniform(n, rng, -1e-2f, 1e-2f);
  auto v = random_uniform(n, rng, 0.0f, 1e-3f);
  AdamWConfig cfg;
  cfg.lr = 1e-3f;
  cfg.weight_decay = 0.1f;
  const float clip = 1.0f;

  DeviceBuffer<float> d_master(master), d_m(m), d_v(v), d_grads(n), d_norm(1), d_scale(1);
  DeviceBuffer<bf16> d_params(n);
  DeviceBuffer<ParamSpan> d_spans(spans);
  d_params.poison();
  std::vector<float> cpu_master = master, cpu_m = m, cpu_v = v;
  for (int t = 1; t <= 3; ++t) {
    auto grads = random_uniform(n, rng, -0.05f, 0.05f);  // norm ~ 16: clipping active
    d_grads.upload(grads);
    const double norm = kd::cpu::global_norm(grads.data(), n);
    const float scale = norm > clip ? static_cast<float>(clip / norm) : 1.0f;
    kd::cpu::adamw_update(cpu_master.data(), grads.data(), cpu_m.data(), cpu_v.data(), spans, cfg,
                          t, scale);
    d_norm.poison();
    d_scale.poison();
    kd::cuda::global_norm(d_norm.get(), d_scale.get(), d_grads.get(), n, clip, 0);
    kd::cuda::adamw_update(d_params.get(), d_master.get(), d_grads.get(), d_m.get(), d_v.get(),
                           d_spans.get(), static_cast<int>(spans.size()), n, cfg, t, 1.0f,
                           d_scale.get(), {}, 0);
    const float g_norm = d_norm.download()[0], g_scale = d_scale.download()[0];
    EXPECT_NEAR(g_norm, norm, 1e-6 * norm) << "step " << t;
    EXPECT_NEAR(g_scale, scale, 1e-6f) << "step " << t;
  }
  const auto g_master = d_master.download(), g_m = d_m.download(), g_v = d_v.download();
  EXPECT_TRUE(close_norm(g_master, cpu_master, 1e-6, "master"));
  EXPECT_TRUE(close_norm(g_m, cpu_m, 1e-6, "m"));
  EXPECT_TRUE(close_norm(g_v, cpu_v, 1e-6, "v"));
  EXPECT_EQ(count_different(g_master, cpu_master), 0u) << "master values not bit-identical";
  EXPECT_EQ(count_different(g_m, cpu_m), 0u) << "m values not bit-identical";
  EXPECT_EQ(count_different(g_v, cpu_v), 0u) << "v values not bit-identical";
  // The bf16 copy is the nearest bf16 of the master; the gap is untouched (still poisoned).
  const auto params = d_params.download();
  for (size_t i = 0; i < n; ++i) {
    const bool gap = i >= 1037 && i < 1100;
    const bf16 want = __float2bfloat16(g_master[i]);
    if (gap) {
      ASSERT_TRUE(std::isnan(__bfloat162float(params[i]))) << "gap element " << i << " was written";
      ASSERT_EQ(g_master[i], master[i]) << "gap master " << i << " changed";
    } else {
      ASSERT_EQ(std::memcmp(&params[i], &want, sizeof(bf16)), 0)
          << "param " << i << ": " << __bfloat162float(params[i]) << " vs nearest "
          << __bfloat162float(want);
    }
  }
}

TEST(GpuAdamW, GlobalNormMatchesCpuAndIsDeterministic) {
  KD_REQUIRE_GPU();
  for (size_t n : {size_t{1}, size_t{1000}, size_t{65536}, size_t{65537}, size_t{5000001}}) {
    std::mt19937 rng(static_cast<unsigned>(n));
    const auto g = random_uniform(n, rng, -1, 1);
    const double want = kd::cpu::global_norm(g.data(), n);
    DeviceBuffer<float> d_g(g), d_norm(1), d_scale(1);
    float first = 0.0f;
    for (int rep = 0; rep < 2; ++rep) {
      d_norm.poison();
      d_scale.poison();
      kd::cuda::global_norm(d_norm.get(), d_scale.get(), d_g.get(), n, 0.0f, 0);
      const float got = d_norm.download()[0];
      EXPECT_NEAR(got, want, 1e-6 * want) << "n " << n;
      EXPECT_EQ(d_scale.download()[0], 1.0f) << "clip 0 means no clipping";
      if (rep == 0)
        first = got;
      else
        EXPECT_EQ(std::memcmp(&got, &first, sizeof(float)), 0) << "n " << n;
    }
  }
}

TEST(GpuAdamW, StochasticRoundingIsUnbiased) {
  KD_REQUIRE_GPU();
  // lr = 0 keeps the master weights; only the bf16 rounding of them is observed.
  const size_t n = 1 << 20;
  const float ulp = 1.0f / 128.0f;  // bf16 spacing in [1, 2)
  std::vector<float> master(n);
  for (size_t i = 0; i < n; ++i) master[i] = (i % 2 ? -1.0f : 1.0f) * (1.0f + 0.3f * ulp);
  const std::vector<ParamSpan> spans = {{0, n, false}};
  AdamWConfig cfg;
  cfg.lr = 0.0f;
  DeviceBuffer<float> d_master(master), d_m(std::vector<float>(n, 0.0f)),
      d_v(std::vector<float>(n, 0.0f)), d_g(std::vector<float>(n, 0.0f));
  DeviceBuffer<bf16> d_params(n);
  DeviceBuffer<ParamSpan> d_spans(spans);
  std::vector<bf16> previous;
  for (int t = 1; t <= 2; ++t) {
    d_params.poison();
    kd::cuda::adamw_update(d_params.get(), d_master.get(), d_g.get(), d_m.get(), d_v.get(),
                           d_spans.get(), 1, n, cfg, t, 1.0f, nullptr, {true, 1234}, 0);
    const auto p = d_params.download();
    double sum_pos = 0.0, sum_neg = 0.0;
    for (size_t i = 0; i < n; ++i) {
      const float x = __bfloat162float(p[i]);
      const float lo = (i % 2 ? -1.0f : 1.0f), hi = (i % 2 ? -1.0f : 1.0f) * (1.0f + ulp);
      ASSERT_TRUE(x == lo || x == hi) << "element " << i << " rounded to " << x;
      (i % 2 ? sum_neg : sum_pos) += x;
    }
    const double half = n / 2.0;
    // Mean of Bernoulli(0.3) steps: sigma = ulp * sqrt(0.21 / half); allow 6 sigma.
    const double tol = 6.0 * ulp * std::sqrt(0.21 / half);
    EXPECT_NEAR(sum_pos / half, 1.0 + 0.3 * ulp, tol) << "step " << t;
    EXPECT_NEAR(sum_neg / half, -(1.0 + 0.3 * ulp), tol) << "step " << t;
    if (t == 2)
      EXPECT_NE(0, std::memcmp(previous.data(), p.data(), n * sizeof(bf16)))
          << "the rounding noise must change with the step";
    previous = p;
  }
}

}  // namespace
