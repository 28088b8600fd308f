// The CPU backend: the step of backend.h over the CPU model (model/gpt2.h) and the CPU ops
// (engine/ops/cpu/ops.h), fp32 everywhere. The student's weights and gradients live in the CPU
// model the run started from; the moments and the teacher's logits of one micro-batch live here.
#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "engine/base/error.h"
#include "engine/base/trace.h"
#include "engine/ops/cpu/ops.h"
#include "engine/train/backend.h"

namespace kd {

namespace {

// Rows per chunk of lm_head_kd_loss for a step of this shape (the recipe's loss_chunk, or the op's
// automatic size), never more than the step's rows.
int loss_chunk_rows(const StepShape& shape, int V, int Vt) {
  const int N = shape.B * shape.T;
  return shape.loss_chunk > 0 ? std::min(shape.loss_chunk, N)
                              : cpu::lm_head_kd_loss_auto_chunk(N, V, Vt);
}

}  // namespace

MemoryPlan cpu_memory_plan(const GPT2Config& student, const GPT2Config* teacher,
                           const StepShape& shape) {
  MemoryPlan p;
  p.device = "cpu (fp32)";
  const size_t P = student.num_parameters();
  p.weights = P * sizeof(float);
  p.gradients = P * sizeof(float);
  p.moments = 2 * P * sizeof(float);
  // The student's forward stops at ln_f (GPT2::forward_hidden): no [B,T,V] logits.
  p.activations = GPT2::activation_bytes(student, shape.B, shape.T) -
                  GPT2::logits_bytes(student, shape.B, shape.T);
  const size_t N = size_t(shape.B) * shape.T;
  const int Vt = teacher != nullptr ? teacher->vocab_size : 0;
  // The fused LM head + loss: one chunk of both models' logits, the student's d(ln_f output) and,
  // for evaluation, its ln_f output.
  p.loss_workspace = (cpu::lm_head_kd_loss_workspace_floats(
                          loss_chunk_rows(shape, student.vocab_size, Vt), student.vocab_size, Vt) +
                      2 * N * student.n_embd) *
                     sizeof(float);
  if (teacher != nullptr) {
    p.teacher_weights = teacher->num_parameters() * sizeof(float);
    // The teacher's scratch and its ln_f output [B,T,Ct].
    p.teacher_scratch = GPT2::inference_scratch_bytes(*teacher, shape.B, shape.T) +
                        N * teacher->n_embd * sizeof(float);
  }
  p.other = 2 * size_t(shape.grad_accum) * shape.B * shape.T * sizeof(int32_t);
  return p;
}

namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(GPT2& student, const GPT2* teacher, const LossConfig& loss, const AdamWConfig& adamw,
             const StepShape& shape)
      : student_(student), teacher_(teacher), loss_(loss), adamw_(adamw), shape_(shape) {
    KD_REQUIRE(shape.B >= 1 && shape.T >= 1 && shape.grad_accum >= 1,
               "CpuBackend: B, T and grad_accum must be >= 1");
    V_ = student.config().vocab_size;
    Vt_ = teacher ? teacher->config().vocab_size : V_;
    KD_REQUIRE(Vt_ >= V_, "CpuBackend: the teacher's vocabulary is smaller than the student's");
    if (!teacher) loss_.kd_weight = 0.0f;
    for (const auto& p : student.table()) spans_.push_back({p.offset, p.numel, p.decay});
    set_reducer(nullptr);  // one rank: the moments of every parameter
    const size_t N = size_t(shape.B) * shape.T;
    chunk_ = loss_chunk_rows(shape, V_, teacher ? Vt_ : 0);
    // Evaluation of the teacher alone reads its own vocabulary (Vt_) through the same workspace.
    workspace_.resize(cpu::lm_head_kd_loss_workspace_floats(chunk_, V_, teacher ? Vt_ : 0));
    hidden_.resize(N * student.config().n_embd);
    if (teacher) teacher_hidden_.resize(N * teacher->config().n_embd);
    // Buckets of the data-parallel gradient reduction: one per layer. The buffer is laid out wte,
    // wpe, h.0 ... h.{L-1}, ln_f, and the backward finishes it from the end: after layer l,
    // [start of h.l, end of what was not yet sent) is final. wte and wpe, which the tied LM head
    // and the embedding backward both write, go last.
    unsent_end_ = student.params.size();
    layer_done_ = [this](int l) {
      KD_RANGE_P("comm_start", Phase::Comm, l);
      const size_t begin = student_.layout().layers[size_t(l)].ln1w;
      reduce_grads(begin, unsent_end_);
      unsent_end_ = begin;
      reducer_->progress();  // lets MPI move the buckets already started
    };
  }

