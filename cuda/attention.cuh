// Causal multi-head self-attention on the GPU (flash attention on tensor cores). CPU twin:
// kd::cpu::attention_forward/backward. Layout as the twin: qkv [B,T,3C] (q of head h at channel
// h*hs, k at C + h*hs, v at 2C + h*hs), out [B,T,C], lse [B,NH,T]. Head sizes 64 and 128.
#pragma once

#include <cstddef>

#include "cuda/common.cuh"

namespace kd::cuda {

// out = softmax(q k^T / sqrt(hs), causal) v in bf16 (fp32 math); lse[b,h,t] = natural log of the
// sum of exp of the scaled scores of query t. qkv, out must be 16-byte aligned. Throws
// kd::ContractError for an unsupported head size (hs = C/NH must be 64 or 128).
void attention_forward(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
                       cudaStream_t stream);

// Floats of scratch attention_backward needs (the per-row D = rowsum(dout * out)): B*NH*T.
size_t attention_backward_scratch_floats(int B, int T, int NH);

// Gradient of the attention with respect to qkv, ADDED into dqkv [B,T,3C] like every backward (the
// ops contract, engine/ops/ops.h; the sum is rounded to bf16 once). Uses out and lse from the
// forward.
// scratch: attention_backward_scratch_floats(B, T, NH) floats of device memory (its contents on
// entry do not matter). Deterministic: no atomics, the same inputs give bitwise the same dqkv.
void attention_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                        const float* lse, int B, int T, int C, int NH, cudaStream_t stream,
                        float* scratch);

}  // namespace kd::cuda
