// The fused distillation loss kd_loss (engine/ops/cpu/ops.h) against an independent
// double-precision reference written here from the textbook formulas (softmax, logs, KL sums), and
// its gradient against central finite differences of that reference.
//
// Tolerances:
// - kLossTol = 1e-5 relative: fp32 log-probabilities carry ~1e-6 absolute error for logits of scale
//   ~3 at T = 0.5, and the divergence is summed from non-negative terms, so the sums land within
//   ~1e-6; a wrong term (missing 1/T, T^2, weight or mask) is off by 1e-2 or more.
// - kGradTol = 1e-5 norm-wise relative: the finite differences are exact to ~1e-9; what is left
//   is fp32 rounding of q - p and of log-ratios, ~1e-7..1e-6.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "engine/base/error.h"
#include "engine/ops/cpu/ops.h"
#include "tests/grad_check.h"

namespace {

using kd::Divergence;
using kd::LossConfig;
using kd::LossSums;
using kd::cpu::kd_loss;
using kd::test::rel_err;

constexpr double kLossTol = 1e-5;
constexpr double kGradTol = 1e-5;

// ---- double-precision reference, independent of engine/ops/cpu
// ------------------------------------------

std::vector<double> ref_softmax(const double* x, int V, double T) {
  double mx = x[0];
  for (int k = 1; k < V; ++k) mx = std::max(mx, x[k]);
  std::vector<double> p(V);
  double sum = 0.0;
  for (int k = 0; k < V; ++k) {
    p[k] = std::exp((x[k] - mx) / T);
    sum += p[k];
  }
  for (double& v : p) v /= sum;
  return p;
}

double ref_kl(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t k = 0; k < a.size(); ++k) {
    if (a[k] > 0.0) s += a[k] * std::log(a[k] / b[k]);
  }
  return s;
}

double ref_entropy(const std::vector<double>& a) {
  double s = 0.0;
  for (double v : a) {
    if (v > 0.0) s -= v * std::log(v);
  }
  return s;
}

// D(p, q) for the configured divergence; JSD is the normalised generalised JSD with its KL limits.
double ref_divergence(const std::vector<double>& p, const std::vector<double>& q,
                      const LossConfig& cfg) {
  if (cfg.divergence == Divergence::ForwardKL) return ref_kl(p, q);
  if (cfg.divergence == Divergence::ReverseKL) return ref_kl(q, p);
  const double b = cfg.beta;
  if (b == 0.0) return ref_kl(p, q);
  if (b == 1.0) return ref_kl(q, p);
  std::vector<double> m(p.size());
  for (size_t k = 0; k < p.size(); ++k) m[k] = b * p[k] + (1.0 - b) * q[k];
  return (b * ref_kl(p, m) + (1.0 - b) * ref_kl(q, m)) / (b * (1.0 - b));
}

struct RefSums {
  double loss = 0, ce = 0, kd = 0, kl = 0, hp = 0, hq = 0;
  int64_t rows = 0;
};

// The loss of one row; t may be null (plain CE). Teacher is read on its first V columns.
RefSums ref_row(const double* z, const double* t, int target, int V, const LossConfig& cfg) {
  RefSums r;
  const std::vector<double> q1 = ref_softmax(z, V, 1.0);
  r.ce = -std::log(q1[target]);
  const std::vector<double> q = ref_softmax(z, V, cfg.temperature);
  r.hq = ref_entropy(q);
  r.loss = cfg.ce_weight * r.ce;
  if (t) {
    const std::vector<double> p = ref_softmax(t, V, cfg.temperature);
    r.kd = ref_divergence(p, q, cfg);
    r.kl = ref_kl(p, q);
    r.hp = ref_entropy(p);
    const double T = cfg.temperature;
    r.loss += cfg.kd_weight * (cfg.t2_scaling ? T * T : 1.0) * r.kd;
  }
  r.rows = 1;
  return r;
}

RefSums ref_loss(const std::vector<double>& z, const std::vector<double>* t, int Vt,
                 const std::vector<int32_t>& targets, int N, int V, const LossConfig& cfg) {
  RefSums s;
  for (int n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    const RefSums r =
        ref_row(z.data() + n * V, t ? t->data() + static_cast<size_t>(n) * Vt : nullptr, targets[n],
                V, cfg);
    s.loss += r.loss;
    s.ce += r.ce;
    s.kd += r.kd;
    s.kl += r.kl;
    s.hp += r.hp;
    s.hq += r.hq;
    s.rows += 1;
  }
  return s;
}