  const char* name() const override { return "cpu"; }

  StepResult step(const int32_t* inputs, const int32_t* targets, float lr, float grad_clip,
                  int t) override {
    KD_REQUIRE(t >= 1, "CpuBackend::step: t is 1-based");
    const int B = shape_.B, T = shape_.T, A = shape_.grad_accum;
    const size_t N = size_t(B) * T;
    int64_t rows = 0;
    for (size_t i = 0; i < size_t(A) * N; ++i) rows += targets[i] >= 0;
    if (reducer_) rows = reducer_->sum_rows(rows);  // the global step's supervised tokens
    const float inv_norm = 1.0f / float(std::max<int64_t>(1, rows));
    StepResult r;
    ensure_training_state();
    student_.zero_grad();
    unsent_end_ = student_.grads.size();
    for (int a = 0; a < A; ++a) {
      const int32_t* in = inputs + a * N;
      if (teacher_) {
        KD_RANGE_P("teacher_forward", Phase::TeacherForward, a);
        teacher_->forward_inference_hidden(teacher_hidden_.data(), in, B, T);
      }
      {
        KD_RANGE_P("student_forward", Phase::StudentForward, a);
        student_.forward_hidden(in, B, T);
      }
      {
        // The LM heads of both models, the loss and the head's backward, chunk by chunk: dh
        // (hidden_) receives d(ln_f output), wte.weight's gradient the head's part.
        KD_RANGE_P("loss", Phase::Loss, a);
        std::fill(hidden_.begin(), hidden_.end(), 0.0f);
        head_loss(hidden_.data(), student_.grad("wte.weight"), &r.sums, student_.hidden(),
                  targets + a * N, B * T, loss_, inv_norm);
      }
      KD_RANGE_P("student_backward", Phase::StudentBackward, a);
      // The last micro-batch's backward finishes layer after layer: each finished layer's
      // gradients start their reduction while the layers below are still computed.
      student_.backward_hidden(hidden_.data(), reducer_ && a == A - 1 ? layer_done_ : nullptr);
    }
    if (reducer_) {
      {
        KD_RANGE_P("comm_grads", Phase::Comm, t);
        reduce_grads(0, unsent_end_);  // the last bucket: wte and wpe, final only now
        reducer_->finish();            // this rank's part of the summed gradients is in place
      }
      reducer_->sum_losses(r.sums);
    }
    r.loss = r.sums.loss / double(std::max<int64_t>(1, r.sums.rows));
    r.grad_norm = grad_norm();
    r.finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
    if (!r.finite) return r;  // every rank sees it; the caller stops, the weights stay as they were
    KD_RANGE_P("optimizer", Phase::Optimizer, t);
    const float scale =
        (grad_clip > 0 && r.grad_norm > grad_clip) ? float(grad_clip / r.grad_norm) : 1.0f;
    AdamWConfig cfg = adamw_;
    cfg.lr = lr;
    // This rank's slice (all of it without ZeRO-1): the moments hold exactly that slice.
    const size_t lo = range_.begin;
    cpu::adamw_update(student_.params.data() + lo, student_.grads.data() + lo, m_.data(), v_.data(),
                      slice_spans_, cfg, t, scale);
    if (sharded()) {
      KD_RANGE_P("comm_params", Phase::Comm, t);
      reducer_->all_gather(student_.params.data(), shard_ * sizeof(float),
                           student_.params.size() * sizeof(float));
      reducer_->finish();
    }
    return r;
  }

