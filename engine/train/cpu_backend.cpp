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

MemoryPlan cpu_memory_plan(const GPT2Config& student, const GPT2Config* teacher,
                           const StepShape& shape) {
  MemoryPlan p;
  p.device = "cpu (fp32)";
  const size_t P = student.num_parameters();
  p.weights = P * sizeof(float);
  p.gradients = P * sizeof(float);
  p.moments = 2 * P * sizeof(float);
  p.activations = GPT2::activation_bytes(student, shape.B, shape.T);
  if (teacher != nullptr) {
    p.teacher_weights = teacher->num_parameters() * sizeof(float);
    p.teacher_scratch = GPT2::inference_scratch_bytes(*teacher, shape.B, shape.T);
    p.loss_workspace = size_t(shape.B) * shape.T * teacher->vocab_size * sizeof(float);
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
    if (teacher) tlog_.resize(size_t(shape.B) * shape.T * Vt_);
  }

  const char* name() const override { return "cpu"; }

  StepResult step(const int32_t* inputs, const int32_t* targets, float lr, float grad_clip,
                  int t) override {
    KD_REQUIRE(t >= 1, "CpuBackend::step: t is 1-based");
    const int B = shape_.B, T = shape_.T, A = shape_.grad_accum;
    const size_t N = size_t(B) * T;
    int64_t rows = 0;
    for (size_t i = 0; i < size_t(A) * N; ++i) rows += targets[i] >= 0;
    const float inv_norm = 1.0f / float(std::max<int64_t>(1, rows));
    StepResult r;
    ensure_training_state();
    student_.zero_grad();
    for (int a = 0; a < A; ++a) {
      const int32_t* in = inputs + a * N;
      if (teacher_) {
        KD_RANGE_P("teacher_forward", Phase::TeacherForward, a);
        teacher_->forward_inference(tlog_.data(), in, B, T);
      }
      {
        KD_RANGE_P("student_forward", Phase::StudentForward, a);
        student_.forward(in, B, T);
      }
      {
        KD_RANGE_P("loss", Phase::Loss, a);
        cpu::kd_loss(student_.logits(), &r.sums, student_.logits(),
                     teacher_ ? tlog_.data() : nullptr, Vt_, targets + a * N, B * T, V_, loss_,
                     inv_norm);
      }
      KD_RANGE_P("student_backward", Phase::StudentBackward, a);
      student_.backward(student_.logits());
    }
    r.loss = r.sums.loss / double(std::max<int64_t>(1, r.sums.rows));
    r.grad_norm = cpu::global_norm(student_.grads.data(), student_.grads.size());
    r.finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
    if (!r.finite) return r;  // the caller stops; the weights stay as they were
    KD_RANGE_P("optimizer", Phase::Optimizer, t);
    const float scale =
        (grad_clip > 0 && r.grad_norm > grad_clip) ? float(grad_clip / r.grad_norm) : 1.0f;
    AdamWConfig cfg = adamw_;
    cfg.lr = lr;
    cpu::adamw_update(student_.params.data(), student_.grads.data(), m_.data(), v_.data(), spans_,
                      cfg, t, scale);
    return r;
  }

  LossSums eval_student(const int32_t* inputs, const int32_t* targets, int B, int T,
                        float temperature) override {
    check_eval_shape(B, T);
    LossSums s;
    std::vector<float>& slog = eval_logits_;
    slog.resize(size_t(B) * T * V_);
    // No phase ranges inside an evaluation: the caller's "eval" range holds it all (on both
    // backends), so step phases are never mixed with evaluation time.
    student_.forward_inference(slog.data(), inputs, B, T);
    LossConfig cfg;  // ce_weight 1, kd_weight 0: CE, and with a teacher the KL sum
    cfg.temperature = temperature;
    if (teacher_) teacher_->forward_inference(tlog_.data(), inputs, B, T);
    cpu::kd_loss(nullptr, &s, slog.data(), teacher_ ? tlog_.data() : nullptr, Vt_, targets, B * T,
                 V_, cfg, 1.0f);
    return s;
  }

  LossSums eval_teacher(const int32_t* inputs, const int32_t* targets, int B, int T) override {
    KD_REQUIRE(teacher_ != nullptr, "CpuBackend::eval_teacher: no teacher");
    check_eval_shape(B, T);
    teacher_->forward_inference(tlog_.data(), inputs, B, T);
    LossSums s;
    cpu::kd_loss(nullptr, &s, tlog_.data(), nullptr, 0, targets, B * T, Vt_, LossConfig{}, 1.0f);
    return s;
  }

  void save_state(GPT2& model, std::vector<float>& m, std::vector<float>& v) override {
    ensure_training_state();
    if (&model != &student_) model.params = student_.params;
    m = m_;
    v = v_;
  }

  void load_state(const GPT2& model, const std::vector<float>& m,
                  const std::vector<float>& v) override {
    ensure_training_state();
    KD_REQUIRE(model.params.size() == student_.params.size() && m.size() == m_.size() &&
                   v.size() == v_.size(),
               "CpuBackend::load_state: state of another model");
    if (&model != &student_) student_.params = model.params;
    m_ = m;
    v_ = v;
  }

  MemoryPlan memory_plan() const override {
    return cpu_memory_plan(student_.config(), teacher_ ? &teacher_->config() : nullptr, shape_);
  }

 private:
  // Gradients and moments exist once the backend trains (an evaluation-only backend has none).
  void ensure_training_state() {
    if (student_.grads.size() != student_.params.size()) student_.enable_training();
    if (m_.size() != student_.params.size()) {
      m_.assign(student_.params.size(), 0.0f);
      v_.assign(student_.params.size(), 0.0f);
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
  std::vector<float> m_, v_, tlog_, eval_logits_;
  std::vector<ParamSpan> spans_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(GPT2& student, const GPT2* teacher,
                                          const LossConfig& loss, const AdamWConfig& adamw,
                                          const StepShape& shape) {
  return std::make_unique<CpuBackend>(student, teacher, loss, adamw, shape);
}

}  // namespace kd
