// The chunked, fused LM head + distillation loss lm_head_kd_loss (engine/ops/cpu/ops.h), checked
// two ways at several chunk sizes (1, a non-divisor of N, a divisor, N, more than N, automatic),
// every divergence and T in {0.5, 1, 2, 4}, with a padded teacher vocabulary whose extra columns
// hold large random logits (they must not get any mass):
// - against the unchunked path it replaces: the full logits (matmul_forward), kd_loss over all N
//   rows, matmul_backward into dh and dwte;
// - against a plainly written double-precision reference here (logits as dot products, softmaxes,
//   the divergences and their logit gradients from the textbook formulas, then the two products).
//
// Tolerances:
// - kSameTol = 2e-6 relative, chunked vs unchunked: the per-row math is the same fp32 code; what
//   differs is the BLAS blocking of a chunk's products and the order dwte adds the chunks (a few
//   fp32 roundings, ~1e-7 relative). A chunk whose rows were skipped, counted twice, or normalised
//   by its own row count is off by 1e-2 or more.
// - kRefTol = 2e-5 relative against the double reference: the op's logits are fp32 dot products
//   over C = 24 terms (~1e-7 relative each), the kd_loss tolerance (1e-5) then applies on top.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/base/error.h"
#include "engine/ops/cpu/ops.h"
#include "tests/grad_check.h"

namespace {

using kd::Divergence;
using kd::Layout;
using kd::LossConfig;
using kd::LossSums;
using kd::test::random_floats;
using kd::test::rel_err;

constexpr double kSameTol = 2e-6;
constexpr double kRefTol = 2e-5;

constexpr int N = 37, C = 16, V = 53, Ct = 24, Vt = 64;  // Vt > V: a padded teacher vocabulary

struct Problem {
  std::vector<float> h, wte, ht, wte_t;
  std::vector<int32_t> targets;
};

Problem make_problem(uint32_t seed) {
  std::mt19937 rng(seed);
  Problem p;
  p.h = random_floats(size_t(N) * C, rng, -1.5f, 1.5f);
  p.wte = random_floats(size_t(V) * C, rng, -0.6f, 0.6f);
  p.ht = random_floats(size_t(N) * Ct, rng, -1.5f, 1.5f);
  p.wte_t = random_floats(size_t(Vt) * Ct, rng, -0.6f, 0.6f);
  // The padded rows of the teacher's embedding give big logits: if any padded column were read,
  // the teacher's distribution would move far.
  for (int v = V; v < Vt; ++v)
    for (int c = 0; c < Ct; ++c) p.wte_t[size_t(v) * Ct + c] = 3.0f;
  std::uniform_int_distribution<int> tok(0, V - 1);
  p.targets.resize(N);
  for (int i = 0; i < N; ++i) p.targets[i] = (i % 7 == 3) ? -1 : tok(rng);  // some masked rows
  return p;
}

struct Result {
  LossSums sums;
  std::vector<float> dh, dwte;
};

Result run_chunked(const Problem& p, const LossConfig& cfg, float inv_norm, int chunk,
                   bool teacher = true) {
  Result r{LossSums{}, std::vector<float>(size_t(N) * C), std::vector<float>(size_t(V) * C)};
  kd::cpu::lm_head_kd_loss(r.dh.data(), r.dwte.data(), &r.sums, p.h.data(), p.wte.data(),
                           teacher ? p.ht.data() : nullptr, p.wte_t.data(), Ct, Vt,
                           p.targets.data(), N, C, V, cfg, inv_norm, chunk, nullptr);
  return r;
}

Result run_unchunked(const Problem& p, const LossConfig& cfg, float inv_norm, bool teacher = true) {
  std::vector<float> logits(size_t(N) * V), tlog(size_t(N) * Vt);
  kd::cpu::matmul_forward(logits.data(), p.h.data(), p.wte.data(), nullptr, N, C, V, Layout::OutIn);
  kd::cpu::matmul_forward(tlog.data(), p.ht.data(), p.wte_t.data(), nullptr, N, Ct, Vt,
                          Layout::OutIn);
  Result r{LossSums{}, std::vector<float>(size_t(N) * C), std::vector<float>(size_t(V) * C)};
  kd::cpu::kd_loss(logits.data(), &r.sums, logits.data(), teacher ? tlog.data() : nullptr, Vt,
                   p.targets.data(), N, V, cfg, inv_norm);
  kd::cpu::matmul_backward(r.dh.data(), r.dwte.data(), nullptr, logits.data(), p.h.data(),
                           p.wte.data(), N, C, V, Layout::OutIn);
  return r;
}

// ---- plainly written double-precision reference
// -----------------------------------------------------

std::vector<double> softmax(const std::vector<double>& x, double T) {
  const double mx = *std::max_element(x.begin(), x.end());
  std::vector<double> p(x.size());
  double s = 0;
  for (size_t k = 0; k < x.size(); ++k) s += p[k] = std::exp((x[k] - mx) / T);
  for (double& v : p) v /= s;
  return p;
}

double kl(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t k = 0; k < a.size(); ++k) s += a[k] * std::log(a[k] / b[k]);
  return s;
}

