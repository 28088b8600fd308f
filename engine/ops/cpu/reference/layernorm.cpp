// LayerNorm over the last dimension: the plain reference of the CPU op (tests only). Math:
// docs/ops/layernorm.md.
#include <cmath>

#include "engine/ops/cpu/reference/ops_ref.h"

namespace kd::cpu::ref {

namespace {

constexpr float kEps = 1e-5f;
constexpr int kChannelBlock = 32;  // channels per thread in the parameter-gradient pass

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    float* y = out + static_cast<size_t>(n) * C;
    float sum = 0.0f;
    for (int c = 0; c < C; ++c) sum += x[c];
    const float m = sum / C;
    float sq = 0.0f;  // two passes: the variance of centred values does not cancel catastrophically
    for (int c = 0; c < C; ++c) sq += (x[c] - m) * (x[c] - m);
    const float s = 1.0f / std::sqrt(sq / C + kEps);  // biased variance, as torch.nn.LayerNorm
    for (int c = 0; c < C; ++c) y[c] = (x[c] - m) * s * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = s;
  }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C) {
  // Input gradient: rows are independent.
  //   dxhat = dout * w;  dx += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    const float* g = dout + static_cast<size_t>(n) * C;
    float* dx = dinp + static_cast<size_t>(n) * C;
    const float m = mean[n];
    const float s = rstd[n];
    float sum_dxhat = 0.0f;
    float sum_dxhat_xhat = 0.0f;
    for (int c = 0; c < C; ++c) {
      const float xhat = (x[c] - m) * s;
      const float dxhat = g[c] * weight[c];
      sum_dxhat += dxhat;
      sum_dxhat_xhat += dxhat * xhat;
    }
    const float mean_dxhat = sum_dxhat / C;
    const float mean_dxhat_xhat = sum_dxhat_xhat / C;
    for (int c = 0; c < C; ++c) {
      const float xhat = (x[c] - m) * s;
      const float dxhat = g[c] * weight[c];
      dx[c] += s * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
    }
  }

  // Parameter gradients sum over rows. Each thread owns a block of channels and walks the rows in
  // order, so the result does not depend on the thread count.
  const int blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kChannelBlock;
    const int c1 = c0 + kChannelBlock < C ? c0 + kChannelBlock : C;
    float acc_w[kChannelBlock] = {};
    float acc_b[kChannelBlock] = {};
    for (int n = 0; n < N; ++n) {
      const float* x = inp + static_cast<size_t>(n) * C;
      const float* g = dout + static_cast<size_t>(n) * C;
      for (int c = c0; c < c1; ++c) {
        acc_w[c - c0] += g[c] * (x[c] - mean[n]) * rstd[n];
        acc_b[c - c0] += g[c];
      }
    }
    for (int c = c0; c < c1; ++c) {
      dweight[c] += acc_w[c - c0];
      dbias[c] += acc_b[c - c0];
    }
  }
}

}  // namespace kd::cpu::ref
