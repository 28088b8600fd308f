// Residual add: the plain reference of the CPU op (tests only). Math: docs/ops/residual.md.
#include "engine/ops/cpu/reference/ops_ref.h"

namespace kd::cpu::ref {

void residual_forward(float* out, const float* a, const float* b, size_t n) {
  const auto count = static_cast<std::ptrdiff_t>(n);
#pragma omp parallel for schedule(static)
  for (std::ptrdiff_t i = 0; i < count; ++i) out[i] = a[i] + b[i];
}

void residual_backward(float* da, float* db, const float* dout, size_t n) {
  const auto count = static_cast<std::ptrdiff_t>(n);
#pragma omp parallel for schedule(static)
  for (std::ptrdiff_t i = 0; i < count; ++i) {
    da[i] += dout[i];
    db[i] += dout[i];
  }
}

}  // namespace kd::cpu::ref
