// LayerNorm over the last dimension on the GPU (mixed precision, eps = 1e-5).
// CPU twin: kd::cpu::layernorm_forward/backward.
#pragma once

#include "cuda/common.cuh"

namespace kd::cuda {

// out = (x - mean) * rstd * w + b; activations and parameters bf16, statistics fp32 (two passes
// over the row, as the CPU twin). mean[N] and rstd[N] are saved for the backward.
void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* weight,
                       const bf16* bias, int N, int C, cudaStream_t s);

// dinp (bf16) += input gradient; dweight, dbias (fp32) += parameter gradients. Deterministic: fixed
// row blocks write per-block partial sums, reduced in block order by a second kernel. Uses
// stream-ordered scratch of 8 * C * ceil(N / 32) bytes. C <= 8192.
void layernorm_backward(bf16* dinp, float* dweight, float* dbias, const bf16* dout, const bf16* inp,
                        const bf16* weight, const float* mean, const float* rstd, int N, int C,
                        cudaStream_t s);

// Fused residual add + LayerNorm: residual = bf16(a + b), then out = layernorm(residual) on the
// rounded residual. Saves one read of the residual stream against the two separate kernels.
// residual may alias a or b (each element is read before it is written, by the same thread).
void fused_residual_layernorm_forward(bf16* residual, bf16* out, float* mean, float* rstd,
                                      const bf16* a, const bf16* b, const bf16* weight,
                                      const bf16* bias, int N, int C, cudaStream_t s);

}  // namespace kd::cuda
