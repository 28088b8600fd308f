// The fused distillation loss (cross-entropy + temperature divergence), CPU twin of
// cuda/kd_loss.cu. Math: docs/ops/kd_loss.md.
//
// Each row is handled on its own in four passes over its V logits: maxima, log-sum-exps, the
// divergence sums, then the gradient. Probabilities are recomputed in each pass instead of stored,
// so no [N, V] tensor exists and the gradient may overwrite the logits in place (every row
// statistic is known before the first write). Elementwise math is fp32; row sums are double.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/ops/cpu/reference/ops_ref.h"

namespace kd::cpu::ref {

namespace {

// One element a*log(a/b) - a + b of KL(a || b), given log_ratio = log(a/b). The "- a + b" parts sum
// to zero over a row, but they make every element non-negative, so a row sum cannot dip below zero
// by rounding when a ~ b. Near a == b the direct form cancels; there a*(l + expm1(-l)) keeps full
// relative precision (it is a*l^2/2 + ...).
float kl_term(float a, float b, float log_ratio) {
  const float term = std::fabs(log_ratio) <= 1.0f ? a * (log_ratio + std::expm1(-log_ratio))
                                                  : a * log_ratio - a + b;
  return std::max(term, 0.0f);
}

// log(m / a) for the mixture m = w*b + wc*a (wc = 1 - w, passed exactly), given d = log(b/a).
// - Near m == a the log is small; log1p(w*expm1(d)) keeps full relative precision there, which
//   matters when w is tiny (JSD near its ends divides this by w).
// - When w*expm1(d) is close to -1, m/a = wc + w*e^d is tiny: the sum of the two positive terms
//   is accurate where 1 + (close to -1) would cancel.
// - For large d, d + log(w + wc*e^-d) avoids overflowing expm1.
float log_mix_ratio(float d, float w, float wc) {
  if (d > 20.0f) return d + std::log(w + wc * std::exp(-d));
  const float x = w * std::expm1(d);
  if (x < -0.5f) return std::log(wc + w * std::exp(d));
  return std::log1p(x);
}

// Which formula a row uses: JSD at beta = 0 and beta = 1 is exactly its KL limit.
enum class Mode { ForwardKL, ReverseKL, JSD };

Mode mode_of(const LossConfig& cfg) {
  if (cfg.divergence == Divergence::ForwardKL) return Mode::ForwardKL;
  if (cfg.divergence == Divergence::ReverseKL) return Mode::ReverseKL;
  if (cfg.beta == 0.0f) return Mode::ForwardKL;
  if (cfg.beta == 1.0f) return Mode::ReverseKL;
  return Mode::JSD;
}

struct RowSums {
  double loss = 0, ce = 0, kd = 0, kl = 0, teacher_entropy = 0, student_entropy = 0;
};

// Log-sum-exp helper of one row: lse(x/T) = max/T + log(sum exp((x - max)/T)); we keep the max and
// log(sum) apart so that log-probabilities are formed from small numbers: (x - max)/T - log_sum.
struct Shift {
  float max;
  float log_sum;
};

Shift shift_of(const float* x, int V, float inv_t) {
  float mx = x[0];
  for (int k = 1; k < V; ++k) mx = std::max(mx, x[k]);
  double sum = 0.0;
  for (int k = 0; k < V; ++k) sum += std::exp((x[k] - mx) * inv_t);
  return {mx, static_cast<float>(std::log(sum))};
}

float log_prob(float x, const Shift& s, float inv_t) {
  return (x - s.max) * inv_t - s.log_sum;
}

// The loss of one supervised row; writes the row of dlogits when dz is non-null (dz may be z).
RowSums loss_row(float* dz, const float* z, const float* t, int target, int V,
                 const LossConfig& cfg, Mode mode, float inv_norm) {
  const float inv_t = 1.0f / cfg.temperature;
  const float beta = cfg.beta;
  const Shift s1 = shift_of(z, V, 1.0f);   // student at T = 1 (cross-entropy)
  const Shift sq = shift_of(z, V, inv_t);  // student at T
  const Shift sp = t ? shift_of(t, V, inv_t) : Shift{0.0f, 0.0f};  // teacher at T

  RowSums r;
  r.ce = -static_cast<double>(log_prob(z[target], s1, 1.0f));
  double fkl = 0, rkl = 0, kl_pm = 0, kl_qm = 0;
  for (int k = 0; k < V; ++k) {
    const float lq = log_prob(z[k], sq, inv_t);
    const float q = std::exp(lq);
    r.student_entropy -= q * lq;
    if (!t) continue;
    const float lp = log_prob(t[k], sp, inv_t);
    const float p = std::exp(lp);
    r.teacher_entropy -= p * lp;
    fkl += kl_term(p, q, lp - lq);
    if (mode == Mode::ReverseKL) rkl += kl_term(q, p, lq - lp);
    if (mode == Mode::JSD) {
      const float m = beta * p + (1.0f - beta) * q;
      kl_pm += kl_term(p, m, -log_mix_ratio(lq - lp, 1.0f - beta, beta));  // log(p/m)
      kl_qm += kl_term(q, m, -log_mix_ratio(lp - lq, beta, 1.0f - beta));  // log(q/m)
    }
  }

  const float scale = cfg.t2_scaling ? cfg.temperature * cfg.temperature : 1.0f;
  if (t) {
    r.kl = fkl;
    // JSD(beta) / (beta (1 - beta)) = KL(p||m)/(1-beta) + KL(q||m)/beta.
    r.kd = mode == Mode::ForwardKL   ? fkl
           : mode == Mode::ReverseKL ? rkl
                                     : kl_pm / (1.0 - beta) + kl_qm / beta;
  }
  r.loss = cfg.ce_weight * r.ce + (t ? cfg.kd_weight * scale * r.kd : 0.0);
  if (!dz) return r;

  // d(row loss)/dz_k, each term divided by T once for the chain rule through z/T:
  //   CE:  softmax(z)_k - [k == target]
  //   FKL: (q_k - p_k) / T
  //   RKL: q_k (log q_k - log p_k - RKL) / T
  //   JSD: q_k (log(q_k/m_k) - KL(q||m)) / (beta T)
  const float g_ce = inv_norm * cfg.ce_weight;
  const float g_kd = t ? inv_norm * cfg.kd_weight * scale * inv_t : 0.0f;
  const float rkl_f = static_cast<float>(rkl);
  const float kl_qm_f = static_cast<float>(kl_qm);
  for (int k = 0; k < V; ++k) {
    const float zk = z[k];  // read before dz[k] (which may be z[k]) is written
    float grad = g_ce * (std::exp(log_prob(zk, s1, 1.0f)) - (k == target ? 1.0f : 0.0f));
    if (g_kd != 0.0f) {
      const float lq = log_prob(zk, sq, inv_t);
      const float lp = log_prob(t[k], sp, inv_t);
      const float q = std::exp(lq);
      float d = 0.0f;
      if (mode == Mode::ForwardKL) {
        d = q - std::exp(lp);
      } else if (mode == Mode::ReverseKL) {
        d = q * (lq - lp - rkl_f);
      } else {
        const float log_q_m = -log_mix_ratio(lp - lq, beta, 1.0f - beta);
        d = q * (log_q_m - kl_qm_f) / beta;
      }
      grad += g_kd * d;
    }
    dz[k] = grad;
  }
  return r;
}

void check_inputs(const float* logits, const float* teacher, int Vt, const int32_t* targets, int N,
                  int V, const LossConfig& cfg) {
  const std::string where = "kd_loss: ";
  KD_REQUIRE(N >= 0, where + "row count N must be >= 0, got " + std::to_string(N));
  if (N == 0) return;
  KD_REQUIRE(V > 0, where + "vocabulary size V must be > 0, got " + std::to_string(V));
  KD_REQUIRE(logits && targets, where + "logits and targets must not be null");
  KD_REQUIRE(!teacher || Vt >= V, where + "teacher row stride Vt must be >= V = " +
                                      std::to_string(V) + ", got " + std::to_string(Vt));
  KD_REQUIRE(
      cfg.temperature > 0.0f && std::isfinite(cfg.temperature),
      where + "temperature must be a finite number > 0, got " + std::to_string(cfg.temperature));
  KD_REQUIRE(cfg.divergence != Divergence::JSD || (cfg.beta >= 0.0f && cfg.beta <= 1.0f),
             where + "JSD beta must be in [0, 1], got " + std::to_string(cfg.beta));
  for (int n = 0; n < N; ++n) {
    KD_REQUIRE(targets[n] < V, where + "target " + std::to_string(targets[n]) + " at row " +
                                   std::to_string(n) + " is outside the vocabulary [0, " +
                                   std::to_string(V) + ")");
  }
}

}  // namespace

void kd_loss(float* dlogits, LossSums* sums, const float* logits, const float* teacher, int Vt,
             const int32_t* targets, int N, int V, const LossConfig& cfg, float inv_norm) {
  check_inputs(logits, teacher, Vt, targets, N, V, cfg);
  const Mode mode = mode_of(cfg);
  std::vector<RowSums> rows(static_cast<size_t>(std::max(N, 0)));

#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const size_t row = static_cast<size_t>(n);
    float* dz = dlogits ? dlogits + row * V : nullptr;
    if (targets[n] < 0) {  // masked: no loss, zero gradient
      if (dz) std::fill(dz, dz + V, 0.0f);
      continue;
    }
    const float* t = teacher ? teacher + row * Vt : nullptr;
    rows[row] = loss_row(dz, logits + row * V, t, targets[n], V, cfg, mode, inv_norm);
  }

  if (!sums) return;
  // Sum the rows in order, so the result does not depend on the thread count.
  for (int n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    const RowSums& r = rows[static_cast<size_t>(n)];
    sums->loss += r.loss;
    sums->ce += r.ce;
    sums->kd += r.kd;
    sums->kl += r.kl;
    sums->teacher_entropy += r.teacher_entropy;
    sums->student_entropy += r.student_entropy;
    sums->rows += 1;
  }
}

}  // namespace kd::cpu::ref