struct RefResult {
  double loss = 0, ce = 0, kd = 0, kl = 0;
  int64_t rows = 0;
  std::vector<double> dh, dwte;
};

RefResult reference(const Problem& p, const LossConfig& cfg, double inv_norm) {
  RefResult r;
  r.dh.assign(size_t(N) * C, 0.0);
  r.dwte.assign(size_t(V) * C, 0.0);
  const double T = cfg.temperature, beta = cfg.beta;
  const double s = cfg.t2_scaling ? T * T : 1.0;
  for (int i = 0; i < N; ++i) {
    if (p.targets[i] < 0) continue;
    std::vector<double> z(V), t(V);  // the teacher only over its first V columns
    for (int v = 0; v < V; ++v) {
      double a = 0, b = 0;
      for (int c = 0; c < C; ++c) a += double(p.h[size_t(i) * C + c]) * p.wte[size_t(v) * C + c];
      for (int c = 0; c < Ct; ++c)
        b += double(p.ht[size_t(i) * Ct + c]) * p.wte_t[size_t(v) * Ct + c];
      z[v] = a;
      t[v] = b;
    }
    const std::vector<double> q1 = softmax(z, 1.0), q = softmax(z, T), pt = softmax(t, T);
    const int y = p.targets[i];
    const double ce = -std::log(q1[y]);
    double D = 0;
    std::vector<double> dD(V);  // dD/dz
    if (cfg.divergence == Divergence::ForwardKL) {
      D = kl(pt, q);
      for (int v = 0; v < V; ++v) dD[v] = (q[v] - pt[v]) / T;
    } else if (cfg.divergence == Divergence::ReverseKL) {
      D = kl(q, pt);
      for (int v = 0; v < V; ++v) dD[v] = q[v] * (std::log(q[v] / pt[v]) - D) / T;
    } else {
      std::vector<double> m(V);
      for (int v = 0; v < V; ++v) m[v] = beta * pt[v] + (1 - beta) * q[v];
      const double klpm = kl(pt, m), klqm = kl(q, m);
      D = (beta * klpm + (1 - beta) * klqm) / (beta * (1 - beta));
      for (int v = 0; v < V; ++v) dD[v] = q[v] * (std::log(q[v] / m[v]) - klqm) / (beta * T);
    }
    r.loss += cfg.ce_weight * ce + cfg.kd_weight * s * D;
    r.ce += ce;
    r.kd += D;
    r.kl += kl(pt, q);
    ++r.rows;
    for (int v = 0; v < V; ++v) {
      const double g =
          inv_norm * (cfg.ce_weight * (q1[v] - (v == y ? 1.0 : 0.0)) + cfg.kd_weight * s * dD[v]);
      for (int c = 0; c < C; ++c) {
        r.dh[size_t(i) * C + c] += g * p.wte[size_t(v) * C + c];
        r.dwte[size_t(v) * C + c] += g * p.h[size_t(i) * C + c];
      }
    }
  }
  return r;
}

double rel(double a, double b) {
  return std::abs(a - b) / std::max(1e-12, std::abs(b));
}

void expect_same(const Result& a, const Result& b, const char* what) {
  EXPECT_LT(rel(a.sums.loss, b.sums.loss), kSameTol) << what;
  EXPECT_LT(rel(a.sums.ce, b.sums.ce), kSameTol) << what;
  EXPECT_LT(rel(a.sums.kd + 1.0, b.sums.kd + 1.0), kSameTol) << what;  // kd may be 0 (no teacher)
  EXPECT_LT(rel(a.sums.kl + 1.0, b.sums.kl + 1.0), kSameTol) << what;
  EXPECT_LT(rel(a.sums.teacher_entropy + 1.0, b.sums.teacher_entropy + 1.0), kSameTol) << what;
  EXPECT_LT(rel(a.sums.student_entropy, b.sums.student_entropy), kSameTol) << what;
  EXPECT_EQ(a.sums.rows, b.sums.rows) << what;
  EXPECT_LT(rel_err(a.dh, kd::test::to_double(b.dh)), kSameTol) << what;
  EXPECT_LT(rel_err(a.dwte, kd::test::to_double(b.dwte)), kSameTol) << what;
}

const int kChunks[] = {1, 5, 8, 36, N, N + 20, 0};  // 5 and 8 do not divide 37; 0 = automatic

