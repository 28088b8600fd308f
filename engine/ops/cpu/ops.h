// The CPU twin of every op: plain C++, fp32, threaded with OpenMP. Each function carries the name
// its CUDA kernel carries (cuda/<op>.cu) and is that kernel's oracle in tests. The math of each op
// is in docs/ops/<op>.md; the contract every op follows (layouts, forward overwrites, backward
// adds) and the shared types are in engine/ops/ops.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "engine/ops/ops.h"

namespace kd::cpu {

// ---- token + position embedding
// -------------------------------------------------------------------- out[b,t,:] =
// wte[tokens[b,t],:] + wpe[t,:]          wte [V,C], wpe [maxT,C], out [B,T,C]
void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int C);
// dwte[tokens[b,t],:] += dout[b,t,:]; dwpe[t,:] += dout[b,t,:]
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                      int T, int C);

// ---- LayerNorm over the last dimension (eps = 1e-5, as GPT-2)
// --------------------------------------- out = (x - mean) * rstd * w + b, saving mean[N] and
// rstd[N] for the backward.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C);
// Fused residual add + LayerNorm (forward only): res = a + b, then out = LayerNorm(res) as
// layernorm_forward. The same values as residual_forward followed by layernorm_forward, in one
// pass over each row. Its backward is those two ops' backwards.
void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a,
                                const float* b, const float* weight, const float* bias, int N,
                                int C);

// ---- matrix product with bias (BLAS)
// ------------------------------------------------------------------ Weight layouts: InOut is HF's
// Conv1D [C, OC] (out = inp @ W); OutIn is [OC, C] (out = inp @ W^T), used by the LM head tied to
// wte [V, C]. bias may be null.
// out[N,OC] = inp[N,C] · W + bias
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int C, int OC, Layout layout);
// Fused bias + GELU (the MLP's first product): pre = inp · W + bias as matmul_forward (InOut),
// and out = gelu(pre) as gelu_forward, each thread applying GELU to its own block of the product
// right after computing it. Same values as the two ops in sequence.
void matmul_gelu_forward(float* pre, float* out, const float* inp, const float* weight,
                         const float* bias, int N, int C, int OC);
// dinp += dout · W^T; dweight += (layout-appropriate) inp^T · dout; dbias += sum_rows dout.
// dinp, dweight, dbias may each be null (not wanted).
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int C, int OC, Layout layout);

// ---- causal multi-head self-attention
// -------------------------------------------------------------- qkv [B,T,3C] holds q | k | v, each
// [B,T,NH,hs] with hs = C/NH. out [B,T,C]. lse [B,NH,T] is the log-sum-exp of each query's scaled
// scores (scale 1/sqrt(hs)), saved for the backward, which recomputes the probabilities from it (no
// T×T tensor is kept).
void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH);
// dqkv [B,T,3C] += gradient; uses out and lse from the forward.
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH);

// ---- GELU, tanh approximation (GPT-2)
// --------------------------------------------------------------
void gelu_forward(float* out, const float* inp, size_t n);
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);

// ---- residual add
// ------------------------------------------------------------------------------------ out = a + b;
// backward: da += dout, db += dout.
void residual_forward(float* out, const float* a, const float* b, size_t n);
void residual_backward(float* da, float* db, const float* dout, size_t n);

// ---- the distillation loss (cross-entropy and temperature divergence, fused)
// ------------------------

// logits [N,V] student; teacher [N,Vt] with row stride Vt >= V (a padded teacher vocabulary is read
// on its first V columns, renormalised there) or null for plain CE. targets[N]: the next token, or
// < 0 to mask the row out of every term. dlogits [N,V] (may alias logits: written in place; may be
// null for evaluation) receives d(loss * inv_norm)/dlogits, i.e. the gradient of the globally
// normalised loss; masked rows get 0. Rows are processed one at a time: no [N,V] probability tensor
// exists.
void kd_loss(float* dlogits, LossSums* sums, const float* logits, const float* teacher, int Vt,
             const int32_t* targets, int N, int V, const LossConfig& cfg, float inv_norm);

// ---- AdamW with global-norm clipping
// ------------------------------------------------------------------
// sqrt(sum grads^2) over n values, accumulated in double in a fixed order (deterministic).
double global_norm(const float* grads, size_t n);
// One AdamW step (t = 1-based step count for bias correction) on every span. Each gradient is first
// multiplied by grad_scale (the clipping factor min(1, clip / norm), or 1).
// m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  p <- p - lr (mhat/(sqrt(vhat)+eps) + wd*p
// [decay])
void adamw_update(float* params, const float* grads, float* m, float* v,
                  std::span<const ParamSpan> spans, const AdamWConfig& cfg, int t,
                  float grad_scale);

}  // namespace kd::cpu
