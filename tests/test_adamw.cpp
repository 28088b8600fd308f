// AdamW (adamw_update) and the gradient norm (global_norm) from engine/ops/cpu/ops.h against
// independent double-precision references. The AdamW reference follows torch.optim.AdamW's
// single-tensor algorithm step by step: decay the parameter, update the moments, bias-correct,
// divide.
//
// Tolerance kTol = 1e-5 relative (norm-wise): fp32 rounds each step's few operations at ~6e-8 and
// the error of a handful of steps stays ~1e-6; a missing bias correction, a wrong decay order or a
// decayed bias is off by 1e-3 or more.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "engine/base/error.h"
#include "engine/ops/cpu/ops.h"
#include "tests/grad_check.h"

namespace {

using kd::AdamWConfig;
using kd::ParamSpan;
using kd::test::random_floats;
using kd::test::rel_err;

constexpr double kTol = 1e-5;

struct RefState {
  std::vector<double> p, m, v;
};

// One torch.optim.AdamW step in double on the spans (the values outside every span stay).
void ref_adamw_step(RefState& s, const std::vector<float>& grads,
                    const std::vector<ParamSpan>& spans, const AdamWConfig& c, int t,
                    double grad_scale) {
  const double lr = c.lr, b1 = c.beta1, b2 = c.beta2, eps = c.eps, wd = c.weight_decay;
  for (const ParamSpan& span : spans) {
    for (size_t i = span.offset; i < span.offset + span.size; ++i) {
      const double g = grads[i] * grad_scale;
      if (span.decay) s.p[i] *= 1.0 - lr * wd;
      s.m[i] = b1 * s.m[i] + (1.0 - b1) * g;
      s.v[i] = b2 * s.v[i] + (1.0 - b2) * g * g;
      const double bc1 = 1.0 - std::pow(b1, t);
      const double bc2 = 1.0 - std::pow(b2, t);
      const double denom = std::sqrt(s.v[i]) / std::sqrt(bc2) + eps;
      s.p[i] -= (lr / bc1) * s.m[i] / denom;
    }
  }
}

double ref_norm(const std::vector<float>& g) {
  double s = 0.0;
  for (float x : g) s += static_cast<double>(x) * static_cast<double>(x);
  return std::sqrt(s);
}

// Spans as a model lays them out: decayed matrices, undecayed biases, with a gap that belongs to
// no span and must stay untouched. Sizes are not powers of two.
std::vector<ParamSpan> make_spans() {
  return {{0, 37, true}, {37, 101, false}, {150, 1003, true}, {1153, 7, false}};
}
constexpr size_t kTotal = 1160;  // [138, 150) is the gap

TEST(AdamW, MatchesTorchAlgorithmOverSteps) {
  std::mt19937 rng(7u);
  const std::vector<ParamSpan> spans = make_spans();
  AdamWConfig cfg;
  cfg.lr = 3e-2f;  // large, so that decay and its order relative to the step are visible
  cfg.weight_decay = 0.5f;
  std::vector<float> p = random_floats(kTotal, rng);
  std::vector<float> m(kTotal, 0.0f), v(kTotal, 0.0f);
  const std::vector<float> p0 = p;
  RefState ref{kd::test::to_double(p), std::vector<double>(kTotal, 0.0),
               std::vector<double>(kTotal, 0.0)};
  const float clip = 1.0f;
  bool clipped = false;
  for (int t = 1; t <= 6; ++t) {
    // Gradients of varying size: scale 3 clips (norm ~ 50 > clip), scale 1e-3 does not.
    const float size = t % 2 ? 3.0f : 1e-3f;
    const std::vector<float> g = random_floats(kTotal, rng, -size, size);
    const double norm = kd::cpu::global_norm(g.data(), g.size());
    const float scale = norm > clip ? static_cast<float>(clip / norm) : 1.0f;
    clipped |= scale < 1.0f;
    kd::cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), spans, cfg, t, scale);
    ref_adamw_step(ref, g, spans, cfg, t, scale);
    SCOPED_TRACE("step " + std::to_string(t));
    EXPECT_LT(rel_err(p, ref.p), kTol);
    EXPECT_LT(rel_err(m, ref.m), kTol);
    EXPECT_LT(rel_err(v, ref.v), kTol);
  }
  EXPECT_TRUE(clipped);
  for (size_t i = 138; i < 150; ++i) EXPECT_EQ(p[i], p0[i]) << "gap value " << i << " changed";
}

