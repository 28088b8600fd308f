// Causal multi-head self-attention, CPU twin of cuda/attention.cu. Math: docs/ops/attention.md.
//
// qkv [B,T,3C]: for head h, dimension d: q at [b,t, h*hs+d], k at [b,t, C + h*hs+d], v at
// [b,t, 2C + h*hs+d] (the GPT-2 c_attn split). One task per (batch, head) tile, each through
// matrix products (single-threaded BLAS on strided views of qkv): S = scale Q K^T, the causal
// mask and the softmax row by row, O = P V. The backward recomputes P from the saved log-sum-exp
// the same way. Each thread keeps one T×T scratch tile (reused); nothing T×T outlives a call. A
// tile is computed by one thread whatever the thread count, so the result does not depend on it.
// The scalar version is engine/ops/cpu/reference/attention.cpp.
#include <cblas.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/trace.h"
#include "engine/ops/cpu/ops.h"
#include "engine/ops/cpu/threads.h"
#include "engine/ops/cpu/vmath.h"

namespace kd::cpu {

namespace {

void check_heads(int C, int NH, const char* op) {
  KD_REQUIRE(NH > 0 && C % NH == 0,
             std::string(op) + ": channels C=" + std::to_string(C) +
                 " must be a positive multiple of the head count NH=" + std::to_string(NH));
}

// Tiles of work below this many multiply-adds in all run on the calling thread.
constexpr double kParallelWork = 1e6;

// Row by row over the scores S [T,T] of one tile: the causal mask (j > i gets probability 0),
// the softmax in place, and each row's log-sum-exp.
KD_SIMD_CLONES void softmax_causal(float* S, float* row_lse, int T) {
  for (int i = 0; i < T; ++i) {
    float* s = S + static_cast<size_t>(i) * T;
    float mx = -std::numeric_limits<float>::infinity();
    for (int j = 0; j <= i; ++j) mx = s[j] > mx ? s[j] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j <= i; ++j) {
      const float e = vexp(s[j] - mx);
      s[j] = e;
      sum += e;
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j <= i; ++j) s[j] *= inv;
    for (int j = i + 1; j < T; ++j) s[j] = 0.0f;
    row_lse[i] = mx + std::log(sum);
  }
}

// One tile's backward through the softmax. In: P holds the scaled scores, dP holds dO V^T. Out: P
// the probabilities exp(S - lse) (0 above the diagonal) and dP the score gradient
// dS_ij = P_ij (dP_ij - D_i) * scale, with D_i = dO_i · O_i (= sum_j P_ij dP_ij); the scale is the
// chain rule through the scaled scores.
KD_SIMD_CLONES void softmax_backward_causal(float* P, float* dP, const float* g, const float* o,
                                            const float* row_lse, int T, int C, int hs,
                                            float scale) {
  for (int i = 0; i < T; ++i) {
    float* p = P + static_cast<size_t>(i) * T;
    float* ds = dP + static_cast<size_t>(i) * T;
    const float* gi = g + static_cast<size_t>(i) * C;
    const float* oi = o + static_cast<size_t>(i) * C;
    float D = 0.0f;
#pragma omp simd reduction(+ : D)
    for (int d = 0; d < hs; ++d) D += gi[d] * oi[d];
    const float li = row_lse[i];
#pragma omp simd
    for (int j = 0; j <= i; ++j) {
      const float pij = vexp(p[j] - li);
      p[j] = pij;
      ds[j] = pij * (ds[j] - D) * scale;
    }
    for (int j = i + 1; j < T; ++j) {
      p[j] = 0.0f;
      ds[j] = 0.0f;
    }
  }
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH) {
  KD_OP("attention_forward", 2.0 * B * T * T * C, 16.0 * B * T * C);
  check_heads(C, NH, "attention_forward");
  if (B <= 0 || T <= 0) return;
  blas_single_threaded();
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int ld = 3 * C;
  const size_t row3 = static_cast<size_t>(ld);
  const int tiles = B * NH;
  const bool parallel = double(B) * T * T * C >= kParallelWork;
#pragma omp parallel if (parallel)
  {
    std::vector<float> S(static_cast<size_t>(T) * T);
#pragma omp for schedule(static)
    for (int bh = 0; bh < tiles; ++bh) {
      const int b = bh / NH;
      const int h = bh % NH;
      const float* q = qkv + static_cast<size_t>(b) * T * row3 + h * hs;
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* o = out + static_cast<size_t>(b) * T * C + h * hs;
      float* row_lse = lse + static_cast<size_t>(bh) * T;
      // S[T,T] = scale * Q K^T (the upper triangle is computed and then masked out).
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, ld, k, ld, 0.0f,
                  S.data(), T);
      softmax_causal(S.data(), row_lse, T);
      // O[T,hs] = P V.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, S.data(), T, v, ld,
                  0.0f, o, C);
    }
  }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH) {
  KD_OP("attention_backward", 5.0 * B * T * T * C, 40.0 * B * T * C);
  check_heads(C, NH, "attention_backward");
  if (B <= 0 || T <= 0) return;
  blas_single_threaded();
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int ld = 3 * C;
  const size_t row3 = static_cast<size_t>(ld);
  const int tiles = B * NH;
  const bool parallel = double(B) * T * T * C >= kParallelWork;
  // One task per (b, h): the tile's dQ, dK and dV belong to it alone, so no two threads write the
  // same gradient.
#pragma omp parallel if (parallel)
  {
    std::vector<float> P(static_cast<size_t>(T) * T), dP(static_cast<size_t>(T) * T);
#pragma omp for schedule(static)
    for (int bh = 0; bh < tiles; ++bh) {
      const int b = bh / NH;
      const int h = bh % NH;
      const size_t qoff = static_cast<size_t>(b) * T * row3 + h * hs;
      const float* q = qkv + qoff;
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* dq = dqkv + qoff;
      float* dk = dq + C;
      float* dv = dq + 2 * C;
      const size_t ooff = static_cast<size_t>(b) * T * C + h * hs;
      const float* g = dout + ooff;  // dO
      const float* o = out + ooff;   // O
      const float* row_lse = lse + static_cast<size_t>(bh) * T;
      // P = exp(scale Q K^T - lse), causal; dP = dO V^T.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, ld, k, ld, 0.0f,
                  P.data(), T);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, g, C, v, ld, 0.0f,
                  dP.data(), T);
      softmax_backward_causal(P.data(), dP.data(), g, o, row_lse, T, C, hs, scale);
      // dQ += dS K;  dK += dS^T Q;  dV += P^T dO.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, dP.data(), T, k, ld,
                  1.0f, dq, ld);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, dP.data(), T, q, ld,
                  1.0f, dk, ld);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, P.data(), T, g, C, 1.0f,
                  dv, ld);
    }
  }
}

}  // namespace kd::cpu
