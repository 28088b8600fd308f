// Residual add on the GPU. CPU twin: kd::cpu::residual_forward/backward.
#pragma once

#include <cstddef>

#include "cuda/common.cuh"

namespace kd::cuda {

// out = bf16(a + b).
void residual_forward(bf16* out, const bf16* a, const bf16* b, size_t n, cudaStream_t s);
// da += dout; db += dout (each sum formed in fp32 and rounded once to bf16). da and db must not
// alias each other.
void residual_backward(bf16* da, bf16* db, const bf16* dout, size_t n, cudaStream_t s);

}  // namespace kd::cuda
