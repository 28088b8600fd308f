// Causal multi-head self-attention: the plain reference of the CPU op (tests only). Math:
// docs/ops/attention.md.
//
// qkv [B,T,3C]: for head h, dimension d: q at [b,t, h*hs+d], k at [b,t, C + h*hs+d], v at
// [b,t, 2C + h*hs+d] (the GPT-2 c_attn split). Neither pass stores a T×T tensor: each thread keeps
// one row of T scores.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/ops/cpu/reference/ops_ref.h"

namespace kd::cpu::ref {

namespace {

void check_heads(int C, int NH, const char* op) {
  KD_REQUIRE(NH > 0 && C % NH == 0,
             std::string(op) + ": channels C=" + std::to_string(C) +
                 " must be a positive multiple of the head count NH=" + std::to_string(NH));
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH) {
  check_heads(C, NH, "attention_forward");
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const size_t row3 = 3 * static_cast<size_t>(C);
  // One task per (b, h, query t); late queries cost more, so hand them out dynamically.
#pragma omp parallel
  {
    std::vector<float> scores(T > 0 ? T : 1);
#pragma omp for schedule(dynamic, 8)
    for (int bht = 0; bht < B * NH * T; ++bht) {
      const int t = bht % T;
      const int h = (bht / T) % NH;
      const int b = bht / (T * NH);
      const float* base = qkv + static_cast<size_t>(b) * T * row3;
      const float* q = base + t * row3 + h * hs;
      // Scaled scores against keys 0..t and their maximum.
      float max_s = -std::numeric_limits<float>::infinity();
      for (int j = 0; j <= t; ++j) {
        const float* k = base + j * row3 + C + h * hs;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < hs; ++d) dot += q[d] * k[d];
        scores[j] = dot * scale;
        if (scores[j] > max_s) max_s = scores[j];
      }
      // Softmax-weighted sum of values.
      float* o = out + (static_cast<size_t>(b) * T + t) * C + h * hs;
      for (int d = 0; d < hs; ++d) o[d] = 0.0f;
      float sum = 0.0f;
      for (int j = 0; j <= t; ++j) {
        const float e = std::exp(scores[j] - max_s);
        sum += e;
        const float* v = base + j * row3 + 2 * C + h * hs;
#pragma omp simd
        for (int d = 0; d < hs; ++d) o[d] += e * v[d];
      }
      const float inv = 1.0f / sum;
      for (int d = 0; d < hs; ++d) o[d] *= inv;
      lse[(static_cast<size_t>(b) * NH + h) * T + t] = max_s + std::log(sum);
    }
  }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH) {
  check_heads(C, NH, "attention_backward");
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const size_t row3 = 3 * static_cast<size_t>(C);
  // One task per (b, h): the keys and values of a head receive contributions from every later
  // query, and a task owns all of them, so no two threads write the same gradient.
#pragma omp parallel
  {
    std::vector<float> p(T > 0 ? T : 1);
    std::vector<float> dq(hs);
#pragma omp for schedule(static)
    for (int bh = 0; bh < B * NH; ++bh) {
      const int b = bh / NH;
      const int h = bh % NH;
      const float* base = qkv + static_cast<size_t>(b) * T * row3;
      float* dbase = dqkv + static_cast<size_t>(b) * T * row3;
      for (int i = 0; i < T; ++i) {
        const float* q = base + i * row3 + h * hs;
        const size_t oi = (static_cast<size_t>(b) * T + i) * C + h * hs;
        const float* g = dout + oi;  // dO_i
        const float* o = out + oi;   // O_i
        const float row_lse = lse[static_cast<size_t>(bh) * T + i];
        // D_i = dO_i · O_i  (= sum_j P_ij dP_ij)
        float D = 0.0f;
#pragma omp simd reduction(+ : D)
        for (int d = 0; d < hs; ++d) D += g[d] * o[d];
        // P_ij = exp(S_ij - lse_i), recomputed from q and k.
        for (int j = 0; j <= i; ++j) {
          const float* k = base + j * row3 + C + h * hs;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int d = 0; d < hs; ++d) dot += q[d] * k[d];
          p[j] = std::exp(dot * scale - row_lse);
        }
        for (int d = 0; d < hs; ++d) dq[d] = 0.0f;
        for (int j = 0; j <= i; ++j) {
          const float* k = base + j * row3 + C + h * hs;
          const float* v = base + j * row3 + 2 * C + h * hs;
          float* dk = dbase + j * row3 + C + h * hs;
          float* dv = dbase + j * row3 + 2 * C + h * hs;
          // dP_ij = dO_i · V_j;  dS_ij = P_ij (dP_ij - D_i); scores were scaled, so dS carries
          // scale.
          float dp = 0.0f;
#pragma omp simd reduction(+ : dp)
          for (int d = 0; d < hs; ++d) dp += g[d] * v[d];
          const float ds = p[j] * (dp - D) * scale;
          const float pj = p[j];
#pragma omp simd
          for (int d = 0; d < hs; ++d) {
            dq[d] += ds * k[d];
            dk[d] += ds * q[d];
            dv[d] += pj * g[d];
          }
        }
        float* dqi = dbase + i * row3 + h * hs;
        for (int d = 0; d < hs; ++d) dqi[d] += dq[d];
      }
    }
  }
}

}  // namespace kd::cpu::ref
