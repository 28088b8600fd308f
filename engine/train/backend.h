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

// ---- Data parallelism (docs/distributed.md)
//
// ZeRO-1's shard rule, the one every backend uses: a buffer of n floats split over `ranks` gives
// each rank shard_floats(n, ranks) = ceil(n / ranks) rounded up to a multiple of 16 floats (64
// bytes, so every slice starts aligned for vector loads and for NCCL), and rank r owns
// [r * shard, min(n, (r + 1) * shard)) (empty for a trailing rank when n is small). Collective
// buffers that need equal pieces (NCCL's reduce-scatter and all-gather) hold ranks * shard floats,
// the tail beyond n zero.
size_t shard_floats(size_t n, int ranks);
struct ShardRange {
  size_t begin = 0, end = 0;  // [begin, end), end >= begin
  size_t size() const { return end - begin; }
};
ShardRange shard_range(size_t n, int ranks, int rank);

// How one rank's step joins the other ranks' (the MPI one is engine/train/comm.h's MpiStepReducer;
// a GPU backend implements the same contract with NCCL on its stream). Every rank makes the same
// calls in the same order; a call made by one rank and not by another is a hang.
//
// Host values, blocking: sum_rows and sum_losses return the sums over all ranks.
//
// Backend memory (host memory on the CPU, device memory on a GPU), asynchronous: sum_grads,
// sum_doubles, reduce_scatter and all_gather may return before the data is there. They complete
// in the order they were made (NCCL: one stream); after finish(), the work the backend queues
// next sees every result (MPI: the host waited for the requests; NCCL: the compute stream waits
// on an event of the communication stream, no host sync needed). Between a call and finish()
// its buffer range must be neither read nor written by the caller; later calls on disjoint
// ranges are fine (that is what bucketing does). A rank that never arrives must not hang the
// others forever (MPI: finish() throws comm::RankLost after [distributed] timeout_s).
//
//   sum_grads(data, n)            all-reduce sum of n floats, in place
//   sum_doubles(data, n)          the same for doubles (e.g. each rank's part of the squared norm)
//   reduce_scatter(data, shard, begin, end)
//                                 sums data[begin, end) over the ranks; afterwards rank r holds
//                                 the sum in data[max(begin, r*shard), min(end, (r+1)*shard)) (its
//                                 part of the range, in place); the rest of [begin, end) is
//                                 unspecified. end <= size() * shard. The whole buffer is begin =
//                                 0, end = size() * shard (ncclReduceScatter in place); a bucket
//                                 is any sub-range (NCCL: one ncclReduce per rank it touches).
//   all_gather(data, shard_bytes, total_bytes)
//                                 rank r's bytes [r*shard_bytes, min(total, (r+1)*shard_bytes))
//                                 to every rank, in place; total_bytes <= size() * shard_bytes
//                                 (= for ncclAllGather in place).
//
// shard_optimizer: ZeRO-1 (recipe [distributed] shard_optimizer). Each rank keeps only its
// shard_range(P, size(), rank()) of the AdamW state: it reduce-scatters the gradients, adds its
// slice's squared norm into the global one with sum_doubles, updates its slice of the parameters
// and all-gathers them. Off: the gradients are all-reduced and every rank updates everything.
class StepReducer {
 public:
  explicit StepReducer(bool shard_optimizer) : shard_optimizer_(shard_optimizer) {}
  virtual ~StepReducer() = default;
  bool shard_optimizer() const { return shard_optimizer_; }

  virtual int rank() const = 0;
  virtual int size() const = 0;

  virtual int64_t sum_rows(int64_t local) = 0;
  virtual void sum_losses(LossSums& sums) = 0;

  virtual void sum_grads(float* data, size_t n) = 0;
  virtual void sum_doubles(double* data, size_t n) = 0;
  virtual void reduce_scatter(float* data, size_t shard, size_t begin, size_t end) = 0;
  virtual void all_gather(void* data, size_t shard_bytes, size_t total_bytes) = 0;
  // Lets started collectives advance; the backward calls it between layers. MPI with one thread
  // per rank moves data only inside MPI calls; NCCL needs nothing (the default).
  virtual void progress() {}
  virtual void finish() = 0;

 private:
  bool shard_optimizer_;
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
  // default refuses: only the CPU backend implements it so far. Call it before load_state: with
  // reducer->shard_optimizer() the backend keeps only its shard of the moments from then on.
  virtual void set_reducer(StepReducer* reducer);

  // Held-out sums of one batch of B x T (B, T up to the planned sizes), no gradient: the student's
  // CE (ce) and, with a teacher, KL(p_T || q_T) at `temperature` (kl).
  virtual LossSums eval_student(const int32_t* inputs, const int32_t* targets, int B, int T,
                                float temperature) = 0;
  // The teacher's own CE on one batch (sums.ce). Requires a teacher.
  virtual LossSums eval_teacher(const int32_t* inputs, const int32_t* targets, int B, int T) = 0;

  // The student's parameters into model.params and the AdamW moments into m and v (resized to the
  // parameter count), in the parameter table's layout. With a sharded optimizer only this rank's
  // shard_range(P, ranks, rank) of m and v is filled (the rest is zero): the caller gathers the
  // other ranks' slices (the trainer: comm::sum_to_root).
  virtual void save_state(GPT2& model, std::vector<float>& m, std::vector<float>& v) = 0;
  // The inverse: resume from a checkpoint's parameters and (whole) moments; a sharded backend
  // keeps its slice.
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
