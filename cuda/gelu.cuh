// GELU, tanh approximation (GPT-2), on the GPU. CPU twin: kd::cpu::gelu_forward/backward.
#pragma once

#include <cstddef>

#include "cuda/common.cuh"

namespace kd::cuda {

// out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), fp32 math, bf16 in and out.
void gelu_forward(bf16* out, const bf16* inp, size_t n, cudaStream_t s);
// dinp += gelu'(inp) * dout (bf16; the sum is formed in fp32 and rounded once).
void gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, size_t n, cudaStream_t s);

}  // namespace kd::cuda
