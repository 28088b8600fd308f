#include "engine/train/train_log.h"

#include <algorithm>

namespace kd {

void LogWindow::add(const LossSums& s, double loss, double step_ms) {
  step_ms_ += step_ms;
  sums_.ce += s.ce;
  sums_.kd += s.kd;
  sums_.kl += s.kl;
  sums_.teacher_entropy += s.teacher_entropy;
  sums_.student_entropy += s.student_entropy;
  sums_.rows += s.rows;
  loss_rows_ += loss * double(s.rows);
  steps_ += 1;
}

LogWindow::Means LogWindow::means() const {
  const double R = double(std::max<int64_t>(1, sums_.rows));
  Means m;
  m.loss = loss_rows_ / R;
  m.ce = sums_.ce / R;
  m.kd = sums_.kd / R;
  m.kl = sums_.kl / R;
  m.teacher_entropy = sums_.teacher_entropy / R;
  m.student_entropy = sums_.student_entropy / R;
  m.step_ms = step_ms_ / double(std::max<int64_t>(1, steps_));
  m.steps = steps_;
  m.rows = sums_.rows;
  return m;
}

Json LogWindow::record(int64_t step, bool has_teacher, double lr, double grad_norm,
                       double tokens_per_s, double peak_mem_bytes) const {
  const Means m = means();
  Json j = Json::object();
  j["step"] = step;
  j["loss"] = m.loss;
  j["ce"] = m.ce;
  if (has_teacher) {
    j["kd"] = m.kd;
    j["kl"] = m.kl;
    j["teacher_entropy"] = m.teacher_entropy;
  }
  j["student_entropy"] = m.student_entropy;
  j["lr"] = lr;
  j["grad_norm"] = grad_norm;
  j["tokens_per_s"] = tokens_per_s;
  j["step_time_ms"] = m.step_ms;
  j["peak_mem_bytes"] = peak_mem_bytes;
  return j;
}

}  // namespace kd