  // ZeRO-1 when the reducer asks for it: from here on this rank holds the moments of its
  // shard_range only (set before load_state; moments already held are cut to the slice).
  void set_reducer(StepReducer* reducer) override {
    reducer_ = reducer;
    const size_t P = student_.params.size();
    const ShardRange before = range_;
    if (sharded()) {
      shard_ = shard_floats(P, reducer->size());
      range_ = shard_range(P, reducer->size(), reducer->rank());
    } else {
      shard_ = P;
      range_ = {0, P};
    }
    if (!m_.empty() && m_.size() == before.size() && before.size() != range_.size()) {
      KD_REQUIRE(before.begin == 0, "CpuBackend::set_reducer: already sharded");
      m_ = std::vector<float>(m_.begin() + range_.begin, m_.begin() + range_.end);
      v_ = std::vector<float>(v_.begin() + range_.begin, v_.begin() + range_.end);
    }
    slice_spans_.clear();
    for (const ParamSpan& sp : spans_) {
      const size_t b = std::max(sp.offset, range_.begin),
                   e = std::min(sp.offset + sp.size, range_.end);
      if (e > b) slice_spans_.push_back({b - range_.begin, e - b, sp.decay});
    }
  }

  LossSums eval_student(const int32_t* inputs, const int32_t* targets, int B, int T,
                        float temperature) override {
    check_eval_shape(B, T);
    LossSums s;
    // No phase ranges inside an evaluation: the caller's "eval" range holds it all (on both
    // backends), so step phases are never mixed with evaluation time.
    student_.forward_inference_hidden(hidden_.data(), inputs, B, T);
    LossConfig cfg;  // ce_weight 1, kd_weight 0: CE, and with a teacher the KL sum
    cfg.temperature = temperature;
    if (teacher_) teacher_->forward_inference_hidden(teacher_hidden_.data(), inputs, B, T);
    head_loss(nullptr, nullptr, &s, hidden_.data(), targets, B * T, cfg, 1.0f);
    return s;
  }

  LossSums eval_teacher(const int32_t* inputs, const int32_t* targets, int B, int T) override {
    KD_REQUIRE(teacher_ != nullptr, "CpuBackend::eval_teacher: no teacher");
    check_eval_shape(B, T);
    teacher_->forward_inference_hidden(teacher_hidden_.data(), inputs, B, T);
    LossSums s;
    // The teacher's own head over its whole vocabulary, plain CE: the workspace holds chunk_ rows
    // of V_ + Vt_ >= Vt_ floats.
    const GPT2Config& tc = teacher_->config();
    cpu::lm_head_kd_loss(nullptr, nullptr, &s, teacher_hidden_.data(),
                         teacher_->param("wte.weight"), nullptr, nullptr, 0, 0, targets, B * T,
                         tc.n_embd, Vt_, LossConfig{}, 1.0f, chunk_, workspace_.data());
    return s;
  }

  // The whole parameter buffer; with ZeRO-1 only this rank's slice of m and v (the trainer gathers
  // the rest).
  void save_state(GPT2& model, std::vector<float>& m, std::vector<float>& v) override {
    ensure_training_state();
    if (&model != &student_) model.params = student_.params;
    m.assign(student_.params.size(), 0.0f);
    v.assign(student_.params.size(), 0.0f);
    std::copy(m_.begin(), m_.end(), m.begin() + range_.begin);
    std::copy(v_.begin(), v_.end(), v.begin() + range_.begin);
  }

  void load_state(const GPT2& model, const std::vector<float>& m,
                  const std::vector<float>& v) override {
    ensure_training_state();
    KD_REQUIRE(model.params.size() == student_.params.size() &&
                   m.size() == student_.params.size() && v.size() == student_.params.size(),
               "CpuBackend::load_state: state of another model");
    if (&model != &student_) student_.params = model.params;
    m_.assign(m.begin() + range_.begin, m.begin() + range_.end);
    v_.assign(v.begin() + range_.begin, v.begin() + range_.end);
  }

  MemoryPlan memory_plan() const override {
    MemoryPlan p =
        cpu_memory_plan(student_.config(), teacher_ ? &teacher_->config() : nullptr, shape_);
    p.moments = 2 * range_.size() * sizeof(float);  // this rank's slice under ZeRO-1
    return p;
  }

