// Mixed-precision AdamW and the global gradient norm on the GPU.
// CPU twins: kd::cpu::adamw_update and kd::cpu::global_norm.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"
#include "engine/ops/ops.h"

namespace kd::cuda {

// Global L2 norm of n fp32 gradients, deterministic: fixed chunks of 65536 values (the CPU twin's
// chunks) are summed in double by one block each, then one block sums the chunk partials in order.
// Writes norm[0] = sqrt(sum g^2) (device float). If scale is non-null, also writes
// scale[0] = min(1, max_norm / norm) when max_norm > 0 (1 otherwise, and 1 when the norm is 0 or
// not finite): the clipping factor adamw_update can read on the device, without a host sync.
void global_norm(float* norm, float* scale, const float* grads, size_t n, float max_norm,
                 cudaStream_t s);

// Options of the bf16 copy of the weights.
struct AdamWRounding {
  bool stochastic = false;  // round master -> bf16 stochastically (unbiased) instead of to nearest
  uint64_t seed = 0;        // with the element index and the step, seeds the rounding noise
};

// One AdamW step over every span (a DEVICE array of num_spans ParamSpan, sorted by offset and not
// overlapping; elements outside every span are left untouched). master, m, v: fp32 [n]; grads
// fp32 [n]; params: the bf16 copy of master, rewritten from the updated master. The update is the
// CPU twin's, in the same order and with the same fp32 roundings (no fused multiply-adds), so the
// master weights and moments match it bit for bit. Each gradient is multiplied by
// *grad_scale_dev when that pointer is non-null (e.g. the scale from global_norm), else by
// grad_scale. t is the 1-based step. Throws kd::ContractError on t < 1 or betas outside [0, 1).
void adamw_update(bf16* params, float* master, const float* grads, float* m, float* v,
                  const kd::ParamSpan* spans, int num_spans, size_t n, const kd::AdamWConfig& cfg,
                  int t, float grad_scale, const float* grad_scale_dev, AdamWRounding rounding,
                  cudaStream_t s);

}  // namespace kd::cuda