// d(inv_norm * loss)/dz by central differences of the reference, row by row (rows are independent).
std::vector<double> ref_grad(const std::vector<double>& z_in, const std::vector<double>* t, int Vt,
                             const std::vector<int32_t>& targets, int N, int V,
                             const LossConfig& cfg, double inv_norm) {
  std::vector<double> grad(z_in.size(), 0.0);
  for (int n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    std::vector<double> zr(z_in.begin() + n * V, z_in.begin() + (n + 1) * V);
    const double* tr = t ? t->data() + static_cast<size_t>(n) * Vt : nullptr;
    auto loss = [&] { return inv_norm * ref_row(zr.data(), tr, targets[n], V, cfg).loss; };
    const std::vector<double> g = kd::test::fd_gradient(loss, zr);
    std::copy(g.begin(), g.end(), grad.begin() + n * V);
  }
  return grad;
}

// ---- helpers
// ------------------------------------------------------------------------------------------

struct Problem {
  int N, V, Vt;
  std::vector<float> z, t;
  std::vector<int32_t> targets;
  int rows = 0;  // supervised
};

// Random student and teacher logits of scale ~3 (different from each other), every third row
// masked, teacher rows padded to Vt with large random columns that must be ignored.
Problem make_problem(int N, int V, int Vt, uint32_t seed, float scale = 3.0f) {
  std::mt19937 rng(seed);
  Problem p{N, V, Vt, {}, {}, {}};
  std::normal_distribution<float> logit(0.0f, scale);
  std::uniform_real_distribution<float> pad(20.0f, 60.0f);
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  p.z.resize(static_cast<size_t>(N) * V);
  for (float& x : p.z) x = logit(rng);
  p.t.resize(static_cast<size_t>(N) * Vt);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < Vt; ++k) p.t[n * Vt + k] = k < V ? logit(rng) : pad(rng);
  for (int n = 0; n < N; ++n) {
    p.targets.push_back(n % 3 == 1 ? -1 : tok(rng));
    if (p.targets.back() >= 0) ++p.rows;
  }
  return p;
}

struct Result {
  LossSums sums;
  std::vector<float> grad;
};

Result run(const Problem& p, const LossConfig& cfg, float inv_norm, bool with_teacher = true) {
  Result r;
  r.grad.assign(p.z.size(), 1234.5f);  // every value must be overwritten
  kd_loss(r.grad.data(), &r.sums, p.z.data(), with_teacher ? p.t.data() : nullptr, p.Vt,
          p.targets.data(), p.N, p.V, cfg, inv_norm);
  return r;
}

double rel(double a, double b) {
  return std::fabs(a - b) / std::max(std::fabs(b), 1e-12);
}

