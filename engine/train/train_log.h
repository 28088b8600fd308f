// The training records of log.jsonl (and TensorBoard) averaged over the logging window: every
// [log] every steps the trainer writes one record whose loss terms are the means over all the
// window's supervised tokens, not one step's value, so the logged curve does not depend on which
// step happened to land on the log. lr and grad_norm are the window's last step's; step_time_ms is
// the mean of the window's steps (forward, backward and update; not evaluations or checkpoints).
// Without a teacher the record has no kd, kl or teacher_entropy (they would be zeros, not
// measurements).
#pragma once

#include <cstdint>

#include "engine/base/json.h"
#include "engine/ops/ops.h"

namespace kd {

class LogWindow {
 public:
  // One optimizer step: its loss sums over its supervised rows, its normalised loss, its time.
  void add(const LossSums& s, double loss, double step_ms);

  struct Means {
    double loss = 0, ce = 0, kd = 0, kl = 0, teacher_entropy = 0, student_entropy = 0;
    double step_ms = 0;  // mean over the steps
    int64_t steps = 0, rows = 0;
  };
  // Token-weighted means over the steps added since the last reset (loss: weighted by each step's
  // rows, the same normalisation as the step's own).
  Means means() const;

  // The log record for `step` (the window's last) from means(): step, loss, ce[, kd, kl,
  // teacher_entropy], student_entropy, lr, grad_norm and tokens_per_s as given, step_time_ms,
  // peak_mem_bytes as given.
  Json record(int64_t step, bool has_teacher, double lr, double grad_norm, double tokens_per_s,
              double peak_mem_bytes) const;

  void reset() { *this = LogWindow(); }

 private:
  LossSums sums_;
  double loss_rows_ = 0;  // sum over steps of loss * rows
  double step_ms_ = 0;
  int64_t steps_ = 0;
};

}  // namespace kd
