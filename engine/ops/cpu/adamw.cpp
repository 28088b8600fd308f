// AdamW with global-norm clipping, CPU twin of cuda/adamw.cu. Math: docs/ops/adamw.md.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/trace.h"
#include "engine/ops/cpu/ops.h"
#include "engine/ops/cpu/threads.h"
#include "engine/ops/cpu/vmath.h"

namespace kd::cpu {

namespace {

// global_norm sums fixed chunks of this many values, one double per chunk, then the chunk sums in
// order: the result is the same bits whatever the thread count.
constexpr size_t kNormChunk = 1 << 16;

struct AdamScalars {
  float b1, b2, step_size, bias2_sqrt, eps, grad_scale, decay;
};

// The update of elements [begin, end) of one span. Elementwise, with the same operations in the
// same order in every build: the SSE2 and AVX2 versions give the same bits.
KD_SIMD_CLONES void adam_range(float* p, const float* g, float* ms, float* vs, AdamScalars k,
                               size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) {
    const float grad = g[i] * k.grad_scale;
    const float param = p[i] * k.decay;  // decoupled weight decay, before the Adam step
    const float mi = k.b1 * ms[i] + (1.0f - k.b1) * grad;
    const float vi = k.b2 * vs[i] + (1.0f - k.b2) * grad * grad;
    const float denom = std::sqrt(vi) / k.bias2_sqrt + k.eps;
    p[i] = param - k.step_size * (mi / denom);
    ms[i] = mi;
    vs[i] = vi;
  }
}

}  // namespace

double global_norm(const float* grads, size_t n) {
  KD_OP("global_norm", 2.0 * n, 4.0 * n);
  const size_t chunks = (n + kNormChunk - 1) / kNormChunk;
  std::vector<double> partial(chunks, 0.0);
  const auto count = static_cast<std::ptrdiff_t>(chunks);
#pragma omp parallel for schedule(static) if (n >= (size_t{1} << 20))
  for (std::ptrdiff_t c = 0; c < count; ++c) {
    const size_t begin = static_cast<size_t>(c) * kNormChunk;
    const size_t end = std::min(n, begin + kNormChunk);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (size_t i = begin; i < end; ++i) sum += static_cast<double>(grads[i]) * grads[i];
    partial[static_cast<size_t>(c)] = sum;
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return std::sqrt(total);
}

void adamw_update(float* params, const float* grads, float* m, float* v,
                  std::span<const ParamSpan> spans, const AdamWConfig& cfg, int t,
                  float grad_scale) {
  KD_REQUIRE(t >= 1, "adamw_update: step t must be >= 1, got " + std::to_string(t));
  KD_REQUIRE(cfg.beta1 >= 0.0f && cfg.beta1 < 1.0f && cfg.beta2 >= 0.0f && cfg.beta2 < 1.0f,
             "adamw_update: beta1 and beta2 must be in [0, 1), got " + std::to_string(cfg.beta1) +
                 " and " + std::to_string(cfg.beta2));
  size_t total = 0;
  for (const ParamSpan& sp : spans) total += sp.size;
  KD_OP("adamw_update", 15.0 * double(total), 28.0 * double(total));
  // The same scalars as torch.optim.AdamW (single-tensor path), in the same order.
  const float b1 = cfg.beta1;
  const float b2 = cfg.beta2;
  const double bias1 = 1.0 - std::pow(static_cast<double>(b1), t);
  const double bias2 = 1.0 - std::pow(static_cast<double>(b2), t);
  const float step_size = static_cast<float>(cfg.lr / bias1);
  const float bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  const float decay_factor = 1.0f - cfg.lr * cfg.weight_decay;

  AdamScalars k;
  k.b1 = b1;
  k.b2 = b2;
  k.step_size = step_size;
  k.bias2_sqrt = bias2_sqrt;
  k.eps = cfg.eps;
  k.grad_scale = grad_scale;
  for (const ParamSpan& span : spans) {
    // 1 for spans that do not decay: multiplying by 1 leaves every bit as it was.
    k.decay = span.decay ? decay_factor : 1.0f;
    const size_t o = span.offset;
    for_ranges(span.size, size_t{1} << 18, [&](size_t b, size_t e) {
      adam_range(params + o, grads + o, m + o, v + o, k, b, e);
    });
  }
}

}  // namespace kd::cpu
