// Residual add, CPU twin of cuda/residual.cu. Math: docs/ops/residual.md.
#include "engine/base/trace.h"
#include "engine/ops/cpu/ops.h"
#include "engine/ops/cpu/threads.h"

namespace kd::cpu {

namespace {
// One add per 12 bytes, ~0.2 ns per element: two threads only pay off on large tensors.
constexpr size_t kResidualParallel = size_t{1} << 20;
}  // namespace

void residual_forward(float* out, const float* a, const float* b, size_t n) {
  KD_OP("residual_forward", double(n), 12.0 * n);
  const auto count = static_cast<std::ptrdiff_t>(n);
#pragma omp parallel for simd schedule(static) if (worth_parallel(n, kResidualParallel))
  for (std::ptrdiff_t i = 0; i < count; ++i) out[i] = a[i] + b[i];
}

void residual_backward(float* da, float* db, const float* dout, size_t n) {
  KD_OP("residual_backward", 2.0 * n, 24.0 * n);
  const auto count = static_cast<std::ptrdiff_t>(n);
#pragma omp parallel for simd schedule(static) if (worth_parallel(n, kResidualParallel))
  for (std::ptrdiff_t i = 0; i < count; ++i) {
    da[i] += dout[i];
    db[i] += dout[i];
  }
}

}  // namespace kd::cpu
