// The CUDA backend (see engine/train/cuda_backend.h for the data flow). Built only with the CUDA
// backend; without it this file compiles to nothing and make_backend never offers "cuda".
#include "engine/train/cuda_backend.h"

#include <stdexcept>
#include <string>

#ifdef KD_WITH_CUDA

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "cuda/lm_head_kd_loss.cuh"
#include "engine/base/profiler.h"
#include "engine/base/trace.h"
#include "engine/train/comm.h"
#include "engine/train/nccl_comm.h"
#include "model/gpt2_cuda.h"

namespace kd {

namespace {

size_t align256(size_t b) {
  return (b + 255) & ~size_t{255};
}

// An event without timing: orders one stream after another, or marks a point the host polls.
class OrderEvent {
 public:
  OrderEvent() { KD_CUDA_CHECK(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming)); }
  ~OrderEvent() { cudaEventDestroy(e_); }
  OrderEvent(const OrderEvent&) = delete;
  OrderEvent& operator=(const OrderEvent&) = delete;
  // `waiter` runs nothing queued after this call before everything queued on `done` so far.
  cudaEvent_t get() const { return e_; }
  void order(cudaStream_t waiter, cudaStream_t done) {
    KD_CUDA_CHECK(cudaEventRecord(e_, done));
    KD_CUDA_CHECK(cudaStreamWaitEvent(waiter, e_, 0));
  }

 private:
  cudaEvent_t e_ = nullptr;
};

// Page-locked host memory (for asynchronous copies).
class PinnedBlock {
 public:
  explicit PinnedBlock(size_t bytes) { KD_CUDA_CHECK(cudaMallocHost(&p_, bytes > 0 ? bytes : 1)); }
  ~PinnedBlock() {
    if (p_ != nullptr) cudaFreeHost(p_);
  }
  PinnedBlock(const PinnedBlock&) = delete;
  PinnedBlock& operator=(const PinnedBlock&) = delete;
  char* get() const { return static_cast<char*>(p_); }

