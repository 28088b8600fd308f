// GELU with the tanh approximation (GPT-2), CPU twin of cuda/gelu.cu. Math: docs/ops/gelu.md.
#include <cmath>

#include "engine/base/trace.h"
#include "engine/ops/cpu/ops.h"
#include "engine/ops/cpu/threads.h"
#include "engine/ops/cpu/vmath.h"

namespace kd::cpu {

namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kCubic = 0.044715f;

// tanh(u) = 1 - 2 / (exp(2u) + 1): one expf, several times faster than std::tanh on float, and
// exact to a few ulps of 1 (the forward adds 1 to it). Saturates correctly for large |u|.
inline float fast_tanh(float u) {
  return 1.0f - 2.0f / (vexp(2.0f * u) + 1.0f);
}

// About 1 ns per element on one core (vectorised): worth two threads from ~256k elements.
constexpr size_t kGeluParallel = size_t{1} << 18;

}  // namespace

static KD_SIMD_CLONES void gelu_forward_range(float* out, const float* inp, size_t begin,
                                              size_t end) {
  for (size_t i = begin; i < end; ++i) out[i] = gelu_tanh(inp[i]);
}

static KD_SIMD_CLONES void gelu_backward_range(float* dinp, const float* inp, const float* dout,
                                               size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
    const float th = fast_tanh(u);
    const float du_dx = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
    // d/dx [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx
    const float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du_dx;
    dinp[i] += grad * dout[i];
  }
}

void gelu_forward(float* out, const float* inp, size_t n) {
  KD_OP("gelu_forward", 10.0 * n, 8.0 * n);
  for_ranges(n, kGeluParallel, [&](size_t b, size_t e) { gelu_forward_range(out, inp, b, e); });
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  KD_OP("gelu_backward", 20.0 * n, 16.0 * n);
  for_ranges(n, kGeluParallel,
             [&](size_t b, size_t e) { gelu_backward_range(dinp, inp, dout, b, e); });
}

}  // namespace kd::cpu
