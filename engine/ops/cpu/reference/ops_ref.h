// The reference of every CPU op: the first, plainly written version of each (scalar loops, the
// order of the math in docs/ops/<op>.md), kept so that the fast ops in engine/ops/cpu/*.cpp, which
// the model calls, are tested against something simple (tests/test_fast_ops.cpp). Same signatures
// and contract as engine/ops/cpu/ops.h (forward overwrites, backward adds); not used by the engine
// itself.
#pragma once

#include "engine/ops/cpu/ops.h"

namespace kd::cpu::ref {

void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int C);
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                      int T, int C);
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C);
// Plain triple loops (no BLAS), accumulated in double.
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int C, int OC, Layout layout);
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int C, int OC, Layout layout);
// Scalar loops over one query row at a time.
void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH);
void gelu_forward(float* out, const float* inp, size_t n);
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);
void residual_forward(float* out, const float* a, const float* b, size_t n);
void residual_backward(float* da, float* db, const float* dout, size_t n);
// Three log-sum-exp passes and two passes over the row per supervised row, every divergence.
void kd_loss(float* dlogits, LossSums* sums, const float* logits, const float* teacher, int Vt,
             const int32_t* targets, int N, int V, const LossConfig& cfg, float inv_norm);
double global_norm(const float* grads, size_t n);
void adamw_update(float* params, const float* grads, float* m, float* v,
                  std::span<const ParamSpan> spans, const AdamWConfig& cfg, int t,
                  float grad_scale);

}  // namespace kd::cpu::ref
