// AdamW with global-norm clipping: the plain reference of the CPU op (tests only). Math:
// docs/ops/adamw.md.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/ops/cpu/reference/ops_ref.h"

namespace kd::cpu::ref {

namespace {

// global_norm sums fixed chunks of this many values, one double per chunk, then the chunk sums in
// order: the result is the same bits whatever the thread count.
constexpr size_t kNormChunk = 1 << 16;

}  // namespace

double global_norm(const float* grads, size_t n) {
  const size_t chunks = (n + kNormChunk - 1) / kNormChunk;
  std::vector<double> partial(chunks, 0.0);
  const auto count = static_cast<std::ptrdiff_t>(chunks);
#pragma omp parallel for schedule(static)
  for (std::ptrdiff_t c = 0; c < count; ++c) {
    const size_t begin = static_cast<size_t>(c) * kNormChunk;
    const size_t end = std::min(n, begin + kNormChunk);
    double sum = 0.0;
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
  // The same scalars as torch.optim.AdamW (single-tensor path), in the same order.
  const float b1 = cfg.beta1;
  const float b2 = cfg.beta2;
  const double bias1 = 1.0 - std::pow(static_cast<double>(b1), t);
  const double bias2 = 1.0 - std::pow(static_cast<double>(b2), t);
  const float step_size = static_cast<float>(cfg.lr / bias1);
  const float bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  const float decay_factor = 1.0f - cfg.lr * cfg.weight_decay;

  for (const ParamSpan& span : spans) {
    float* p = params + span.offset;
    const float* g = grads + span.offset;
    float* ms = m + span.offset;
    float* vs = v + span.offset;
    const auto count = static_cast<std::ptrdiff_t>(span.size);
#pragma omp parallel for schedule(static)
    for (std::ptrdiff_t i = 0; i < count; ++i) {
      const float grad = g[i] * grad_scale;
      float param = p[i];
      if (span.decay) param *= decay_factor;  // decoupled weight decay, before the Adam step
      const float mi = b1 * ms[i] + (1.0f - b1) * grad;
      const float vi = b2 * vs[i] + (1.0f - b2) * grad * grad;
      const float denom = std::sqrt(vi) / bias2_sqrt + cfg.eps;
      p[i] = param - step_size * (mi / denom);
      ms[i] = mi;
      vs[i] = vi;
    }
  }
}

}  // namespace kd::cpu::ref
