// The op layer's shared types: what an op's caller passes and gets back, the same for the CPU twins
// (engine/ops/cpu/ops.h) and the CUDA kernels (cuda/<op>.cuh). The math of each op is in
// docs/ops/<op>.md.
//
// The contract every op follows on both backends:
// - Tensors are row-major, contiguous, passed as raw pointers with explicit sizes. B = batch,
//   T = sequence length, C = channels, NH = heads, V = vocabulary, N = rows (usually B*T).
// - A forward writes (overwrites) its outputs.
// - A backward ADDS into every gradient it produces (parameters and inputs alike), so gradients
//   that meet (residual stream, tied embedding, accumulation over micro-batches) need no extra
//   pass. The caller zeroes gradients once per optimizer step.
//   One stated exception: the GPU's matmul_backward(..., accumulate_dinp = false) overwrites dinp,
//   which the GPU model uses only where dinp would be zero (the same values, one read less).
// - A precondition that fails is a programming error of the caller, not bad user input.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/base/divergence.h"

namespace kd {

// Weight layouts of a matrix product: InOut is HF's Conv1D [C, OC] (out = inp @ W); OutIn is
// [OC, C] (out = inp @ W^T), used by the LM head tied to wte [V, C].
enum class Layout { InOut, OutIn };

// ---- the distillation loss (cross-entropy and temperature divergence, fused); Divergence is in
// engine/base/divergence.h, where the recipe reads it too

struct LossConfig {
  float ce_weight = 1.0f;    // weight of CE(T=1) against the targets
  float kd_weight = 0.0f;    // weight of the divergence; ignored when there is no teacher
  float temperature = 1.0f;  // T divides BOTH teacher and student logits in the divergence
  Divergence divergence = Divergence::ForwardKL;
  float beta = 0.5f;       // JSD(beta) mixing weight, 0..1 (0 and 1 are the KL limits)
  bool t2_scaling = true;  // multiply the divergence by T^2
};

// Sums over the supervised rows of one call (unnormalised); the trainer adds them over
// micro-batches and divides by the global supervised-token count.
struct LossSums {
  double loss = 0;  // sum of ce_weight*ce + kd_weight*s(T)*div per row
  double ce = 0;    // sum of CE(T=1)
  double kd = 0;    // sum of the divergence D(p_T, q_T) (unscaled by T^2 or kd_weight)
  double kl = 0;    // sum of the true forward KL(p_T || q_T), whatever divergence is trained
  double teacher_entropy = 0;  // sum of H(p_T)
  double student_entropy = 0;  // sum of H(q_T)
  int64_t rows = 0;            // supervised rows (target >= 0)

  LossSums& operator+=(const LossSums& o) {
    loss += o.loss;
    ce += o.ce;
    kd += o.kd;
    kl += o.kl;
    teacher_entropy += o.teacher_entropy;
    student_entropy += o.student_entropy;
    rows += o.rows;
    return *this;
  }
};

// ---- AdamW with global-norm clipping
struct AdamWConfig {
  float lr = 3e-4f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
};
// A contiguous run of parameters with one decay rule (2-D weights decay; biases and LayerNorm
// don't).
struct ParamSpan {
  size_t offset;
  size_t size;
  bool decay;
};

}  // namespace kd