// Decay is decoupled: with zero gradient, a decayed parameter shrinks by exactly (1 - lr*wd) per
// step and an undecayed one does not move.
TEST(AdamW, DecoupledDecayOnlyOnDecaySpans) {
  std::mt19937 rng(8u);
  const std::vector<ParamSpan> spans = make_spans();
  AdamWConfig cfg;
  cfg.lr = 0.05f;
  cfg.weight_decay = 0.2f;
  std::vector<float> p = random_floats(kTotal, rng);
  const std::vector<float> p0 = p;
  std::vector<float> m(kTotal, 0.0f), v(kTotal, 0.0f), g(kTotal, 0.0f);
  kd::cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), spans, cfg, 1, 1.0f);
  const double factor = 1.0 - 0.05 * 0.2;
  for (const ParamSpan& s : spans) {
    for (size_t i = s.offset; i < s.offset + s.size; ++i) {
      if (s.decay) {
        EXPECT_NEAR(p[i], p0[i] * factor, 1e-7) << i;
      } else {
        EXPECT_EQ(p[i], p0[i]) << i;
      }
    }
  }
}

TEST(AdamW, GlobalNormMatchesReference) {
  std::mt19937 rng(9u);
  for (size_t n : {size_t{1}, size_t{1000}, size_t{65537}, size_t{(1u << 20) + 37}}) {
    const std::vector<float> g = random_floats(n, rng, -2.0f, 2.0f);
    const double got = kd::cpu::global_norm(g.data(), n);
    const double want = ref_norm(g);
    EXPECT_LT(std::fabs(got - want) / want, 1e-12) << "n=" << n;
  }
  EXPECT_EQ(kd::cpu::global_norm(nullptr, 0), 0.0);
}

// The same inputs give the same bits, whatever the number of threads.
TEST(AdamW, DeterministicAcrossRunsAndThreadCounts) {
  std::mt19937 rng(10u);
  const size_t n = (1u << 20) + 11;
  const std::vector<float> g = random_floats(n, rng, -1.0f, 1.0f);
  const std::vector<float> p0 = random_floats(n, rng);
  const std::vector<ParamSpan> spans = {{0, n / 3, true}, {n / 3, n - n / 3, false}};
  AdamWConfig cfg;

  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> p = p0, m(n, 0.0f), v(n, 0.0f);
    const double norm = kd::cpu::global_norm(g.data(), n);
    const float scale = static_cast<float>(std::min(1.0, 1.0 / norm));
    for (int t = 1; t <= 3; ++t)
      kd::cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), spans, cfg, t, scale);
    return std::make_pair(norm, p);
  };
  const int max_threads = omp_get_max_threads();
  const auto a = run(max_threads);
  const auto b = run(max_threads);
  const auto c = run(1);
  const auto d = run(3);
  omp_set_num_threads(max_threads);
  EXPECT_EQ(a.first, b.first);
  EXPECT_EQ(a.first, c.first);
  EXPECT_EQ(a.first, d.first);
  EXPECT_EQ(a.second, b.second);
  EXPECT_EQ(a.second, c.second);
  EXPECT_EQ(a.second, d.second);
}

TEST(AdamW, BadStepIsAContractError) {
  std::vector<float> p(4, 1.0f), g(4, 1.0f), m(4, 0.0f), v(4, 0.0f);
  const std::vector<ParamSpan> spans = {{0, 4, true}};
  EXPECT_THROW(kd::cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), spans, {}, 0, 1.0f),
               kd::ContractError);
  AdamWConfig bad;
  bad.beta2 = 1.0f;
  EXPECT_THROW(kd::cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), spans, bad, 1, 1.0f),
               kd::ContractError);
}

}  // namespace
