// Matrix product with bias (and optionally GELU) through cuBLASLt: bf16 operands, fp32 accumulate.
// CPU twin: kd::cpu::matmul_forward/backward. Weight layouts as the twin (kd::Layout): InOut
// is W [C, OC] (out = inp · W), OutIn is W [OC, C] (out = inp · W^T).
#pragma once

#include <cstddef>

#include "cuda/common.cuh"
#include "engine/ops/ops.h"

namespace kd::cuda {

using Layout = kd::Layout;

// out[N,OC] = inp[N,C] · W + bias (bias [OC] may be null). With gelu_epilogue, pre_gelu[N,OC]
// (required) receives inp · W + bias and out = gelu(pre_gelu) (tanh approximation), fused into the
// product's epilogue where cuBLASLt allows it (OC a multiple of 8), else in a second pass.
void matmul_forward(bf16* out, const bf16* inp, const bf16* weight, const bf16* bias, int N, int C,
                    int OC, Layout layout, bool gelu_epilogue, bf16* pre_gelu, cudaStream_t stream);

// dinp[N,C] += dout · W^T (bf16; with accumulate_dinp = false it is overwritten instead);
// dweight += inp^T · dout (InOut, [C,OC]) or dout^T · inp (OutIn, [OC,C]), in fp32 (beta = 1);
// dbias[OC] += sum over rows of dout, in fp32, in a fixed order (deterministic).
// Any of dinp, dweight, dbias may be null (not wanted).
void matmul_backward(bf16* dinp, float* dweight, float* dbias, const bf16* dout, const bf16* inp,
                     const bf16* weight, int N, int C, int OC, Layout layout, cudaStream_t stream,
                     bool accumulate_dinp = true);

// What the process-wide cuBLASLt context holds: one handle and one workspace per device, and one
// cached plan (descriptors, layouts, the heuristic's algorithm) per distinct product.
struct MatmulStats {
  size_t plans = 0;            // cached plans (= heuristic queries made)
  size_t calls = 0;            // cuBLASLt products issued
  size_t workspace_bytes = 0;  // per device
};
MatmulStats matmul_stats();

}  // namespace kd::cuda
