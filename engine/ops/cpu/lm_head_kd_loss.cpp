// The chunked, fused LM head + distillation loss, CPU twin. Math: docs/ops/lm_head_kd_loss.md.
//
// Per chunk of rows: teacher logits = h_t · wte_t^T, student logits = h_s · wte^T (only the chunk's
// rows), the fused loss and logit gradient of kd_loss (written in place over the student's chunk
// logits), then dh_s += dlogits · wte and dwte += dlogits^T · h_s. Only one chunk's logits exist.
#include <algorithm>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/ops/cpu/ops.h"

namespace kd::cpu {

int lm_head_kd_loss_auto_chunk(int N, int V, int Vt) {
  // Every chunk adds a rank-`chunk` update into the whole dwte [V, C], reading and writing it once:
  // 2·chunk·V·C flops against 8·V·C bytes, so a chunk of a few rows is bound by memory traffic
  // (docs/ops/lm_head_kd_loss.md). The chunk's logits, (V + Vt) floats a row, get a budget of
  // kAutoBudget bytes, with at least kAutoMinRows rows; the rows are then spread evenly over the
  // chunks so the last one is not a sliver.
  constexpr long kAutoBudget = 128L << 20;
  constexpr long kAutoMinRows = 64;
  if (N <= 0) return 1;
  const long row_bytes = long(V + std::max(Vt, 0)) * long(sizeof(float));
  const long rows = std::max(kAutoMinRows, kAutoBudget / std::max(1L, row_bytes));
  const long chunks = (long(N) + rows - 1) / rows;
  return int((long(N) + chunks - 1) / chunks);
}

size_t lm_head_kd_loss_workspace_floats(int chunk_rows, int V, int Vt) {
  return size_t(std::max(chunk_rows, 0)) * (size_t(V) + size_t(std::max(Vt, 0)));
}

void lm_head_kd_loss(float* dh, float* dwte, LossSums* sums, const float* h, const float* wte,
                     const float* ht, const float* wte_t, int Ct, int Vt, const int32_t* targets,
                     int N, int C, int V, const LossConfig& cfg, float inv_norm, int chunk_rows,
                     float* workspace) {
  KD_REQUIRE(N >= 0 && C >= 1 && V >= 1, "lm_head_kd_loss: need N >= 0, C >= 1, V >= 1");
  KD_REQUIRE(h != nullptr && wte != nullptr && sums != nullptr,
             "lm_head_kd_loss: h, wte and sums are required");
  const bool teacher = ht != nullptr;
  KD_REQUIRE(!teacher || (wte_t != nullptr && Ct >= 1),
             "lm_head_kd_loss: a teacher needs wte_t and Ct >= 1");
  if (teacher && Vt < V)
    throw InputError("lm_head_kd_loss: the teacher's vocabulary (" + std::to_string(Vt) +
                     ") is smaller than the student's (" + std::to_string(V) + ")");
  if (N == 0) return;
  // Check every target before any chunk adds into dh / dwte: bad input leaves the gradients as
  // they were (kd_loss itself checks only its own chunk).
  for (int i = 0; i < N; ++i)
    if (targets[i] >= V)
      throw InputError("lm_head_kd_loss: target " + std::to_string(targets[i]) + " of row " +
                       std::to_string(i) + " is outside the vocabulary of " + std::to_string(V));
  const int chunk = chunk_rows > 0 ? std::min(chunk_rows, N) : lm_head_kd_loss_auto_chunk(N, V, Vt);
  const int VtUsed = teacher ? Vt : 0;
  std::vector<float> own;
  if (workspace == nullptr) {
    own.resize(lm_head_kd_loss_workspace_floats(chunk, V, VtUsed));
    workspace = own.data();
  }
  float* slog = workspace;                      // [chunk, V]
  float* tlog = workspace + size_t(chunk) * V;  // [chunk, Vt] (teacher only)
  for (int r0 = 0; r0 < N; r0 += chunk) {
    const int n = std::min(chunk, N - r0);
    const float* hs = h + size_t(r0) * C;
    if (teacher)
      matmul_forward(tlog, ht + size_t(r0) * Ct, wte_t, nullptr, n, Ct, Vt, Layout::OutIn);
    matmul_forward(slog, hs, wte, nullptr, n, C, V, Layout::OutIn);
    LossSums part;
    const bool grad = dh != nullptr || dwte != nullptr;
    kd_loss(grad ? slog : nullptr, &part, slog, teacher ? tlog : nullptr, Vt, targets + r0, n, V,
            cfg, inv_norm);
    *sums += part;
    if (grad)
      matmul_backward(dh != nullptr ? dh + size_t(r0) * C : nullptr, dwte, nullptr, slog, hs, wte,
                      n, C, V, Layout::OutIn);
  }
}

}  // namespace kd::cpu
