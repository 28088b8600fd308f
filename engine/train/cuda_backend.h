// The CUDA backend: the step of backend.h with a student (and optionally a frozen teacher) resident
// on the GPU, and ONE host synchronisation per optimizer step, at its end, to read the loss sums
// and the gradient norm.
//
//   step(inputs, targets, lr, clip, t):
//     copy the step's tokens and targets (pinned host -> device, async, on the step's stream)
//     zero the gradients and the device loss sums
//     for each of grad_accum micro-batches:
//       teacher.forward_inference_hidden -> the teacher's ln_f output [B,T,Ct] (bf16, its scratch)
//       student.forward_hidden    -> the student's ln_f output [B,T,C] (bf16)
//       lm_head_kd_loss           -> per chunk of rows (the recipe's loss_chunk): both chunks of
//                                    logits (cuBLASLt), kd_loss (sums += ..., dlogits over the
//                                    chunk's logits, scaled by 1 / (supervised tokens of the whole
//                                    step)), d(ln_f output) += dlogits·wte, dwte += dlogitsᵀ·h.
//                                    Only one chunk's logits exist (the loss workspace).
//       student.backward_hidden   -> fp32 gradients += ...
//     global_norm (deterministic) -> norm and clip scale, left on the device
//     adamw_update (one launch)   -> fp32 master, m, v; bf16 weights rewritten from master
//     copy sums + norm to pinned host memory; synchronise once; return them
//
// This header has no CUDA types. It exists only in builds with the CUDA backend (KD_WITH_CUDA);
// make_backend (backend.h) is how the trainer reaches it.
#pragma once

#ifdef KD_WITH_CUDA

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/train/backend.h"

namespace kd {

// The CUDA backend's plan (what CudaBackend allocates, by category), without a GPU (`kdengine
// check`). The loss workspace is one chunk of both models' bf16 logits
// (cuda::lm_head_kd_loss_workspace_elems) and the step's readback; no [B,T,V] tensor exists.
MemoryPlan cuda_memory_plan(const GPT2Config& student, const GPT2Config* teacher,
                            const StepShape& shape);

class CudaBackend final : public Backend {
 public:
  // Uploads the student (fp32 master + bf16 copy, zero moments) and the teacher (bf16), and plans
  // every device buffer for micro-batches of shape.B sequences of shape.T tokens, shape.grad_accum
  // per step, the LM heads and the loss in chunks of shape.loss_chunk rows (0: automatic).
  // teacher may be null (plain CE pretraining; loss.kd_weight is then ignored). The teacher's
  // vocabulary must be >= the student's (a padded teacher is read on its first V columns).
  // stochastic_rounding rounds the master -> bf16 copy stochastically (seeded by seed).
  CudaBackend(const GPT2& student, const GPT2* teacher, const LossConfig& loss,
              const AdamWConfig& adamw, const StepShape& shape, bool stochastic_rounding = false,
              uint64_t seed = 0);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const char* name() const override { return "cuda"; }

  // Data parallelism over NCCL: `reducer` must be a nccl::NcclStepReducer
  // (engine/train/nccl_comm.h; device memory, bound here to the communication stream), or null for
  // one rank. step() then sums the supervised rows before the loss, the gradients after the last
  // backward (before the norm) and the loss sums after the step's synchronisation.
  //
  // With reducer->shard_optimizer() (ZeRO-1) this rank keeps, from here on, only its slice
  // [r * shard, (r + 1) * shard) of the fp32 master weights and the moments (nccl::zero1_shard);
  // each step reduce-scatters the gradients, takes the global norm as the norm of the ranks' slice
  // norms, runs AdamW on its slice and all-gathers the bf16 weights. save_state then gathers the
  // fp32 master weights from every rank (collective: every rank must call it) and fills only this
  // rank's slice of m and v (the rest zero: the caller gathers them); load_state keeps the slice.
  // With stochastic rounding the noise of an element depends on its index within the slice, so a
  // sharded run rounds differently from an unsharded one (still unbiased).
  //
  // Gradient buckets (docs/distributed.md, "GPU ranks"): during the last micro-batch's backward,
  // after every `layers` layers (the default 1; counted from the top, the rest with layer 0), the
  // finished range of the gradient buffer is summed (ZeRO-1: reduce-scattered) on a communication
  // stream that waits on an event of the step stream, while the step stream goes on with the
  // layers below; wte and wpe (the tied embedding, written by the LM head and the embedding
  // backward) are the last bucket, and the step stream waits on the communication stream before the
  // norm. layers = 0: one bucket, the whole buffer, after the backward. Still one host
  // synchronisation per step.
  void set_reducer(StepReducer* reducer) override;
  void set_bucket_layers(int layers);
  // Tokens must lie in [0, V). One host synchronisation, at the end.
  StepResult step(const int32_t* inputs, const int32_t* targets, float lr, float grad_clip,
                  int t) override;
  // Synchronises.
  LossSums eval_student(const int32_t* inputs, const int32_t* targets, int B, int T,
                        float temperature) override;
  LossSums eval_teacher(const int32_t* inputs, const int32_t* targets, int B, int T) override;
  // The fp32 master weights and the moments to the host / from the host. Synchronise.
  void save_state(GPT2& cpu_model, std::vector<float>& m, std::vector<float>& v) override;
  void load_state(const GPT2& cpu_model, const std::vector<float>& m,
                  const std::vector<float>& v) override;
  MemoryPlan memory_plan() const override;
  // The plan, plus cudaMemGetInfo and the largest micro-batch that would fit.
  void report_memory() const override;
  // Stamps ranges with CUDA events recorded on the step's stream, resolved once per step (one
  // synchronisation) into nanoseconds. Owned by this object.
  profiler::Clock* profiler_clock() override;

  // The largest micro-batch that would fit next to what is allocated now (activations, teacher
  // scratch and teacher logits grow linearly in B); `note` says how it was reckoned.
  int64_t largest_micro_batch(std::string* note = nullptr) const;

  // For tests and diagnostics (each synchronises):
  // the step without the update: gradients of the step's loss are left in the device gradient
  // buffer; returns the sums and the norm.
  StepResult accumulate(const int32_t* inputs, const int32_t* targets);
  // the fp32 gradient buffer and the fp32 master weights (the CPU model's layout: V rows of wte),
  // and the student's ln_f output [B,T,C] of a training forward on host tokens.
  std::vector<float> gradients() const;
  std::vector<float> master_weights() const;
  std::vector<float> student_hidden(const int32_t* tokens, int B, int T);
  // Rows per chunk of the LM heads and the loss.
  int loss_chunk_rows() const;
  // The student's vocabulary padding on the device (GPT2Cuda::download_vocab_padding): the rows
  // V.. of wte in the master weights, gradients, m, v and bf16 weights; all zero.
  std::vector<float> vocab_padding() const;
  // Device bytes of every buffer this object allocated.
  size_t device_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kd

#endif  // KD_WITH_CUDA