double norm(const std::vector<float>& v) {
  double s = 0.0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

float round_to_bf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  bits &= 0xFFFF0000u;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

LossConfig make_cfg(Divergence d, float T, float beta = 0.5f, bool t2 = true) {
  LossConfig cfg;
  cfg.ce_weight = 0.7f;
  cfg.kd_weight = 0.6f;
  cfg.temperature = T;
  cfg.divergence = d;
  cfg.beta = beta;
  cfg.t2_scaling = t2;
  return cfg;
}

std::vector<LossConfig> all_divergences(float T) {
  std::vector<LossConfig> out = {make_cfg(Divergence::ForwardKL, T),
                                 make_cfg(Divergence::ReverseKL, T)};
  for (float b : {0.0f, 0.1f, 0.5f, 0.9f, 1.0f}) out.push_back(make_cfg(Divergence::JSD, T, b));
  return out;
}

std::string describe(const LossConfig& c) {
  const char* d = c.divergence == Divergence::ForwardKL   ? "FKL"
                  : c.divergence == Divergence::ReverseKL ? "RKL"
                                                          : "JSD";
  return std::string(d) + " beta=" + std::to_string(c.beta) + " T=" + std::to_string(c.temperature);
}

// ---- tests
// --------------------------------------------------------------------------------------------

// Loss sums and gradients against the reference for every divergence and temperature, masked rows,
// non-power-of-two vocabularies and a padded teacher.
TEST(KdLoss, MatchesDoubleReference) {
  struct Shape {
    int N, V, Vt;
  };
  for (const Shape s : {Shape{5, 37, 37}, Shape{3, 1001, 1013}}) {
    const Problem p = make_problem(s.N, s.V, s.Vt, 17u + s.V);
    const std::vector<double> z = kd::test::to_double(p.z);
    const std::vector<double> t = kd::test::to_double(p.t);
    const float inv_norm = 1.0f / static_cast<float>(p.rows);
    for (float T : {0.5f, 1.0f, 2.0f, 4.0f}) {
      for (const LossConfig& cfg : all_divergences(T)) {
        SCOPED_TRACE(describe(cfg) + " V=" + std::to_string(s.V));
        const Result r = run(p, cfg, inv_norm);
        const RefSums ref = ref_loss(z, &t, p.Vt, p.targets, p.N, p.V, cfg);
        EXPECT_EQ(r.sums.rows, ref.rows);
        EXPECT_LT(rel(r.sums.loss, ref.loss), kLossTol);
        EXPECT_LT(rel(r.sums.ce, ref.ce), kLossTol);
        EXPECT_LT(rel(r.sums.kd, ref.kd), kLossTol);
        EXPECT_LT(rel(r.sums.kl, ref.kl), kLossTol);
        EXPECT_LT(rel(r.sums.teacher_entropy, ref.hp), kLossTol);
        EXPECT_LT(rel(r.sums.student_entropy, ref.hq), kLossTol);
        const std::vector<double> g =
            ref_grad(z, &t, p.Vt, p.targets, p.N, p.V, cfg, static_cast<double>(inv_norm));
        EXPECT_LT(rel_err(r.grad, g), kGradTol);
        for (int n = 0; n < p.N; ++n) {
          if (p.targets[n] >= 0) continue;
          for (int k = 0; k < p.V; ++k) ASSERT_EQ(r.grad[n * p.V + k], 0.0f) << "masked row " << n;
        }
      }
    }
  }
}

TEST(KdLoss, WithoutTeacherIsCrossEntropy) {
  const Problem p = make_problem(7, 129, 129, 3u);
  const std::vector<double> z = kd::test::to_double(p.z);
  LossConfig cfg = make_cfg(Divergence::ReverseKL, 2.0f);
  const float inv_norm = 0.25f;
  const Result r = run(p, cfg, inv_norm, /*with_teacher=*/false);
  const RefSums ref = ref_loss(z, nullptr, p.V, p.targets, p.N, p.V, cfg);
  EXPECT_LT(rel(r.sums.loss, cfg.ce_weight * ref.ce), kLossTol);
  EXPECT_LT(rel(r.sums.ce, ref.ce), kLossTol);
  EXPECT_EQ(r.sums.kd, 0.0);
  EXPECT_EQ(r.sums.kl, 0.0);
  EXPECT_EQ(r.sums.teacher_entropy, 0.0);
  EXPECT_LT(rel(r.sums.student_entropy, ref.hq), kLossTol);
  // Analytic CE gradient, written out: inv_norm * ce_weight * (softmax(z) - onehot).
  std::vector<double> g(z.size(), 0.0);
  for (int n = 0; n < p.N; ++n) {
    if (p.targets[n] < 0) continue;
    const std::vector<double> q = ref_softmax(z.data() + n * p.V, p.V, 1.0);
    for (int k = 0; k < p.V; ++k)
      g[n * p.V + k] = inv_norm * cfg.ce_weight * (q[k] - (k == p.targets[n] ? 1.0 : 0.0));
  }
  EXPECT_LT(rel_err(r.grad, g), kGradTol);
}

TEST(KdLoss, ZeroDivergenceWhenStudentEqualsTeacher) {
  Problem p = make_problem(6, 211, 211, 5u);
  p.t = p.z;
  for (float T : {0.5f, 1.0f, 3.0f}) {
    for (LossConfig cfg : all_divergences(T)) {
      SCOPED_TRACE(describe(cfg));
      cfg.ce_weight = 0.0f;  // leave only the divergence in the gradient
      const Result r = run(p, cfg, 1.0f);
      EXPECT_LE(std::fabs(r.sums.kd), 1e-9);
      EXPECT_LE(std::fabs(r.sums.kl), 1e-9);
      EXPECT_LE(norm(r.grad), 1e-7);
      EXPECT_NEAR(r.sums.teacher_entropy, r.sums.student_entropy, 1e-9);
    }
  }
}

// The student's KD gradient scales as 1/T^2 (1/T from the chain rule through z/T, another 1/T from
// the softened probabilities); the T^2 factor cancels that, keeping the gradient's size comparable
// across temperatures.
TEST(KdLoss, T2ScalingKeepsGradientScale) {
  const Problem p = make_problem(1, 1001, 1001, 11u);
  auto grad_norm = [&](float T, bool t2) {
    LossConfig cfg = make_cfg(Divergence::ForwardKL, T, 0.5f, t2);
    cfg.ce_weight = 0.0f;
    cfg.kd_weight = 1.0f;
    return norm(run(p, cfg, 1.0f).grad);
  };
  auto spread = [&](bool t2) {
    double lo = INFINITY, hi = 0.0;
    for (float T : {1.0f, 2.0f, 4.0f, 8.0f}) {
      const double g = grad_norm(T, t2);
      lo = std::min(lo, g);
      hi = std::max(hi, g);
    }
    return hi / lo;
  };
  const double with_t2 = spread(true);
  const double without_t2 = spread(false);
  EXPECT_LT(with_t2, 10.0);
  EXPECT_GT(without_t2, 10.0);
  EXPECT_GT(without_t2, 5.0 * with_t2);
}

double jsd_at(const Problem& p, float beta, float T, std::vector<float>* grad = nullptr) {
  LossConfig cfg = make_cfg(Divergence::JSD, T, beta);
  cfg.ce_weight = 0.0f;
  cfg.kd_weight = 1.0f;
  Result r = run(p, cfg, 1.0f);
  if (grad) *grad = r.grad;
  return r.sums.kd;
}

// beta = 0 is forward KL and beta = 1 reverse KL. Near the ends the fp32 value agrees with the
// double reference at the same beta (no cancellation blow-up from dividing by beta or 1 - beta),
// and value and gradient approach the KL limits.
//
// How fast they approach depends on the largest ratio p/q (or q/p near beta = 1): a vocabulary
// entry behaves as in the limit only once beta * p/q << 1. With logits of scale 1 (ratios up to
// ~e^6) beta = 1e-4 is already within 1e-2; with scale 3 (ratios up to ~e^20) the gap still
// shrinks steadily but is a few percent at beta = 1e-4, which is the math, not rounding.
TEST(KdLoss, JsdContinuousAtBothEnds) {
  for (const float scale : {1.0f, 3.0f}) {
    const Problem p = make_problem(4, 301, 301, 23u, scale);
    const std::vector<double> z = kd::test::to_double(p.z);
    const std::vector<double> t = kd::test::to_double(p.t);
    for (float T : {1.0f, 2.0f}) {
      std::vector<float> g0, g1;
      const double d0 = jsd_at(p, 0.0f, T, &g0);
      const double d1 = jsd_at(p, 1.0f, T, &g1);
      const LossConfig fkl = make_cfg(Divergence::ForwardKL, T);
      const LossConfig rkl = make_cfg(Divergence::ReverseKL, T);
      EXPECT_LT(rel(d0, ref_loss(z, &t, p.Vt, p.targets, p.N, p.V, fkl).kd), kLossTol);
      EXPECT_LT(rel(d1, ref_loss(z, &t, p.Vt, p.targets, p.N, p.V, rkl).kd), kLossTol);
      double prev0 = INFINITY, prev1 = INFINITY;
      for (float eps : {1e-2f, 1e-3f, 1e-4f, 1e-5f, 1e-6f}) {
        SCOPED_TRACE("scale=" + std::to_string(scale) + " T=" + std::to_string(T) +
                     " eps=" + std::to_string(eps));
        std::vector<float> ga, gb;
        const double da = jsd_at(p, eps, T, &ga);
        const double db = jsd_at(p, 1.0f - eps, T, &gb);
        // Against the reference at the same beta.
        const LossConfig ca = make_cfg(Divergence::JSD, T, eps);
        const LossConfig cb = make_cfg(Divergence::JSD, T, 1.0f - eps);
        EXPECT_LT(rel(da, ref_loss(z, &t, p.Vt, p.targets, p.N, p.V, ca).kd), kLossTol);
        EXPECT_LT(rel(db, ref_loss(z, &t, p.Vt, p.targets, p.N, p.V, cb).kd), kLossTol);
        // Approaching the end points: the gap shrinks with eps.
        const double gap0 = rel(da, d0), gap1 = rel(db, d1);
        EXPECT_LT(gap0, prev0);
        EXPECT_LT(gap1, prev1);
        prev0 = gap0;
        prev1 = gap1;
        if (scale == 1.0f && eps <= 1e-4f) {
          EXPECT_LT(gap0, 1e-2);
          EXPECT_LT(gap1, 1e-2);
          EXPECT_LT(rel_err(ga, kd::test::to_double(g0)), 1e-2);
          EXPECT_LT(rel_err(gb, kd::test::to_double(g1)), 1e-2);
        }
      }
      EXPECT_LT(prev0, 0.1);  // at eps = 1e-6, whatever the scale
      EXPECT_LT(prev1, 0.1);
    }
  }
}

// Logits rounded to bf16 (as a bf16 model would produce them) never give a negative divergence, in
// particular when teacher and student are equal up to that rounding.
TEST(KdLoss, Bf16InputsNeverNegative) {
  std::mt19937 rng(99u);
  std::normal_distribution<float> logit(0.0f, 3.0f);
  std::normal_distribution<float> tiny(0.0f, 1e-3f);
  const int V = 97;
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<float> z(V), t(V);
    for (int k = 0; k < V; ++k) {
      const float x = logit(rng);
      z[k] = round_to_bf16(x);
      // Half the trials: the teacher is the same logit perturbed below bf16 resolution, so the two
      // rows are equal or one bf16 step apart.
      t[k] = round_to_bf16(trial % 2 ? x + tiny(rng) : logit(rng));
    }
    const int32_t target = static_cast<int32_t>(trial % V);
    for (float T : {0.5f, 1.0f, 2.0f}) {
      for (const LossConfig& cfg : all_divergences(T)) {
        LossSums s;
        kd_loss(nullptr, &s, z.data(), t.data(), V, &target, 1, V, cfg, 1.0f);
        ASSERT_GE(s.kd, 0.0) << describe(cfg) << " trial " << trial;
        ASSERT_GE(s.kl, 0.0) << describe(cfg) << " trial " << trial;
      }
    }
  }
}