struct Case {
  Divergence div;
  float T;
};

class LmHeadKdLoss : public ::testing::TestWithParam<Case> {};

TEST_P(LmHeadKdLoss, ChunkedEqualsUnchunkedAndReference) {
  const Case c = GetParam();
  const Problem p = make_problem(1234 + int(c.T * 8) + 100 * int(c.div));
  LossConfig cfg;
  cfg.ce_weight = 0.7f;
  cfg.kd_weight = 0.6f;
  cfg.temperature = c.T;
  cfg.divergence = c.div;
  cfg.beta = 0.3f;
  cfg.t2_scaling = c.T != 2.0f;         // both settings are covered
  const float inv_norm = 1.0f / 29.0f;  // a global count, not this call's rows (32)
  const Result un = run_unchunked(p, cfg, inv_norm);
  const RefResult ref = reference(p, cfg, inv_norm);
  ASSERT_EQ(un.sums.rows, ref.rows);
  // The unchunked path itself against the reference (so "equal to unchunked" means "right").
  EXPECT_LT(rel(un.sums.loss, ref.loss), kRefTol);
  EXPECT_LT(rel(un.sums.kd, ref.kd), kRefTol);
  EXPECT_LT(rel(un.sums.kl, ref.kl), kRefTol);
  EXPECT_LT(rel(un.sums.ce, ref.ce), kRefTol);
  EXPECT_LT(rel_err(un.dh, ref.dh), kRefTol);
  EXPECT_LT(rel_err(un.dwte, ref.dwte), kRefTol);
  for (int chunk : kChunks) {
    SCOPED_TRACE("chunk_rows = " + std::to_string(chunk));
    const Result ch = run_chunked(p, cfg, inv_norm, chunk);
    expect_same(ch, un, "chunked vs unchunked");
    EXPECT_LT(rel(ch.sums.loss, ref.loss), kRefTol);
    EXPECT_LT(rel(ch.sums.kd, ref.kd), kRefTol);
    EXPECT_LT(rel_err(ch.dh, ref.dh), kRefTol);
    EXPECT_LT(rel_err(ch.dwte, ref.dwte), kRefTol);
  }
}

std::vector<Case> all_cases() {
  std::vector<Case> v;
  for (Divergence d : {Divergence::ForwardKL, Divergence::ReverseKL, Divergence::JSD})
    for (float T : {0.5f, 1.0f, 2.0f, 4.0f}) v.push_back({d, T});
  return v;
}

INSTANTIATE_TEST_SUITE_P(EveryDivergenceAndTemperature, LmHeadKdLoss,
                         ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           const char* d = i.param.div == Divergence::ForwardKL   ? "fkl"
                                           : i.param.div == Divergence::ReverseKL ? "rkl"
                                                                                  : "jsd";
                           return std::string(d) + "_T" + std::to_string(int(i.param.T * 10));
                         });

TEST(LmHeadKdLossTest, JsdAtItsEndsMatchesUnchunked) {
  const Problem p = make_problem(7);
  for (float beta : {0.0f, 1.0f}) {
    LossConfig cfg;
    cfg.kd_weight = 1.0f;
    cfg.temperature = 2.0f;
    cfg.divergence = Divergence::JSD;
    cfg.beta = beta;
    const Result un = run_unchunked(p, cfg, 0.05f);
    for (int chunk : kChunks) expect_same(run_chunked(p, cfg, 0.05f, chunk), un, "jsd end");
  }
}

TEST(LmHeadKdLossTest, WithoutTeacherIsCrossEntropy) {
  const Problem p = make_problem(8);
  LossConfig cfg;
  cfg.kd_weight = 0.9f;  // ignored without a teacher
  const Result un = run_unchunked(p, cfg, 0.03f, /*teacher=*/false);
  EXPECT_EQ(un.sums.kd, 0.0);
  for (int chunk : kChunks) {
    const Result ch = run_chunked(p, cfg, 0.03f, chunk, /*teacher=*/false);
    expect_same(ch, un, "no teacher");
    EXPECT_DOUBLE_EQ(ch.sums.loss, ch.sums.ce);
  }
}

TEST(LmHeadKdLossTest, EvaluationWithoutGradientsGivesTheSameSums) {
  const Problem p = make_problem(9);
  LossConfig cfg;
  cfg.kd_weight = 0.5f;
  cfg.divergence = Divergence::ReverseKL;
  const Result un = run_unchunked(p, cfg, 1.0f);
  for (int chunk : kChunks) {
    LossSums s;
    kd::cpu::lm_head_kd_loss(nullptr, nullptr, &s, p.h.data(), p.wte.data(), p.ht.data(),
                             p.wte_t.data(), Ct, Vt, p.targets.data(), N, C, V, cfg, 1.0f, chunk,
                             nullptr);
    EXPECT_LT(rel(s.loss, un.sums.loss), kSameTol);
    EXPECT_EQ(s.rows, un.sums.rows);
  }
}

