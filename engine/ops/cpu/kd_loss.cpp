// The fused distillation loss (cross-entropy + temperature divergence), CPU twin of
// cuda/kd_loss.cu. Math: docs/ops/kd_loss.md.
//
// Each row is handled on its own. Forward KL and plain cross-entropy (the common cases) take three
// vectorised passes over a row: the maxima of both rows, the sums of exponentials, then one pass
// that forms both probabilities, adds the entropies and the divergence and writes the gradient
// (forward KL's gradient needs no row total that is not known by then). Reverse KL and JSD need the
// divergence's row total before the gradient, so they take the general path: log-sum-exps, the
// divergence sums, then the gradient. Probabilities are recomputed instead of stored, so no [N, V]
// tensor exists and the gradient may overwrite the logits in place (every row statistic the
// gradient needs is known before the first write of that element). Elementwise math is fp32; the
// general path sums rows in double, the vectorised one in fp32 SIMD lanes. The plainly written
// version of every path is engine/ops/cpu/reference/kd_loss.cpp.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/trace.h"
#include "engine/ops/cpu/ops.h"
#include "engine/ops/cpu/threads.h"
#include "engine/ops/cpu/vmath.h"

namespace kd::cpu {

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

// e^x - 1 for |x| <= 1 by its Taylor series (to x^11: relative error below 2e-8), branch-free so
// loops over it vectorise.
[[gnu::always_inline]] inline float expm1_small(float x) {
  float p = 1.0f + x * (1.0f / 11.0f);
  p = 1.0f + x * (1.0f / 10.0f) * p;
  p = 1.0f + x * (1.0f / 9.0f) * p;
  p = 1.0f + x * (1.0f / 8.0f) * p;
  p = 1.0f + x * (1.0f / 7.0f) * p;
  p = 1.0f + x * (1.0f / 6.0f) * p;
  p = 1.0f + x * (1.0f / 5.0f) * p;
  p = 1.0f + x * (1.0f / 4.0f) * p;
  p = 1.0f + x * (1.0f / 3.0f) * p;
  p = 1.0f + x * (1.0f / 2.0f) * p;
  return x * p;
}

// kl_term without branches: the same two forms, selected.
[[gnu::always_inline]] inline float kl_term_v(float a, float b, float log_ratio) {
  const float l = log_ratio;
  const float lc = l < -1.0f ? -1.0f : (l > 1.0f ? 1.0f : l);  // keeps the series in range
  const float near = a * (l + expm1_small(-lc));
  const float far = a * l - a + b;
  const float term = (l >= -1.0f && l <= 1.0f) ? near : far;
  return term > 0.0f ? term : 0.0f;
}

// The row constants of the vectorised path's last pass.
struct Pass3 {
  float mz, mt, inv_t, ls1, lsq, lsp, g_ce, g_kd;
};

// The last pass of fast_row, one instantiation per case so that every loop is branch-free:
// kGrad writes dz, kTeacher adds the teacher's terms, kUnitT reuses q as softmax(z) at T = 1.
template <bool kGrad, bool kTeacher, bool kUnitT>
[[gnu::always_inline]] inline void pass3(const Pass3& c, float* dz, const float* z, const float* t,
                                         int V, float& hq_out, float& hp_out, float& fkl_out) {
  float hq = 0.0f, hp = 0.0f, fkl = 0.0f;
#pragma omp simd reduction(+ : hq, hp, fkl)
  for (int k = 0; k < V; ++k) {
    const float zk = z[k];
    const float lq = (zk - c.mz) * c.inv_t - c.lsq;
    const float q = vexp(lq);
    hq -= q * lq;
    float p = 0.0f;
    if constexpr (kTeacher) {
      const float lp = (t[k] - c.mt) * c.inv_t - c.lsp;
      p = vexp(lp);
      hp -= p * lp;
      fkl += kl_term_v(p, q, lp - lq);
    }
    if constexpr (kGrad) {
      const float soft = kUnitT ? q : vexp(zk - c.mz - c.ls1);
      dz[k] = c.g_ce * soft + (kTeacher ? c.g_kd * (q - p) : 0.0f);
    }
  }
  hq_out = hq;
  hp_out = hp;
  fkl_out = fkl;
}

// Forward KL (or plain CE when t is null) in three vectorised passes. Same contract as loss_row.
KD_SIMD_CLONES RowSums fast_row(float* dz, const float* z, const float* t, int target, int V,
                                const LossConfig& cfg, float inv_norm) {
  const float inv_t = 1.0f / cfg.temperature;
  const bool unit_t = cfg.temperature == 1.0f;
  // Pass 1: the maxima.
  float mz = z[0];
#pragma omp simd reduction(max : mz)
  for (int k = 0; k < V; ++k) mz = z[k] > mz ? z[k] : mz;
  float mt = t ? t[0] : 0.0f;
  if (t) {
#pragma omp simd reduction(max : mt)
    for (int k = 0; k < V; ++k) mt = t[k] > mt ? t[k] : mt;
  }
  // Pass 2: sums of exponentials (student at 1 and at T, teacher at T).
  float s1 = 0.0f, sq = 0.0f, sp = 0.0f;
  if (unit_t) {
#pragma omp simd reduction(+ : s1)
    for (int k = 0; k < V; ++k) s1 += vexp(z[k] - mz);
    sq = s1;
  } else {
#pragma omp simd reduction(+ : s1, sq)
    for (int k = 0; k < V; ++k) {
      s1 += vexp(z[k] - mz);
      sq += vexp((z[k] - mz) * inv_t);
    }
  }
  if (t) {
#pragma omp simd reduction(+ : sp)
    for (int k = 0; k < V; ++k) sp += vexp((t[k] - mt) * inv_t);
  }
  Pass3 ps;
  ps.mz = mz;
  ps.mt = mt;
  ps.inv_t = inv_t;
  ps.ls1 = std::log(s1);
  ps.lsq = std::log(sq);
  ps.lsp = t ? std::log(sp) : 0.0f;

  RowSums r;
  r.ce = -static_cast<double>((z[target] - mz) - ps.ls1);
  const float scale = cfg.t2_scaling ? cfg.temperature * cfg.temperature : 1.0f;
  const float g_ce = inv_norm * cfg.ce_weight;
  ps.g_ce = g_ce;
  ps.g_kd = t ? inv_norm * cfg.kd_weight * scale * inv_t : 0.0f;
  // Pass 3: entropies, the divergence and (when wanted) the gradient, element by element. The
  // target's -1 of the CE gradient is added after the pass.
  float hq = 0.0f, hp = 0.0f, fkl = 0.0f;
  if (t) {
    if (dz) {
      unit_t ? pass3<true, true, true>(ps, dz, z, t, V, hq, hp, fkl)
             : pass3<true, true, false>(ps, dz, z, t, V, hq, hp, fkl);
    } else {
      pass3<false, true, false>(ps, dz, z, t, V, hq, hp, fkl);
    }
  } else {
    if (dz) {
      unit_t ? pass3<true, false, true>(ps, dz, z, t, V, hq, hp, fkl)
             : pass3<true, false, false>(ps, dz, z, t, V, hq, hp, fkl);
    } else {
      pass3<false, false, false>(ps, dz, z, t, V, hq, hp, fkl);
    }
  }
  if (dz) dz[target] -= g_ce;
  r.student_entropy = hq;
  if (t) {
    r.teacher_entropy = hp;
    r.kl = fkl;
    r.kd = fkl;
  }
  r.loss = cfg.ce_weight * r.ce + (t ? cfg.kd_weight * scale * r.kd : 0.0);
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
  KD_OP("kd_loss", 30.0 * N * V, 4.0 * N * (2.0 * V + (teacher ? V : 0)));
  check_inputs(logits, teacher, Vt, targets, N, V, cfg);
  const Mode mode = mode_of(cfg);
  std::vector<RowSums> rows(static_cast<size_t>(std::max(N, 0)));

  const bool fast = !teacher || mode == Mode::ForwardKL;
#pragma omp parallel for schedule(static) if (worth_parallel(size_t(N) * V, size_t{1} << 15))
  for (int n = 0; n < N; ++n) {
    const size_t row = static_cast<size_t>(n);
    float* dz = dlogits ? dlogits + row * V : nullptr;
    if (targets[n] < 0) {  // masked: no loss, zero gradient
      if (dz) std::fill(dz, dz + V, 0.0f);
      continue;
    }
    const float* t = teacher ? teacher + row * Vt : nullptr;
    rows[row] = fast ? fast_row(dz, logits + row * V, t, targets[n], V, cfg, inv_norm)
                     : loss_row(dz, logits + row * V, t, targets[n], V, cfg, mode, inv_norm);
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

}  // namespace kd::cpu