 private:
  // Gradients and moments exist once the backend trains (an evaluation-only backend has none).
  void ensure_training_state() {
    if (student_.grads.size() != student_.params.size()) student_.enable_training();
    if (m_.size() != range_.size()) {
      m_.assign(range_.size(), 0.0f);
      v_.assign(range_.size(), 0.0f);
    }
  }

  bool sharded() const { return reducer_ != nullptr && reducer_->shard_optimizer(); }

  // Starts the reduction of the gradients [begin, end): a reduce-scatter under ZeRO-1 (each rank
  // gets the sum of its own shard), else an all-reduce.
  void reduce_grads(size_t begin, size_t end) {
    if (begin == end) return;
    if (sharded())
      reducer_->reduce_scatter(student_.grads.data(), shard_, begin, end);
    else
      reducer_->sum_grads(student_.grads.data() + begin, end - begin);
  }

  // The global L2 norm of the summed gradients. Under ZeRO-1 each rank holds only its shard's sum:
  // the squares of the shards are added over the ranks.
  double grad_norm() {
    if (!sharded()) return cpu::global_norm(student_.grads.data(), student_.grads.size());
    KD_RANGE_P("comm_norm", Phase::Comm, 0);
    const double part = cpu::global_norm(student_.grads.data() + range_.begin, range_.size());
    double sq = part * part;
    reducer_->sum_doubles(&sq, 1);
    reducer_->finish();
    return std::sqrt(sq);
  }

  // lm_head_kd_loss over n rows of the student's ln_f output h, with the teacher's ln_f output
  // (teacher_hidden_) when there is a teacher.
  void head_loss(float* dh, float* dwte, LossSums* sums, const float* h, const int32_t* targets,
                 int n, const LossConfig& cfg, float inv_norm) {
    const GPT2Config& sc = student_.config();
    const float* wte = student_.param("wte.weight");
    if (teacher_) {
      cpu::lm_head_kd_loss(dh, dwte, sums, h, wte, teacher_hidden_.data(),
                           teacher_->param("wte.weight"), teacher_->config().n_embd, Vt_, targets,
                           n, sc.n_embd, V_, cfg, inv_norm, chunk_, workspace_.data());
    } else {
      cpu::lm_head_kd_loss(dh, dwte, sums, h, wte, nullptr, nullptr, 0, 0, targets, n, sc.n_embd,
                           V_, cfg, inv_norm, chunk_, workspace_.data());
    }
  }

  void check_eval_shape(int B, int T) const {
    KD_REQUIRE(B >= 1 && T >= 1 && B <= shape_.B && T <= shape_.T,
               "CpuBackend: evaluation batch beyond the planned (B, T)");
  }

  GPT2& student_;
  const GPT2* teacher_;
  LossConfig loss_;
  AdamWConfig adamw_;
  StepShape shape_;
  int V_ = 0, Vt_ = 0;
  int chunk_ = 1;  // rows per chunk of lm_head_kd_loss
  // workspace_: one chunk of logits; hidden_: the student's d(ln_f output) in a step, its ln_f
  // output in an evaluation; teacher_hidden_: the teacher's ln_f output.
  std::vector<float> m_, v_, workspace_, hidden_, teacher_hidden_;
  std::vector<ParamSpan> spans_;
  StepReducer* reducer_ = nullptr;
  // Data parallelism: the moments cover range_ of the parameter buffer (all of it unless ZeRO-1
  // shards it; shard_ floats a rank), and slice_spans_ are spans_ cut to range_, relative to it.
  size_t shard_ = 0;
  ShardRange range_;
  std::vector<ParamSpan> slice_spans_;
  GPT2::LayerDone layer_done_;  // starts a finished layer's bucket
  size_t unsent_end_ = 0;       // gradients [unsent_end_, P) have been handed to the reducer
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(GPT2& student, const GPT2* teacher,
                                          const LossConfig& loss, const AdamWConfig& adamw,
                                          const StepShape& shape) {
  return std::make_unique<CpuBackend>(student, teacher, loss, adamw, shape);
}

}  // namespace kd
