// Small helpers for testing an op's gradient against finite differences in double precision.
//
// The recipe: write an independent double-precision forward `ref(x)` of the op, pick a random
// projection w of its output, and differentiate the scalar L(x) = sum(w ∘ ref(x)) by central
// differences. The op's analytic backward, fed dout = w, must agree with that gradient.
#pragma once

#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

namespace kd::test {

// n values drawn uniformly from [lo, hi).
inline std::vector<float> random_floats(size_t n, std::mt19937& rng, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// Relative error ||a - b|| / ||b|| (b is the reference); the absolute error ||a - b|| when b = 0.
inline double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0.0;
  double ref = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    ref += b[i] * b[i];
  }
  if (a.size() != b.size()) return INFINITY;
  return ref > 0.0 ? std::sqrt(diff / ref) : std::sqrt(diff);
}

inline double rel_err(const std::vector<float>& a, const std::vector<double>& b) {
  return rel_err(to_double(a), b);
}

// sum_i w[i] * out[i]: the scalar whose gradient with respect to out is w.
inline double project(const std::vector<double>& w, const std::vector<double>& out) {
  double s = 0.0;
  for (size_t i = 0; i < w.size() && i < out.size(); ++i) s += w[i] * out[i];
  return s;
}

// Central differences (L(x + h e_i) - L(x - h e_i)) / 2h for every i. `loss` reads x, which is
// perturbed in place and restored. In double, h = 1e-5 keeps both the truncation error (~h^2) and
// the rounding error (~1e-16 / h) below 1e-9 relative for the smooth ops tested here.
template <class Loss>
std::vector<double> fd_gradient(Loss&& loss, std::vector<double>& x, double h = 1e-5) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss();
    x[i] = saved - h;
    const double down = loss();
    x[i] = saved;
    grad[i] = (up - down) / (2.0 * h);
  }
  return grad;
}

// True when every value is finite (no NaN or infinity left behind).
inline bool all_finite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

}  // namespace kd::test