TEST(KdLoss, PaddedTeacherEqualsSlicedTeacher) {
  const Problem padded = make_problem(5, 37, 50, 31u);
  Problem sliced = padded;
  sliced.Vt = sliced.V;
  sliced.t.clear();
  for (int n = 0; n < padded.N; ++n)
    for (int k = 0; k < padded.V; ++k) sliced.t.push_back(padded.t[n * padded.Vt + k]);
  for (const LossConfig& cfg : all_divergences(2.0f)) {
    SCOPED_TRACE(describe(cfg));
    const Result a = run(padded, cfg, 0.5f);
    const Result b = run(sliced, cfg, 0.5f);
    EXPECT_EQ(a.sums.loss, b.sums.loss);
    EXPECT_EQ(a.sums.kd, b.sums.kd);
    EXPECT_EQ(a.sums.teacher_entropy, b.sums.teacher_entropy);
    EXPECT_EQ(a.grad, b.grad);
  }
}

TEST(KdLoss, InPlaceEqualsOutOfPlace) {
  const Problem p = make_problem(6, 1001, 1001, 41u);
  for (const LossConfig& cfg : all_divergences(2.0f)) {
    SCOPED_TRACE(describe(cfg));
    const Result out = run(p, cfg, 0.125f);
    std::vector<float> buf = p.z;
    LossSums s;
    kd_loss(buf.data(), &s, buf.data(), p.t.data(), p.Vt, p.targets.data(), p.N, p.V, cfg, 0.125f);
    EXPECT_EQ(buf, out.grad);
    EXPECT_EQ(s.loss, out.sums.loss);
    EXPECT_EQ(s.kd, out.sums.kd);
  }
}

