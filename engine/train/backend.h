// One training step behind one interface. The training loop (engine/train/trainer.cpp) talks to a
// Backend only; the CPU backend (engine/train/cpu_backend.cpp) and the CUDA backend
// (engine/train/cuda_backend.cpp) implement it over the same GPT-2 description (model/gpt2.h) and
// the same ops contract (engine/ops/ops.h).
//
//   step(inputs, targets, lr, clip, t):
//     for each of grad_accum micro-batches of B x T tokens:
//       teacher forward            -> teacher logits (frozen, no activations kept)
//       student forward            -> student logits
//       kd_loss                    -> sums += ..., dlogits scaled by 1 / (supervised tokens of the
//                                     whole step), so accumulation does not change the gradient
//       student backward           -> gradients += ...
//     global_norm, clip scale      -> AdamW update of every parameter
//
// A backend owns the student's optimizer state (weights, gradients, moments) and the teacher's
// weights, on its device. save_state/load_state move that state through the CPU model and two host
// vectors (the checkpoint's layout), so a run saved on one backend resumes on the other.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/profiler.h"
#include "engine/io/recipe.h"
#include "engine/ops/ops.h"
#include "model/gpt2.h"

namespace kd {

struct StepResult {
  LossSums sums;    // added over the step's micro-batches (unnormalised, as kd_loss gives them)
  double loss = 0;  // sums.loss / max(1, sums.rows): the step's normalised loss
  double grad_norm = 0;  // global L2 norm of the gradients before clipping
  // False when the loss or the norm is NaN or infinite. On the CPU the update is then skipped; on
  // the GPU it has already been queued (one sync per step), so the caller must stop without saving
  // the backend's state.
  bool finite = true;
};

// Bytes of each category a backend holds, as the profiler's memory report shows them.
struct MemoryPlan {
  std::string device;         // "cpu (fp32)" or "cuda (bf16 weights, fp32 master)"
  size_t weights = 0;         // the student's weights as the step reads them
  size_t master_weights = 0;  // fp32 master copy (GPU only)
  size_t gradients = 0;
  size_t moments = 0;      // AdamW m and v
  size_t activations = 0;  // the student's training activations and backward scratch
  size_t teacher_weights = 0;
  size_t teacher_scratch = 0;  // the teacher's forward scratch
  size_t loss_workspace = 0;   // GPU: the teacher's logits of one micro-batch; CPU: one chunk of
                               // both models' logits (lm_head_kd_loss) and d(ln_f output)
  size_t other = 0;            // token buffers and the like
  size_t total() const {
    return weights + master_weights + gradients + moments + activations + teacher_weights +
           teacher_scratch + loss_workspace + other;
  }
};

// What a backend is built for: the models, the loss, the optimizer and the micro-batch shape.
struct StepShape {
  int B = 1;           // sequences per micro-batch
  int T = 1;           // tokens per sequence
  int grad_accum = 1;  // micro-batches per optimizer step
  int loss_chunk = 0;  // rows per chunk of the fused LM head + loss (both backends); 0: automatic
};

// Data parallelism (engine/train/comm.h): how one rank's step joins the other ranks'. A backend
// with a reducer sums the supervised rows before it scales dlogits (so the loss is normalised by
// the tokens of the whole global step), sums the gradients after the last backward and before the
// norm and the update, and sums the loss sums; every rank then applies the same update.
class StepReducer {
 public:
  virtual ~StepReducer() = default;
  virtual int64_t sum_rows(int64_t local) = 0;
  virtual void sum_grads(float* grads, size_t n) = 0;
  virtual void sum_losses(LossSums& sums) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu" or "cuda".
  virtual const char* name() const = 0;

  // One optimizer step. inputs and targets hold grad_accum * B * T ids, micro-batch after
  // micro-batch; a target < 0 masks its row. lr is this step's learning rate, grad_clip <= 0
  // disables clipping, t is the 1-based step count for AdamW's bias correction.
  virtual StepResult step(const int32_t* inputs, const int32_t* targets, float lr, float grad_clip,
                          int t) = 0;

  // Makes every later step() data-parallel through `reducer` (not owned; null: one rank). The
  // default refuses: only the CPU backend implements it so far.
  virtual void set_reducer(StepReducer* reducer);

  // Held-out sums of one batch of B x T (B, T up to the planned sizes), no gradient: the student's
  // CE (ce) and, with a teacher, KL(p_T || q_T) at `temperature` (kl).
  virtual LossSums eval_student(const int32_t* inputs, const int32_t* targets, int B, int T,
                                float temperature) = 0;
  // The teacher's own CE on one batch (sums.ce). Requires a teacher.
  virtual LossSums eval_teacher(const int32_t* inputs, const int32_t* targets, int B, int T) = 0;

  // The student's parameters into model.params and the AdamW moments into m and v (resized to the
  // parameter count), in the parameter table's layout.
  virtual void save_state(GPT2& model, std::vector<float>& m, std::vector<float>& v) = 0;
  // The inverse: resume from a checkpoint's parameters and moments.
  virtual void load_state(const GPT2& model, const std::vector<float>& m,
                          const std::vector<float>& v) = 0;

  // The backend's memory, by category. report_memory() also hands it to the profiler's memory
  // report (with the device's free memory and a largest-micro-batch estimate where it knows them).
  virtual MemoryPlan memory_plan() const = 0;
  virtual void report_memory() const;

  // A clock for the profiler when the host's clock cannot time this backend's work (the GPU's
  // asynchronous launches); null when the host clock is right.
  virtual profiler::Clock* profiler_clock() { return nullptr; }
};

// Chooses and builds the backend: Cpu, Cuda (which must be usable here and able to run the model's
// shape, or InputError), or Auto (the GPU when usable and the model's shape fits its kernels, else
// the CPU, with one line to `out` saying why). The student is the CPU model the run starts from
// (its parameters are uploaded); the backend keeps references to student and teacher only on the
// CPU.
std::unique_ptr<Backend> make_backend(Device device, GPT2& student, const GPT2* teacher,
                                      const LossConfig& loss, const AdamWConfig& adamw,
                                      const StepShape& shape, std::ostream& out);

// The CPU backend's plan, without building anything (`kdengine check`).
MemoryPlan cpu_memory_plan(const GPT2Config& student, const GPT2Config* teacher,
                           const StepShape& shape);
// The plan of the backend make_backend would build for `device` (the GPU's when device is Cuda,
// or Auto with a usable GPU, in a build with the CUDA backend; else the CPU's), without building
// anything (`kdengine check`).
MemoryPlan memory_plan_for(Device device, const GPT2Config& student, const GPT2Config* teacher,
                           const StepShape& shape);

}  // namespace kd
