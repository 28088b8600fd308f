// Matrix product with bias through OpenBLAS, CPU twin of cuda/matmul.cu. Math: docs/ops/matmul.md.
#include <cblas.h>

#include "engine/ops/cpu/ops.h"
#include "engine/base/trace.h"

namespace kd::cpu {

namespace {

constexpr int kColumnBlock = 64;  // output columns per thread in the bias-gradient pass

}  // namespace

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int C, int OC, Layout layout) {
  KD_OP("matmul_forward", 2.0 * N * C * OC,
        4.0 * (double(N) * C + double(C) * OC + double(N) * OC));
  if (N <= 0 || OC <= 0) return;
    // Start every row from the bias (or zero) and let sgemm add the product (beta = 1). Writing the
    // start value ourselves means whatever was in `out` before never leaks through.
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    float* row = out + static_cast<size_t>(n) * OC;
    for (int o = 0; o < OC; ++o) row[o] = bias != nullptr ? bias[o] : 0.0f;
  }
  if (C <= 0) return;
  if (layout == Layout::InOut) {
    // out[N,OC] += inp[N,C] · W[C,OC]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, OC, C, 1.0f, inp, C, weight, OC, 1.0f,
                out, OC);
  } else {
    // out[N,OC] += inp[N,C] · W[OC,C]^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C, 1.0f,
                out, OC);
  }
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int C, int OC, Layout layout) {
  KD_OP("matmul_backward", 4.0 * N * C * OC, 4.0 * (2.0 * N * C + 2.0 * C * OC + double(N) * OC));
  if (N <= 0 || C <= 0 || OC <= 0) {
    return;
  }
  const bool in_out = layout == Layout::InOut;
  if (dinp != nullptr) {
    // dinp[N,C] += dout[N,OC] · W^T, where W^T is [OC,C]: the transpose of InOut, or OutIn as
    // stored.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, in_out ? CblasTrans : CblasNoTrans, N, C, OC, 1.0f,
                dout, OC, weight, in_out ? OC : C, 1.0f, dinp, C);
  }
  if (dweight != nullptr) {
    if (in_out) {
      // dW[C,OC] += inp^T · dout
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, OC, N, 1.0f, inp, C, dout, OC, 1.0f,
                  dweight, OC);
    } else {
      // dW[OC,C] += dout^T · inp
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f,
                  dweight, C);
    }
  }
  if (dbias != nullptr) {
    // dbias[o] += sum_n dout[n,o]: threads own blocks of columns and walk rows in order.
    const int blocks = (OC + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < blocks; ++blk) {
      const int o0 = blk * kColumnBlock;
      const int o1 = o0 + kColumnBlock < OC ? o0 + kColumnBlock : OC;
      float acc[kColumnBlock] = {};
      for (int n = 0; n < N; ++n) {
        const float* g = dout + static_cast<size_t>(n) * OC;
        for (int o = o0; o < o1; ++o) acc[o - o0] += g[o];
      }
      for (int o = o0; o < o1; ++o) dbias[o] += acc[o - o0];
    }
  }
}

}  // namespace kd::cpu