// Backward ADDS (engine/ops/ops.h): starting from random gradients gives start + the gradient, to
// the rounding of that one addition (half an ulp of the sum, bounded by 2^-23 |start + g|).
TEST(LmHeadKdLossTest, AddsIntoTheGradients) {
  const Problem p = make_problem(12);
  LossConfig cfg;
  cfg.kd_weight = 0.5f;
  cfg.divergence = Divergence::JSD;
  const Result g = run_chunked(p, cfg, 0.1f, 5);
  std::mt19937 rng(99);
  const std::vector<float> dh0 = random_floats(size_t(N) * C, rng);
  const std::vector<float> dw0 = random_floats(size_t(V) * C, rng);
  std::vector<float> dh = dh0, dw = dw0;
  LossSums s;
  kd::cpu::lm_head_kd_loss(dh.data(), dw.data(), &s, p.h.data(), p.wte.data(), p.ht.data(),
                           p.wte_t.data(), Ct, Vt, p.targets.data(), N, C, V, cfg, 0.1f, 5,
                           nullptr);
  for (size_t i = 0; i < dh.size(); ++i)
    ASSERT_NEAR(dh[i], dh0[i] + g.dh[i], 2.5e-7 * (std::abs(dh0[i]) + std::abs(g.dh[i]))) << i;
  // dwte adds one product per chunk into the start value: 8 chunks, 8 roundings at most.
  for (size_t i = 0; i < dw.size(); ++i)
    ASSERT_NEAR(dw[i], dw0[i] + g.dwte[i], 8 * 1.2e-7 * (std::abs(dw0[i]) + 1.0)) << i;
}

TEST(LmHeadKdLossTest, CallerWorkspaceGivesTheSameResult) {
  const Problem p = make_problem(10);
  LossConfig cfg;
  cfg.kd_weight = 0.5f;
  const int chunk = 6;
  std::vector<float> ws(kd::cpu::lm_head_kd_loss_workspace_floats(chunk, V, Vt), -7.0f);
  Result r{LossSums{}, std::vector<float>(size_t(N) * C), std::vector<float>(size_t(V) * C)};
  kd::cpu::lm_head_kd_loss(r.dh.data(), r.dwte.data(), &r.sums, p.h.data(), p.wte.data(),
                           p.ht.data(), p.wte_t.data(), Ct, Vt, p.targets.data(), N, C, V, cfg,
                           0.1f, chunk, ws.data());
  expect_same(r, run_unchunked(p, cfg, 0.1f), "caller workspace");
}

TEST(LmHeadKdLossTest, BadTargetThrowsBeforeAnyGradientIsAdded) {
  Problem p = make_problem(11);
  p.targets[N - 1] = V;  // in the last chunk
  LossConfig cfg;
  std::vector<float> dh(size_t(N) * C, 0.0f), dw(size_t(V) * C, 0.0f);
  LossSums s;
  EXPECT_THROW(kd::cpu::lm_head_kd_loss(dh.data(), dw.data(), &s, p.h.data(), p.wte.data(),
                                        p.ht.data(), p.wte_t.data(), Ct, Vt, p.targets.data(), N, C,
                                        V, cfg, 1.0f, 4, nullptr),
               kd::InputError);
  EXPECT_TRUE(std::all_of(dh.begin(), dh.end(), [](float x) { return x == 0.0f; }));
  EXPECT_TRUE(std::all_of(dw.begin(), dw.end(), [](float x) { return x == 0.0f; }));
  EXPECT_EQ(s.rows, 0);
}

TEST(LmHeadKdLossTest, AutomaticChunkIsWithinBounds) {
  using kd::cpu::lm_head_kd_loss_auto_chunk;
  EXPECT_EQ(lm_head_kd_loss_auto_chunk(5, 50257, 50257), 5);  // never more than N
  EXPECT_EQ(lm_head_kd_loss_auto_chunk(300, 64, 64), 300);    // small vocabulary: one chunk
  // GPT-2: 128 MiB / (2 * 50257 * 4 B) = 333 rows; 4096 rows -> 13 chunks of 316 (the last 304).
  EXPECT_EQ(lm_head_kd_loss_auto_chunk(4096, 50257, 50257), 316);
  // A huge vocabulary still gets the 64-row floor.
  EXPECT_EQ(lm_head_kd_loss_auto_chunk(4096, 1 << 20, 1 << 20), 64);
}

}  // namespace
