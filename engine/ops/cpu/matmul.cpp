// Matrix product with bias through BLAS, CPU twin of cuda/matmul.cu. Math: docs/ops/matmul.md.
//
// Threads: BLAS is single-threaded (engine/ops/cpu/threads.h); each product is cut into one block
// per OpenMP thread along the output dimension that has more rows or columns, and every block is
// one sgemm call that owns its part of the output. Products too small to pay for waking the pool
// run as one call on the calling thread. For a fixed thread count the blocks are fixed, so the
// result is the same bits run after run.
#include <cblas.h>
#include <omp.h>

#include <algorithm>

#include "engine/base/trace.h"
#include "engine/ops/cpu/ops.h"
#include "engine/ops/cpu/threads.h"
#include "engine/ops/cpu/vmath.h"

namespace kd::cpu {

namespace {

constexpr int kColumnBlock = 64;        // output columns per thread in the bias-gradient pass
constexpr double kParallelFlops = 1e7;  // below this a product runs on the calling thread

// Threads to use for a product of `flops` whose split dimension has `extent` rows or columns.
int threads_for(double flops, int extent) {
  if (flops < kParallelFlops) return 1;
  return std::max(1, std::min(omp_get_max_threads(), extent / 8));
}

// [begin, end) of block `i` of `parts` over `extent`, in multiples of 8 where possible (whole SIMD
// tiles for the kernel).
void block_of(int i, int parts, int extent, int& begin, int& end) {
  const int units = (extent + 7) / 8;
  const int u0 = static_cast<int>(static_cast<long>(units) * i / parts);
  const int u1 = static_cast<int>(static_cast<long>(units) * (i + 1) / parts);
  begin = std::min(extent, u0 * 8);
  end = std::min(extent, u1 * 8);
}

// Runs body(begin, end) over `parts` blocks of [0, extent), one per thread.
template <class Body>
void split(int parts, int extent, Body&& body) {
  if (parts <= 1) {
    body(0, extent);
    return;
  }
#pragma omp parallel num_threads(parts)
  {
    int begin = 0, end = 0;
    block_of(omp_get_thread_num(), omp_get_num_threads(), extent, begin, end);
    if (end > begin) body(begin, end);
  }
}

// out[n, o0:o1] = gelu(pre[n, o0:o1]) for rows [n0, n1).
KD_SIMD_CLONES void gelu_block(float* out, const float* pre, int OC, int n0, int n1, int o0,
                               int o1) {
  for (int n = n0; n < n1; ++n) {
    const float* x = pre + static_cast<size_t>(n) * OC;
    float* y = out + static_cast<size_t>(n) * OC;
    for (int o = o0; o < o1; ++o) y[o] = gelu_tanh(x[o]);
  }
}

// matmul_forward, and when gelu_out is non-null gelu_out = gelu(out) block by block.
void forward(float* out, float* gelu_out, const float* inp, const float* weight, const float* bias,
             int N, int C, int OC, Layout layout) {
  if (N <= 0 || OC <= 0) return;
  blas_single_threaded();
  const bool in_out = layout == Layout::InOut;
  const double flops = 2.0 * N * C * OC;
  // out[n0:n1, o0:o1] += inp[n0:n1, :] · W[:, o0:o1]
  auto product = [&](int n0, int n1, int o0, int o1) {
    const float* a = inp + static_cast<size_t>(n0) * C;
    float* c = out + static_cast<size_t>(n0) * OC + o0;
    if (in_out) {  // W is [C,OC]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n1 - n0, o1 - o0, C, 1.0f, a, C,
                  weight + o0, OC, 1.0f, c, OC);
    } else {  // W is [OC,C]: the product with its transpose
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n1 - n0, o1 - o0, C, 1.0f, a, C,
                  weight + static_cast<size_t>(o0) * C, C, 1.0f, c, OC);
    }
  };
  // Start every row of the block from the bias (or zero) and let sgemm add the product (beta = 1):
  // whatever was in `out` before never leaks through.
  auto block = [&](int n0, int n1, int o0, int o1) {
    for (int n = n0; n < n1; ++n) {
      float* row = out + static_cast<size_t>(n) * OC;
      if (bias != nullptr) {
        std::copy(bias + o0, bias + o1, row + o0);
      } else {
        std::fill(row + o0, row + o1, 0.0f);
      }
    }
    if (C > 0) product(n0, n1, o0, o1);
    if (gelu_out != nullptr) gelu_block(gelu_out, out, OC, n0, n1, o0, o1);
  };
  if (OC >= N) {
    split(threads_for(flops, OC), OC, [&](int o0, int o1) { block(0, N, o0, o1); });
  } else {
    split(threads_for(flops, N), N, [&](int n0, int n1) { block(n0, n1, 0, OC); });
  }
}

}  // namespace

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int C, int OC, Layout layout) {
  KD_OP("matmul_forward", 2.0 * N * C * OC,
        4.0 * (double(N) * C + double(C) * OC + double(N) * OC));
  forward(out, nullptr, inp, weight, bias, N, C, OC, layout);
}

void matmul_gelu_forward(float* pre, float* out, const float* inp, const float* weight,
                         const float* bias, int N, int C, int OC) {
  KD_OP("matmul_gelu_forward", 2.0 * N * C * OC + 10.0 * N * OC,
        4.0 * (double(N) * C + double(C) * OC + 2.0 * N * OC));
  forward(pre, out, inp, weight, bias, N, C, OC, Layout::InOut);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int C, int OC, Layout layout) {
  KD_OP("matmul_backward", 4.0 * N * C * OC, 4.0 * (2.0 * N * C + 2.0 * C * OC + double(N) * OC));
  if (N <= 0 || C <= 0 || OC <= 0) return;
  blas_single_threaded();
  const bool in_out = layout == Layout::InOut;
  const double flops = 2.0 * N * C * OC;
  if (dinp != nullptr) {
    // dinp[N,C] += dout[N,OC] · W^T, where W^T is [OC,C]: the transpose of InOut, or OutIn as
    // stored. Blocks of rows of dinp.
    split(threads_for(flops, N), N, [&](int n0, int n1) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, in_out ? CblasTrans : CblasNoTrans, n1 - n0, C, OC,
                  1.0f, dout + static_cast<size_t>(n0) * OC, OC, weight, in_out ? OC : C, 1.0f,
                  dinp + static_cast<size_t>(n0) * C, C);
    });
  }
  if (dweight != nullptr) {
    if (in_out) {
      // dW[C,OC] += inp^T · dout: blocks of the larger of dW's dimensions.
      if (OC >= C) {
        split(threads_for(flops, OC), OC, [&](int o0, int o1) {
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, o1 - o0, N, 1.0f, inp, C,
                      dout + o0, OC, 1.0f, dweight + o0, OC);
        });
      } else {
        split(threads_for(flops, C), C, [&](int c0, int c1) {
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c1 - c0, OC, N, 1.0f, inp + c0, C,
                      dout, OC, 1.0f, dweight + static_cast<size_t>(c0) * OC, OC);
        });
      }
    } else {
      // dW[OC,C] += dout^T · inp: blocks of dW's rows.
      split(threads_for(flops, OC), OC, [&](int o0, int o1) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, o1 - o0, C, N, 1.0f, dout + o0, OC,
                    inp, C, 1.0f, dweight + static_cast<size_t>(o0) * C, C);
      });
    }
  }
  if (dbias != nullptr) {
    // dbias[o] += sum_n dout[n,o]: threads own blocks of columns and walk rows in order.
    const int blocks = (OC + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (worth_parallel(size_t(N) * OC, size_t{1} << 18))
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
