// LayerNorm over the last dimension, CPU twin of cuda/layernorm.cu. Math: docs/ops/layernorm.md.
#include <cmath>

#include "engine/base/trace.h"
#include "engine/ops/cpu/ops.h"
#include "engine/ops/cpu/threads.h"
#include "engine/ops/cpu/vmath.h"

namespace kd::cpu {

namespace {

constexpr float kEps = 1e-5f;
constexpr int kChannelBlock = 32;  // channels per thread in the parameter-gradient pass
// Row elements (N*C) from which a LayerNorm pass is split across threads.
constexpr size_t kLayerNormParallel = size_t{1} << 18;

// Forward over rows [n0, n1). With b non-null the input row is a + b, written to res first (the
// residual add fused in: the row is still in cache when LayerNorm reads it).
KD_SIMD_CLONES void forward_rows(float* res, float* out, float* mean, float* rstd, const float* a,
                                 const float* b, const float* weight, const float* bias, int C,
                                 size_t n0, size_t n1) {
  for (size_t n = n0; n < n1; ++n) {
    const float* x = a + n * C;
    if (b != nullptr) {
      const float* y = b + n * C;
      float* r = res + n * C;
      for (int c = 0; c < C; ++c) r[c] = x[c] + y[c];
      x = r;
    }
    float* o = out + n * C;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; ++c) sum += x[c];
    const float m = sum / C;
    float sq = 0.0f;  // two passes: the variance of centred values does not cancel catastrophically
#pragma omp simd reduction(+ : sq)
    for (int c = 0; c < C; ++c) sq += (x[c] - m) * (x[c] - m);
    const float s = 1.0f / std::sqrt(sq / C + kEps);  // biased variance, as torch.nn.LayerNorm
    for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = s;
  }
}

// Input gradient over rows [n0, n1); rows are independent.
//   dxhat = dout * w;  dx += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
KD_SIMD_CLONES void backward_rows(float* dinp, const float* dout, const float* inp,
                                  const float* weight, const float* mean, const float* rstd, int C,
                                  size_t n0, size_t n1) {
  for (size_t n = n0; n < n1; ++n) {
    const float* x = inp + n * C;
    const float* g = dout + n * C;
    float* dx = dinp + n * C;
    const float m = mean[n];
    const float s = rstd[n];
    float sum_dxhat = 0.0f;
    float sum_dxhat_xhat = 0.0f;
#pragma omp simd reduction(+ : sum_dxhat, sum_dxhat_xhat)
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
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C) {
  KD_OP("layernorm_forward", 8.0 * N * C, 8.0 * N * C);
  const size_t rows = N > 0 ? static_cast<size_t>(N) : 0;
  for_ranges(rows, kLayerNormParallel / (C > 0 ? C : 1), [&](size_t n0, size_t n1) {
    forward_rows(nullptr, out, mean, rstd, inp, nullptr, weight, bias, C, n0, n1);
  });
}

void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a,
                                const float* b, const float* weight, const float* bias, int N,
                                int C) {
  KD_OP("residual_layernorm_forward", 9.0 * N * C, 20.0 * N * C);
  const size_t rows = N > 0 ? static_cast<size_t>(N) : 0;
  for_ranges(rows, kLayerNormParallel / (C > 0 ? C : 1), [&](size_t n0, size_t n1) {
    forward_rows(res, out, mean, rstd, a, b, weight, bias, C, n0, n1);
  });
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C) {
  KD_OP("layernorm_backward", 14.0 * N * C, 16.0 * N * C);
  const size_t rows = N > 0 ? static_cast<size_t>(N) : 0;
  for_ranges(rows, kLayerNormParallel / (C > 0 ? C : 1), [&](size_t n0, size_t n1) {
    backward_rows(dinp, dout, inp, weight, mean, rstd, C, n0, n1);
  });

  // Parameter gradients sum over rows. Each thread owns a block of channels and walks the rows in
  // order, so the result does not depend on the thread count.
  const int blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static) if (worth_parallel(size_t(N) * C, kLayerNormParallel))
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kChannelBlock;
    const int c1 = c0 + kChannelBlock < C ? c0 + kChannelBlock : C;
    float acc_w[kChannelBlock] = {};
    float acc_b[kChannelBlock] = {};
    for (int n = 0; n < N; ++n) {
      const float* x = inp + static_cast<size_t>(n) * C;
      const float* g = dout + static_cast<size_t>(n) * C;
      const float m = mean[n], s = rstd[n];
#pragma omp simd
      for (int c = c0; c < c1; ++c) {
        acc_w[c - c0] += g[c] * (x[c] - m) * s;
        acc_b[c - c0] += g[c];
      }
    }
    for (int c = c0; c < c1; ++c) {
      dweight[c] += acc_w[c - c0];
      dbias[c] += acc_b[c - c0];
    }
  }
}

}  // namespace kd::cpu
