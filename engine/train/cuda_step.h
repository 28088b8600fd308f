// The GPU training step: a student (and optionally a frozen teacher) resident on the GPU, and one
// optimizer step per call with ONE host synchronisation, at its end, to read the loss sums and the
// gradient norm.
//
//   step(inputs, targets, lr, clip, t):
//     copy the step's tokens and targets (pinned host -> device, async, on the step's stream)
//     zero the gradients and the device loss sums
//     for each of grad_accum micro-batches:
//       teacher.forward_inference -> teacher logits [B,T,Vt] (bf16, loss workspace)
//       student.forward           -> logits [B,T,V] (bf16)
//       kd_loss                   -> sums += ..., dlogits written over the logits, already scaled
//                                    by 1 / (supervised tokens of the whole step)
//       student.backward          -> fp32 gradients += ...
//     global_norm (deterministic) -> norm and clip scale, left on the device
//     adamw_update (one launch)   -> fp32 master, m, v; bf16 weights rewritten from master
//     copy sums + norm to pinned host memory; synchronise once; return them
//
// This header has no CUDA types, so the trainer can include it in every build. Without the CUDA
// backend (KD_WITH_CUDA undefined) the constructor throws std::runtime_error saying so.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/ops/ops.h"
#include "engine/base/profiler.h"
#include "model/gpt2.h"

namespace kd {

struct CudaStepResult {
  LossSums sums;  // added over the step's micro-batches (unnormalised, as kd_loss gives them)
  double loss = 0;     // sums.loss / max(1, sums.rows): the step's normalised loss
  double grad_norm = 0;  // global L2 norm of the gradients before clipping
  // False when the loss or the norm is NaN or infinite. The update of that step has ALREADY been
  // applied on the device (it is queued before the single sync), so the caller must stop without
  // checkpointing the device state, as the CPU trainer does.
  bool finite = true;
};

class CudaTrainer {
 public:
  // Uploads the student (fp32 master + bf16 copy, zero moments) and the teacher (bf16), and plans
  // every device buffer for micro-batches of B sequences of T tokens, grad_accum per step.
  // teacher may be null (plain CE pretraining; loss.kd_weight is then ignored). The teacher's
  // vocabulary must be >= the student's (a padded teacher is read on its first V columns).
  // stochastic_rounding rounds the master -> bf16 copy stochastically (seeded by seed).
  CudaTrainer(const GPT2& student, const GPT2* teacher, const LossConfig& loss,
              const AdamWConfig& adamw, int B, int T, int grad_accum,
              bool stochastic_rounding = false, uint64_t seed = 0);
  ~CudaTrainer();
  CudaTrainer(const CudaTrainer&) = delete;
  CudaTrainer& operator=(const CudaTrainer&) = delete;

  // One optimizer step. inputs and targets are host arrays of grad_accum * B * T ids, micro-batch
  // after micro-batch (the CPU trainer's layout). Tokens must lie in [0, V); a target < 0 masks its
  // row. lr overrides the AdamW config's; grad_clip <= 0 disables clipping; t is the 1-based step
  // count for bias correction. One host synchronisation, at the end.
  CudaStepResult step(const int32_t* inputs, const int32_t* targets, float lr, float grad_clip,
                      int t);

  // The step without the update (for tests and diagnostics): gradients of the step's loss are left
  // in the device gradient buffer; returns the sums and the norm. One synchronisation.
  CudaStepResult accumulate(const int32_t* inputs, const int32_t* targets);

  // Held-out sums of one batch of B x T (B, T up to the planned sizes): the student's CE (ce) and,
  // with a teacher, KL(p_T || q_T) at `temperature` (kl). No gradient. Synchronises.
  LossSums eval_loss(const int32_t* inputs, const int32_t* targets, int B, int T,
                          float temperature);
  // The teacher's own CE on one batch (sums.ce). Requires a teacher. Synchronises.
  LossSums eval_teacher_loss(const int32_t* inputs, const int32_t* targets, int B, int T);

  // Checkpoints: the fp32 master weights into cpu_model.params, the AdamW moments into m and v
  // (resized to the parameter count). Synchronises.
  void copy_to(GPT2& cpu_model, std::vector<float>& m, std::vector<float>& v) const;
  // Resume: parameters (master and bf16 copy) and moments from the host. Synchronises.
  void copy_from(const GPT2& cpu_model, const std::vector<float>& m, const std::vector<float>& v);

  // Diagnostics (synchronise): the fp32 gradient buffer, the fp32 master weights, and the
  // student's logits [B,T,V] of a training forward on host tokens.
  std::vector<float> gradients() const;
  std::vector<float> master_weights() const;
  std::vector<float> student_logits(const int32_t* tokens, int B, int T);

  // Device bytes of every buffer this object allocated.
  size_t device_bytes() const;
  // Feeds the profiler's memory report: bytes per category, cudaMemGetInfo, and an estimate of the
  // largest micro-batch that would fit (activations, teacher scratch and teacher logits grow
  // linearly in B). Also returns that estimate.
  int64_t report_memory() const;

  // A profiler clock that stamps ranges with CUDA events recorded on the step's stream, resolved
  // once per step (one synchronisation) into nanoseconds: hand it to profiler::set_clock while the
  // profiler window runs. Owned by this object.
  profiler::Clock* profiler_clock();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kd
