// The fused distillation loss on the GPU. CPU twin: kd::cpu::kd_loss (same math, same sums).
#pragma once

#include <cstdint>

#include "cuda/common.cuh"
#include "engine/ops/ops.h"

namespace kd::cuda {

// logits [N,Vs] bf16 student (row stride Vs >= V, read on its first V columns); teacher [N,Vt]
// bf16 (row stride Vt >= V, read on its first V columns) or null for plain CE; targets[N] on the
// device (< 0 masks the row; >= V makes the row's loss NaN so that the error is visible in the
// sums). dlogits [N,Vs] bf16 receives inv_norm * d(loss)/dlogits on the first V columns and 0 on
// the padding columns [V, Vs); it may be null (evaluation) or equal logits (written in place).
// sums: a DEVICE LossSums that the call ADDS into (as the CPU twin), or null. Enqueued on s
// without host synchronisation; uses 24 * N bytes of stream-ordered scratch. Throws
// kd::ContractError on an invalid cfg, V, Vs or Vt.
void kd_loss(bf16* dlogits, kd::LossSums* sums, const bf16* logits, int Vs, const bf16* teacher,
             int Vt, const int32_t* targets, int N, int V, const kd::LossConfig& cfg,
             float inv_norm, cudaStream_t s);

}  // namespace kd::cuda
