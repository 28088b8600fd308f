// The chunked, fused LM head + distillation loss on the GPU. CPU twin: kd::cpu::lm_head_kd_loss
// (same math, same sums). Math: docs/ops/lm_head_kd_loss.md.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"
#include "engine/ops/ops.h"

namespace kd::cuda {

// h [N,C] bf16 the student's ln_f output; wte [Vs,C] bf16 its tied embedding, Vs >= V rows (rows
// V.. are vocabulary padding: their logits are formed but never read, and get a zero gradient);
// ht [N,Ct] and wte_t [Vt,Ct] the teacher's (Vt >= V; ht null: plain CE); targets [N] on the
// device (< 0 masks the row). For each chunk of chunk_rows rows (0 = lm_head_kd_loss_auto_chunk):
// both chunks of logits by cuBLASLt, kd_loss on them (the gradient written over the student's
// chunk logits), then dh += dlogits · wte (bf16) and dwte += dlogits^T · h (fp32), both ADDED
// (either may be null; both null = evaluation). sums: a DEVICE LossSums added into, or null.
// workspace: lm_head_kd_loss_workspace_elems bf16 values (16-byte aligned), or null (taken from
// the stream-ordered pool for the call). Enqueued on s, no host synchronisation.
void lm_head_kd_loss(bf16* dh, float* dwte, kd::LossSums* sums, const bf16* h, const bf16* wte,
                     int Vs, const bf16* ht, const bf16* wte_t, int Ct, int Vt,
                     const int32_t* targets, int N, int C, int V, const kd::LossConfig& cfg,
                     float inv_norm, int chunk_rows, bf16* workspace, cudaStream_t s);

// Rows per chunk when the caller asks for 0: the chunk's bf16 logits ((Vs + Vt) values a row)
// within a fixed 256 MiB budget, at least 1024 rows, at most N, spread evenly over the chunks and
// rounded up to a multiple of 64 (docs/ops/lm_head_kd_loss.md says why).
int lm_head_kd_loss_auto_chunk(int N, int Vs, int Vt);
// bf16 values of workspace for chunk_rows rows (Vt = 0 without a teacher): the student's chunk
// logits [chunk, Vs] and the teacher's [chunk, Vt], each starting on a 256-byte boundary.
size_t lm_head_kd_loss_workspace_elems(int chunk_rows, int Vs, int Vt);

}  // namespace kd::cuda
