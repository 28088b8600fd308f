// Token + position embedding on the GPU (mixed precision). CPU twin:
// kd::cpu::encoder_forward/backward.
#pragma once

#include <cstdint>

#include "cuda/common.cuh"

namespace kd::cuda {

// out[b,t,:] = bf16(wte[tokens[b,t],:] + wpe[t,:]) (sum in fp32). wte [V,C], wpe [maxT,C] bf16,
// out [B,T,C] bf16. Tokens must lie in [0, V); a negative token contributes nothing (out = wpe).
void encoder_forward(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe, int B,
                     int T, int C, cudaStream_t s);

// dwte[tokens[b,t],:] += dout[b,t,:]; dwpe[t,:] += dout[b,t,:]. Gradients fp32, dout bf16.
// Deterministic: every gradient row receives its contributions in increasing (b,t) order, exactly
// as the CPU twin adds them. Negative tokens contribute nothing to dwte. Uses stream-ordered
// scratch of 8 * next_pow2(B*T) bytes; no host synchronisation.
void encoder_backward(float* dwte, float* dwpe, const bf16* dout, const int32_t* tokens, int B,
                      int T, int C, cudaStream_t s);

}  // namespace kd::cuda