// Gradient accumulation: splitting a batch into micro-batches, each called with the same global
// 1/rows_total, gives the same gradient and the same sums as one call. Normalising each
// micro-batch by its own row count (the classic bug) does not.
TEST(KdLoss, GradientAccumulationInvariance) {
  const Problem p = make_problem(11, 257, 257, 53u);
  const LossConfig cfg = make_cfg(Divergence::JSD, 2.0f, 0.3f);
  const float inv_norm = 1.0f / static_cast<float>(p.rows);
  const Result whole = run(p, cfg, inv_norm);

  const int split = 4;  // rows [0, 4) and [4, 11)
  const size_t cut = static_cast<size_t>(split) * p.V;
  std::vector<float> grad(p.z.size());
  LossSums acc;  // kd_loss adds into the sums it is given
  kd_loss(grad.data(), &acc, p.z.data(), p.t.data(), p.Vt, p.targets.data(), split, p.V, cfg,
          inv_norm);
  kd_loss(grad.data() + cut, &acc, p.z.data() + cut, p.t.data() + static_cast<size_t>(split) * p.Vt,
          p.Vt, p.targets.data() + split, p.N - split, p.V, cfg, inv_norm);
  EXPECT_EQ(grad, whole.grad);
  EXPECT_EQ(acc.rows, whole.sums.rows);
  EXPECT_LT(rel(acc.loss, whole.sums.loss), 1e-12);
  EXPECT_LT(rel(acc.ce, whole.sums.ce), 1e-12);
  EXPECT_LT(rel(acc.kd, whole.sums.kd), 1e-12);
  EXPECT_LT(rel(acc.kl, whole.sums.kl), 1e-12);

  // Per-micro-batch normalisation weights the rows of the smaller micro-batch more.
  int rows_a = 0;
  for (int n = 0; n < split; ++n) rows_a += p.targets[n] >= 0;
  ASSERT_NE(rows_a, p.rows - rows_a);
  std::vector<float> wrong(p.z.size());
  LossSums unused;
  kd_loss(wrong.data(), &unused, p.z.data(), p.t.data(), p.Vt, p.targets.data(), split, p.V, cfg,
          1.0f / rows_a / 2.0f);
  kd_loss(wrong.data() + cut, &unused, p.z.data() + cut,
          p.t.data() + static_cast<size_t>(split) * p.Vt, p.Vt, p.targets.data() + split,
          p.N - split, p.V, cfg, 1.0f / (p.rows - rows_a) / 2.0f);
  EXPECT_GT(rel_err(wrong, kd::test::to_double(whole.grad)), 1e-2);
}