 private:
  void* p_ = nullptr;
};

// The step's stream (blocking with respect to the legacy default stream, so plain cudaMemcpy calls
// elsewhere stay ordered with it).
class Stream {
 public:
  Stream() { KD_CUDA_CHECK(cudaStreamCreate(&s_)); }
  ~Stream() {
    cudaStreamSynchronize(s_);
    cudaStreamDestroy(s_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

// The profiler's GPU clock: mark() records an event on the step's stream and returns its index;
// resolve() waits for the last event once, then converts every token to nanoseconds after the
// step's first event (plus the host time of that first mark, so steps line up on one timeline).
// Events are created on demand and reused from step to step.
class EventClock final : public profiler::Clock {
 public:
  explicit EventClock(cudaStream_t s) : stream_(s) {}
  ~EventClock() override {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  int64_t mark() override {
    if (used_ == 0)
      base_ns_ = std::chrono::duration_cast<std::chrono::nanoseconds>(
                     std::chrono::steady_clock::now().time_since_epoch())
                     .count();
    if (used_ == events_.size()) {
      cudaEvent_t e;
      KD_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    KD_CUDA_CHECK(cudaEventRecord(events_[used_], stream_));
    return static_cast<int64_t>(used_++);
  }
  void resolve(std::vector<int64_t>& tokens) override {
    if (used_ == 0) return;
    KD_CUDA_CHECK(cudaEventSynchronize(events_[used_ - 1]));
    for (int64_t& t : tokens) {
      // The profiler also hands over the end of a range still open at step_end as -1: not a
      // token of this clock, left as it is.
      if (t < 0 || static_cast<size_t>(t) >= used_) continue;
      float ms = 0;
      KD_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[0], events_[static_cast<size_t>(t)]));
      t = base_ns_ + static_cast<int64_t>(static_cast<double>(ms) * 1e6);
    }
    used_ = 0;
  }
  const char* name() const override { return "cuda_events"; }

 private:
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
  size_t used_ = 0;
  int64_t base_ns_ = 0;
};

// What the single sync of a step reads back.
struct StepReadback {
  LossSums sums;
  float norm = 0;
  float scale = 1;
};

// Rows per chunk of lm_head_kd_loss: the recipe's loss_chunk, or the op's automatic size, never
// more than a micro-batch's rows. Vs, Vt: the logits' row widths (Vt = 0 without a teacher).
int cuda_loss_chunk_rows(const StepShape& shape, int Vs, int Vt) {
  const int N = shape.B * shape.T;
  return shape.loss_chunk > 0 ? std::min(shape.loss_chunk, N)
                              : cuda::lm_head_kd_loss_auto_chunk(N, Vs, Vt);
}

// The loss workspace: one chunk of both models' bf16 logits, then the step's readback.
size_t cuda_loss_workspace_bytes(int chunk, int Vs, int Vt) {
  return align256(cuda::lm_head_kd_loss_workspace_elems(chunk, Vs, Vt) * sizeof(cuda::bf16));
}

// The step's tokens and targets, and the AdamW spans.
size_t cuda_other_bytes(const StepShape& shape, size_t spans) {
  const size_t tok_bytes =
      align256(static_cast<size_t>(shape.grad_accum) * shape.B * shape.T * sizeof(int32_t));
  return 2 * tok_bytes + align256(spans * sizeof(ParamSpan));
}

}  // namespace

MemoryPlan cuda_memory_plan(const GPT2Config& student, const GPT2Config* teacher,
                            const StepShape& shape) {
  const GPT2CudaMemory s = GPT2Cuda::plan(student, shape.B, shape.T, GPT2Cuda::Role::Student);
  MemoryPlan p;
  p.device = "cuda (bf16 weights and activations, fp32 master, gradients and moments)";
  p.weights = s.weights;
  p.master_weights = s.master_weights;
  p.gradients = s.gradients;
  p.moments = s.moments;
  p.activations = s.activations;
  // The logits' widths: the vocabularies padded as the GPU models hold them.
  const int V = GPT2Cuda::device_config(student).vocab_size;
  const int Vt = teacher != nullptr ? GPT2Cuda::device_config(*teacher).vocab_size : 0;
  if (teacher != nullptr) {
    const GPT2CudaMemory t = GPT2Cuda::plan(*teacher, shape.B, shape.T, GPT2Cuda::Role::Teacher);
    p.teacher_weights = t.weights;
    p.teacher_scratch = t.scratch;
  }
  p.loss_workspace = cuda_loss_workspace_bytes(cuda_loss_chunk_rows(shape, V, Vt), V, Vt) +
                     align256(sizeof(StepReadback));
  p.other = cuda_other_bytes(shape, gpt2_param_table(student).size());
  return p;
}

struct CudaBackend::Impl {
  Impl(const GPT2& student_cpu, const GPT2* teacher_cpu, const LossConfig& loss_cfg,
       const AdamWConfig& adamw_cfg, const StepShape& shape, bool stochastic, uint64_t seed)
      : B(shape.B),
        T(shape.T),
        A(shape.grad_accum),
        N(static_cast<size_t>(shape.B) * shape.T),
        loss(loss_cfg),
        adamw(adamw_cfg),
        shape(shape),
        student_cfg(student_cpu.config()),
        teacher_cfg(teacher_cpu != nullptr ? teacher_cpu->config() : GPT2Config{}) {
    KD_REQUIRE(A >= 1, "CudaBackend: grad_accum must be >= 1");
    KD_REQUIRE(shape.loss_chunk >= 0, "CudaBackend: loss_chunk must be >= 0");
    rounding.stochastic = stochastic;
    rounding.seed = seed;
    // The kernels take their small scratch from the stream-ordered allocator; keep what it frees in
    // the pool so that, after the first step, no step reaches the driver for memory.
    int dev = 0;
    KD_CUDA_CHECK(cudaGetDevice(&dev));
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
      uint64_t keep = std::numeric_limits<uint64_t>::max();
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
    }
    cudaGetLastError();

    V = student_cpu.config().vocab_size;
    if (teacher_cpu != nullptr) {
      Vt = teacher_cpu->config().vocab_size;
      KD_REQUIRE(Vt >= V, "CudaBackend: the teacher's vocabulary (" + std::to_string(Vt) +
                              ") is smaller than the student's (" + std::to_string(V) + ")");
      KD_REQUIRE(T <= teacher_cpu->config().block_size,
                 "CudaBackend: T exceeds the teacher's block_size");
    } else {
      Vt = V;
      loss.kd_weight = 0.0f;
    }
    student = std::make_unique<GPT2Cuda>(student_cpu, B, T, GPT2Cuda::Role::Student, stream);
    if (teacher_cpu != nullptr)
      teacher = std::make_unique<GPT2Cuda>(*teacher_cpu, B, T, GPT2Cuda::Role::Teacher, stream);

    Cs = student_cpu.config().n_embd;
    Ct = teacher_cpu != nullptr ? teacher_cpu->config().n_embd : 0;
    // Loss workspace: one chunk of both models' logits (lm_head_kd_loss), then the device sums,
    // norm and clip scale.
    Vs = student->vocab_rows();
    Vtp = teacher ? teacher->vocab_rows() : 0;
    chunk = cuda_loss_chunk_rows(shape, Vs, Vtp);
    const size_t ws_bytes = cuda_loss_workspace_bytes(chunk, Vs, Vtp);
    loss_block = DeviceBlock(ws_bytes + align256(sizeof(StepReadback)));
    workspace = reinterpret_cast<cuda::bf16*>(loss_block.get());
    readback_dev = reinterpret_cast<StepReadback*>(loss_block.get() + ws_bytes);
    // Other: the step's tokens and targets on the device, and the AdamW spans.
    const auto& table = student->table();  // the device layout (wte padded)
    std::vector<ParamSpan> spans;
    for (const auto& p : table) spans.push_back({p.offset, p.numel, p.decay});
    num_spans = static_cast<int>(spans.size());
    const size_t tok_bytes = align256(static_cast<size_t>(A) * N * sizeof(int32_t));
    other_block = DeviceBlock(cuda_other_bytes(shape, spans.size()));
    tokens_dev = reinterpret_cast<int32_t*>(other_block.get());
    targets_dev = reinterpret_cast<int32_t*>(other_block.get() + tok_bytes);
    spans_dev = reinterpret_cast<ParamSpan*>(other_block.get() + 2 * tok_bytes);
    KD_CUDA_CHECK(cudaMemcpyAsync(spans_dev, spans.data(), spans.size() * sizeof(ParamSpan),
                                  cudaMemcpyHostToDevice, stream));
    pinned_tokens = std::make_unique<PinnedBlock>(2 * tok_bytes);
    pinned_readback = std::make_unique<PinnedBlock>(sizeof(StepReadback));
    KD_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  ~Impl() { cudaStreamSynchronize(stream); }

  int32_t* pinned_in() const { return reinterpret_cast<int32_t*>(pinned_tokens->get()); }
  int32_t* pinned_tg() const {
    return reinterpret_cast<int32_t*>(pinned_tokens->get() +
                                      align256(static_cast<size_t>(A) * N * sizeof(int32_t)));
  }
  StepReadback* readback_host() const {
    return reinterpret_cast<StepReadback*>(pinned_readback->get());
  }

  // Checks the ids on the host (the kernels do not), stages them in pinned memory and queues the
  // copies. Returns the supervised rows. n = number of ids of inputs and of targets.
  int64_t stage(const int32_t* inputs, const int32_t* targets, size_t n) {
    int64_t rows = 0;
    for (size_t i = 0; i < n; ++i) {
      KD_REQUIRE(inputs[i] >= 0 && inputs[i] < V,
                 "CudaBackend: token id " + std::to_string(inputs[i]) +
                     " outside the vocabulary of " + std::to_string(V));
      KD_REQUIRE(targets[i] < V, "CudaBackend: target id " + std::to_string(targets[i]) +
                                     " outside the vocabulary of " + std::to_string(V));
      rows += targets[i] >= 0;
    }
    // The previous use of the pinned buffers ended with a synchronisation, so they are free.
    std::memcpy(pinned_in(), inputs, n * sizeof(int32_t));
    std::memcpy(pinned_tg(), targets, n * sizeof(int32_t));
    KD_CUDA_CHECK(cudaMemcpyAsync(tokens_dev, pinned_in(), n * sizeof(int32_t),
                                  cudaMemcpyHostToDevice, stream));
    KD_CUDA_CHECK(cudaMemcpyAsync(targets_dev, pinned_tg(), n * sizeof(int32_t),
                                  cudaMemcpyHostToDevice, stream));
    return rows;
  }

  // Micro-batches, loss and backward; then the norm (and the clip scale) on the device.
  void forward_backward(const int32_t* inputs, const int32_t* targets, float grad_clip) {
    int64_t rows = stage(inputs, targets, static_cast<size_t>(A) * N);
    if (reducer) rows = reducer->sum_rows(rows);  // normalise by the whole global step
    const float inv_norm = 1.0f / static_cast<float>(std::max<int64_t>(1, rows));
    student->zero_grad();
    KD_CUDA_CHECK(cudaMemsetAsync(readback_dev, 0, sizeof(StepReadback), stream));
    for (int a = 0; a < A; ++a) {
      const int32_t* tok = tokens_dev + static_cast<size_t>(a) * N;
      const int32_t* tg = targets_dev + static_cast<size_t>(a) * N;
      const cuda::bf16* ht = nullptr;
      if (teacher) {
        KD_RANGE_P("teacher_forward", Phase::TeacherForward, a);
        ht = teacher->forward_inference_hidden(tok, B, T);
      }
      {
        KD_RANGE_P("student_forward", Phase::StudentForward, a);
        student->forward_hidden(tok, B, T);
      }
      {
        // Both LM heads, the loss and the head's backward, chunk by chunk: d(ln_f output) into
        // dhidden(), wte's LM-head gradient added.
        KD_RANGE_P("loss", Phase::Loss, a);
        KD_CUDA_CHECK(cudaMemsetAsync(student->dhidden(), 0, N * Cs * sizeof(cuda::bf16), stream));
        head_loss(student->dhidden(), student->wte_grad(), student->hidden(), ht, tg,
                  static_cast<int>(N), loss, inv_norm);
      }
      KD_RANGE_P("student_backward", Phase::StudentBackward, a);
      // The last micro-batch's backward finishes the gradients layer after layer: each finished
      // bucket's collective starts on the communication stream while the layers below run.
      const bool buckets = reducer != nullptr && bucket_layers > 0 && a == A - 1;
      unsent_end = P_dev();
      student->backward_hidden(student->dhidden(), buckets ? layer_done : nullptr);
    }
    reduce_and_norm(grad_clip);
  }

  size_t P_dev() const { return student->num_parameters(); }

  // Starts the reduction of the gradients [begin, end) on the communication stream, after
  // everything the step stream has queued so far: the sum (all-reduce), or under ZeRO-1 the
  // reduce-scatter of that range (backend.h's StepReducer contract).
  void reduce_bucket(size_t begin, size_t end) {
    if (end <= begin) return;
    comm_ready.order(comm_stream, stream);
    float* g = student->grads();
    if (zero1)
      reducer->reduce_scatter(g, shard, begin, end);
    else
      reducer->sum_grads(g + begin, end - begin);
  }
  // A collective on the communication stream, ordered after the step stream's work and before the
  // step stream's next (the norms and the weights all-gathered under ZeRO-1).
  template <class F>
  void on_comm(F&& f) {
    comm_ready.order(comm_stream, stream);
    f();
    step_ready.order(stream, comm_stream);
  }

  // The gradients summed over the ranks (ZeRO-1: only this rank's slice of the sum), then the
  // global norm and the clip scale, left on the device.
  void reduce_and_norm(float grad_clip) {
    float* g = student->grads();
    const size_t P = student->num_parameters();
    if (reducer) {
      // The last bucket: what the layers' buckets did not send (wte and wpe; everything when the
      // backward started none). Then the norm waits for every bucket.
      KD_RANGE_P("comm_grads", Phase::Comm, static_cast<int64_t>(unsent_end));
      reduce_bucket(0, unsent_end);
      step_ready.order(stream, comm_stream);
    }
    if (!zero1) {
      cuda::global_norm(&readback_dev->norm, &readback_dev->scale, g, P, grad_clip, stream);
      return;
    }
    // Each rank's slice norm into slot rank of `norms`, gathered; the norm of those norms is the
    // global norm (sqrt of the sum of the slices' squares), with global_norm's clip scale.
    const size_t b = student->optimizer_begin(), e = student->optimizer_end();
    float* mine = norms + reducer->rank();
    if (e > b)
      cuda::global_norm(mine, nullptr, g + b, e - b, 0.0f, stream);
    else
      KD_CUDA_CHECK(cudaMemsetAsync(mine, 0, sizeof(float), stream));
    on_comm([&] {
      reducer->all_gather(norms, sizeof(float), sizeof(float) * size_t(reducer->size()));
    });
    cuda::global_norm(&readback_dev->norm, &readback_dev->scale, norms, size_t(reducer->size()),
                      grad_clip, stream);
  }

  // AdamW at step t (the clip scale read on the device); ZeRO-1: on this rank's slice, then the
  // bf16 weights all-gathered.
  void update(const AdamWConfig& cfg, int t) {
    GPT2Cuda& s = *student;
    if (!zero1) {
      cuda::adamw_update(s.weights(), s.master(), s.grads(), s.m(), s.v(), spans_dev, num_spans,
                         s.num_parameters(), cfg, t, 1.0f, &readback_dev->scale, rounding, stream);
      return;
    }
    const size_t b = s.optimizer_begin(), e = s.optimizer_end();
    if (e > b)
      cuda::adamw_update(s.weights() + b, s.master(), s.grads() + b, s.m(), s.v(), shard_spans,
                         num_shard_spans, e - b, cfg, t, 1.0f, &readback_dev->scale, rounding,
                         stream);
    on_comm([&] {
      reducer->all_gather(s.weights(), shard * sizeof(cuda::bf16),
                          s.num_parameters() * sizeof(cuda::bf16));
    });
  }

  // ZeRO-1 from now on: this rank keeps its slice of the master weights and moments (freeing the
  // rest), with the AdamW spans cut to the slice and rebased to it.
  void start_zero1() {
    const size_t P = student->num_parameters();
    const int ranks = reducer->size();
    shard = nccl::zero1_shard(P, ranks);
    const size_t b = std::min(P, size_t(reducer->rank()) * shard), e = std::min(P, b + shard);
    std::vector<ParamSpan> cut;
    for (const auto& p : student->table()) {
      const size_t lo = std::max(b, p.offset), hi = std::min(e, p.offset + p.numel);
      if (lo < hi) cut.push_back({lo - b, hi - lo, p.decay});
    }
    num_shard_spans = static_cast<int>(cut.size());
    zero1_block = DeviceBlock(align256(size_t(ranks) * sizeof(float)) +
                              align256(std::max<size_t>(1, cut.size()) * sizeof(ParamSpan)));
    norms = reinterpret_cast<float*>(zero1_block.get());
    shard_spans =
        reinterpret_cast<ParamSpan*>(zero1_block.get() + align256(size_t(ranks) * sizeof(float)));
    if (!cut.empty())
      KD_CUDA_CHECK(cudaMemcpyAsync(shard_spans, cut.data(), cut.size() * sizeof(ParamSpan),
                                    cudaMemcpyHostToDevice, stream));
    student->shard_optimizer_state(b, e);  // synchronises
    zero1 = true;
  }

  // The step's only synchronisation: sums, norm and scale to the host. reduce: sum the loss sums
  // over the ranks (steps only; an evaluation runs on one rank).
  StepResult finish(bool reduce = false) {
    KD_CUDA_CHECK(cudaMemcpyAsync(readback_host(), readback_dev, sizeof(StepReadback),
                                  cudaMemcpyDeviceToHost, stream));
    if (reduce && reducer)
      wait_for_step();
    else
      KD_CUDA_CHECK(cudaStreamSynchronize(stream));
    StepResult r;
    r.sums = readback_host()->sums;
    if (reduce && reducer) reducer->sum_losses(r.sums);
    r.grad_norm = readback_host()->norm;
    r.loss = r.sums.loss / static_cast<double>(std::max<int64_t>(1, r.sums.rows));
    r.finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
    return r;
  }

  // A data-parallel step's synchronisation, bounded: the host polls an event at the end of the
  // step stream (which waited on the communication stream) under [distributed] timeout_s, as one
  // arrival of comm::wait_local, so a peer that never joins the step's NCCL collectives is named
  // instead of hanging this rank. On the deadline the communicator is aborted first (its
  // collectives end, the streams drain, the destructors' synchronisations return), then RankLost
  // goes to the trainer, which stops without writing a checkpoint.
  void wait_for_step() {
    KD_CUDA_CHECK(cudaEventRecord(step_done.get(), stream));
    auto done = [](void* e) {
      const cudaError_t q = cudaEventQuery(static_cast<cudaEvent_t>(e));
      if (q == cudaErrorNotReady) return false;
      KD_CUDA_CHECK(q);
      return true;
    };
    try {
      comm::wait_local("GPU step", done, step_done.get());
    } catch (const comm::RankLost&) {
      reducer->abort();
      throw;
    }
    KD_CUDA_CHECK(cudaEventSynchronize(step_done.get()));  // complete: returns at once
  }

  LossSums eval(const int32_t* inputs, const int32_t* targets, int b, int t, float temperature,
                bool teacher_only) {
    KD_REQUIRE(b >= 1 && t >= 1 && b <= B && t <= T,
               "CudaBackend::eval_loss: (B, T) beyond the planned sizes");
    KD_REQUIRE(!teacher_only || teacher, "CudaBackend::eval_teacher_loss: no teacher");
    const size_t n = static_cast<size_t>(b) * t;
    stage(inputs, targets, n);
    KD_CUDA_CHECK(cudaMemsetAsync(readback_dev, 0, sizeof(StepReadback), stream));
    LossConfig ce;  // ce_weight 1, kd_weight 0: CE, and with a teacher the KL sum
    // No phase ranges inside an evaluation (as on the CPU): the caller's "eval" range holds it.
    // The same chunked head as the step, without a gradient.
    const cuda::bf16* ht = teacher ? teacher->forward_inference_hidden(tokens_dev, b, t) : nullptr;
    if (teacher_only) {
      // The teacher's own CE over its own vocabulary, through the same workspace.
      cuda::lm_head_kd_loss(nullptr, nullptr, &readback_dev->sums, ht, teacher->wte(), Vtp, nullptr,
                            nullptr, 0, 0, targets_dev, static_cast<int>(n), Ct, Vt, ce, 1.0f,
                            chunk, workspace, stream);
    } else {
      const cuda::bf16* hs = student->forward_inference_hidden(tokens_dev, b, t);
      ce.temperature = temperature;
      head_loss(nullptr, nullptr, hs, ht, targets_dev, static_cast<int>(n), ce, 1.0f);
    }
    return finish().sums;
  }

  // The student's (and teacher's) LM head and the loss over n rows of ln_f outputs, chunked.
  void head_loss(cuda::bf16* dh, float* dwte, const cuda::bf16* hs, const cuda::bf16* ht,
                 const int32_t* tg, int n, const LossConfig& cfg, float inv_norm) {
    cuda::lm_head_kd_loss(dh, dwte, &readback_dev->sums, hs, student->wte(), Vs, ht,
                          teacher ? teacher->wte() : nullptr, Ct, Vtp, tg, n, Cs, V, cfg, inv_norm,
                          chunk, workspace, stream);
  }

  int B, T, A;
  size_t N;
  int V = 0, Vt = 0;    // vocabularies (the teacher's >= the student's)
  int Vs = 0, Vtp = 0;  // their rows on the device (padded to GPT2Cuda::kVocabMultiple)
  int Cs = 0, Ct = 0;   // widths of the two models
  int chunk = 1;        // rows per chunk of lm_head_kd_loss
  LossConfig loss;
  AdamWConfig adamw;
  StepShape shape;
  GPT2Config student_cfg, teacher_cfg;
  cuda::AdamWRounding rounding;
  Stream stream_holder;  // destroyed after every buffer and model below
  cudaStream_t stream = stream_holder.get();
  // Data parallelism: the reducer's collectives run on comm_stream; comm_ready orders it after the
  // step stream, step_ready the step stream after it.
  Stream comm_holder;
  cudaStream_t comm_stream = comm_holder.get();
  OrderEvent comm_ready, step_ready, step_done;
  int bucket_layers = 1;  // set_bucket_layers
  size_t unsent_end = 0;  // the gradients [unsent_end, P) are in flight (this step's buckets)
  // Called by the last micro-batch's backward after each layer (GPT2Cuda::backward_hidden).
  GPT2::LayerDone layer_done = [this](int l) {
    const int L = student_cfg.n_layer;
    if ((L - l) % bucket_layers != 0 && l != 0) return;
    KD_RANGE_P("comm_start", Phase::Comm, l);
    const size_t begin = student->layer_offset(l);
    reduce_bucket(begin, unsent_end);
    unsent_end = begin;
  };
  std::unique_ptr<GPT2Cuda> student, teacher;
  DeviceBlock loss_block, other_block;
  cuda::bf16* workspace = nullptr;  // one chunk of both models' logits
  StepReadback* readback_dev = nullptr;
  int32_t *tokens_dev = nullptr, *targets_dev = nullptr;
  ParamSpan* spans_dev = nullptr;
  int num_spans = 0;
  std::unique_ptr<PinnedBlock> pinned_tokens, pinned_readback;
  std::unique_ptr<EventClock> clock;         // the profiler's, created on request
  nccl::NcclStepReducer* reducer = nullptr;  // data parallelism (not owned); null: one rank
  // ZeRO-1 (reducer->shard_optimizer()): the shard size, the ranks' slice norms and this rank's
  // AdamW spans (rebased to its slice), in zero1_block.
  bool zero1 = false;
  size_t shard = 0;
  DeviceBlock zero1_block;
  float* norms = nullptr;
  ParamSpan* shard_spans = nullptr;
  int num_shard_spans = 0;
};

CudaBackend::CudaBackend(const GPT2& student, const GPT2* teacher, const LossConfig& loss,
                         const AdamWConfig& adamw, const StepShape& shape, bool stochastic_rounding,
                         uint64_t seed)
    : impl_(std::make_unique<Impl>(student, teacher, loss, adamw, shape, stochastic_rounding,
                                   seed)) {}

CudaBackend::~CudaBackend() = default;

StepResult CudaBackend::step(const int32_t* inputs, const int32_t* targets, float lr,
                             float grad_clip, int t) {
  Impl& im = *impl_;
  KD_REQUIRE(t >= 1, "CudaBackend::step: t is 1-based");
  im.forward_backward(inputs, targets, grad_clip);
  {
    KD_RANGE_P("optimizer", Phase::Optimizer, t);
    AdamWConfig cfg = im.adamw;
    cfg.lr = lr;
    // The clip scale stays on the device: global_norm wrote it, adamw_update reads it.
    im.update(cfg, t);
  }
  return im.finish(true);
}

void CudaBackend::set_reducer(StepReducer* reducer) {
  auto* r = dynamic_cast<nccl::NcclStepReducer*>(reducer);
  KD_REQUIRE(reducer == nullptr || r != nullptr,
             "CudaBackend::set_reducer: the reducer must work on device memory (NcclStepReducer)");
  KD_REQUIRE(!impl_->zero1, "CudaBackend::set_reducer: the optimizer state is already sharded");
  if (r != nullptr) r->bind_stream(impl_->comm_stream);
  impl_->reducer = r;
  if (r != nullptr && r->shard_optimizer() && r->size() > 1) impl_->start_zero1();
}

StepResult CudaBackend::accumulate(const int32_t* inputs, const int32_t* targets) {
  impl_->forward_backward(inputs, targets, 0.0f);
  return impl_->finish(true);
}

LossSums CudaBackend::eval_student(const int32_t* inputs, const int32_t* targets, int B, int T,
                                   float temperature) {
  return impl_->eval(inputs, targets, B, T, temperature, false);
}

LossSums CudaBackend::eval_teacher(const int32_t* inputs, const int32_t* targets, int B, int T) {
  return impl_->eval(inputs, targets, B, T, 1.0f, true);
}

void CudaBackend::save_state(GPT2& cpu_model, std::vector<float>& m, std::vector<float>& v) {
  GPT2Cuda& s = *impl_->student;
  if (impl_->zero1) {  // every rank's fp32 slice to every rank (collective), in the device layout
    std::vector<float> dev = s.download_master_device();
    const size_t P = dev.size();
    for (int q = 0; q < impl_->reducer->size(); ++q) {
      const size_t b = std::min(P, size_t(q) * impl_->shard), e = std::min(P, b + impl_->shard);
      if (e > b) comm::broadcast(dev.data() + b, (e - b) * sizeof(float), q);
    }
    KD_REQUIRE(cpu_model.config() == s.config(), "CudaBackend::save_state: another model");
    cpu_model.params = s.to_cpu_layout(dev);
  } else {
    s.copy_params_to(cpu_model);
  }
  s.download_moments(m, v);
}

void CudaBackend::load_state(const GPT2& cpu_model, const std::vector<float>& m,
                             const std::vector<float>& v) {
  impl_->student->copy_params_from(cpu_model);
  impl_->student->upload_moments(m, v);
}

std::vector<float> CudaBackend::gradients() const {
  return impl_->student->download_grads();
}

std::vector<float> CudaBackend::master_weights() const {
  return impl_->student->download_master();
}

std::vector<float> CudaBackend::vocab_padding() const {
  return impl_->student->download_vocab_padding();
}

void CudaBackend::set_bucket_layers(int layers) {
  KD_REQUIRE(layers >= 0, "CudaBackend::set_bucket_layers: layers must be >= 0");
  impl_->bucket_layers = layers;
}

std::vector<float> CudaBackend::student_hidden(const int32_t* tokens, int B, int T) {
  Impl& im = *impl_;
  KD_REQUIRE(B >= 1 && T >= 1 && B <= im.B && T <= im.T,
             "CudaBackend::student_hidden: (B, T) beyond the planned sizes");
  const size_t n = static_cast<size_t>(B) * T;
  std::vector<int32_t> no_targets(n, -1);
  im.stage(tokens, no_targets.data(), n);
  im.student->forward_hidden(im.tokens_dev, B, T);
  return im.student->download_hidden(B, T);
}

int CudaBackend::loss_chunk_rows() const {
  return impl_->chunk;
}

size_t CudaBackend::device_bytes() const {
  const Impl& im = *impl_;
  size_t b = im.student->memory().total() + im.loss_block.bytes() + im.other_block.bytes() +
             im.zero1_block.bytes();
  if (im.teacher) b += im.teacher->memory().total();
  return b;
}

profiler::Clock* CudaBackend::profiler_clock() {
  Impl& im = *impl_;
  if (!im.clock) im.clock = std::make_unique<EventClock>(im.stream);
  return im.clock.get();
}

MemoryPlan CudaBackend::memory_plan() const {
  const Impl& im = *impl_;
  MemoryPlan p = cuda_memory_plan(im.student_cfg, im.teacher ? &im.teacher_cfg : nullptr, im.shape);
  if (im.zero1) {  // ZeRO-1: this rank's slice of the master weights and moments
    p.master_weights = im.student->memory().master_weights;
    p.moments = im.student->memory().moments;
    p.other += im.zero1_block.bytes();
  }
  return p;
}

int64_t CudaBackend::largest_micro_batch(std::string* note) const {
  const Impl& im = *impl_;
  const MemoryPlan p = memory_plan();
  size_t free_b = 0, total_b = 0;
  KD_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  // What grows with the micro-batch: activations (student) and scratch (teacher), linear in B (the
  // loss workspace is one chunk of logits, bounded by the chunk size, not by B). Keep 1 GiB (or
  // 5%) back for cuBLASLt's workspace, the kernels' stream-ordered scratch and fragmentation.
  const size_t per_batch = p.activations + p.teacher_scratch;
  const double per_seq = static_cast<double>(per_batch) / im.B;
  const double reserve = std::max(double(size_t{1} << 30), 0.05 * double(total_b));
  const double spare = std::max(0.0, double(free_b) - reserve);
  const int64_t max_b = im.B + static_cast<int64_t>(std::floor(spare / per_seq));
  if (note != nullptr) {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "micro_batch %d uses %.1f MiB of per-batch buffers (%.1f MiB per sequence at T = "
                  "%d); %.0f MiB free after allocation, %.0f MiB kept in reserve",
                  im.B, per_batch / 1048576.0, per_seq / 1048576.0, im.T, free_b / 1048576.0,
                  reserve / 1048576.0);
    *note = buf;
  }
  return max_b;
}

void CudaBackend::report_memory() const {
  Backend::report_memory();
  size_t free_b = 0, total_b = 0;
  KD_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  profiler::set_device_memory(free_b, total_b);
  std::string note;
  const int64_t max_b = largest_micro_batch(&note);
  profiler::set_fit_estimate(max_b, note);
}

}  // namespace kd

#endif  // KD_WITH_CUDA