TEST(KdLoss, EvaluationWithoutGradient) {
  const Problem p = make_problem(4, 64, 64, 61u);
  const LossConfig cfg = make_cfg(Divergence::ForwardKL, 1.5f);
  const Result with = run(p, cfg, 1.0f);
  LossSums s;
  kd_loss(nullptr, &s, p.z.data(), p.t.data(), p.Vt, p.targets.data(), p.N, p.V, cfg, 1.0f);
  EXPECT_EQ(s.loss, with.sums.loss);
  EXPECT_EQ(s.rows, with.sums.rows);
}

// Broken preconditions are the caller's bug (inputs are validated where they are read).
TEST(KdLoss, BrokenPreconditionIsAContractError) {
  const Problem p = make_problem(3, 16, 16, 71u);
  std::vector<float> g(p.z.size());
  LossSums s;
  auto call = [&](const LossConfig& cfg, int Vt, const std::vector<int32_t>& targets) {
    kd_loss(g.data(), &s, p.z.data(), p.t.data(), Vt, targets.data(), p.N, p.V, cfg, 1.0f);
  };
  const LossConfig ok = make_cfg(Divergence::JSD, 1.0f);
  std::vector<int32_t> bad_targets = p.targets;
  bad_targets[2] = p.V;
  EXPECT_NO_THROW(call(ok, p.Vt, p.targets));
  EXPECT_THROW(call(ok, p.Vt, bad_targets), kd::ContractError);
  EXPECT_THROW(call(ok, p.V - 1, p.targets), kd::ContractError);
  LossConfig bad = ok;
  bad.temperature = 0.0f;
  EXPECT_THROW(call(bad, p.Vt, p.targets), kd::ContractError);
  bad = ok;
  bad.beta = 1.5f;
  EXPECT_THROW(call(bad, p.Vt, p.targets), kd::ContractError);
  try {
    call(ok, p.Vt, bad_targets);
    ADD_FAILURE() << "no error for a target outside the vocabulary";
  } catch (const kd::ContractError& e) {
    EXPECT_NE(std::string(e.what()).find("target 16 at row 2"), std::string::npos) << e.what();
  }
}

}  // namespace
