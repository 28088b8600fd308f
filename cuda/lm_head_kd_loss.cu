// The chunked, fused LM head + distillation loss: host orchestration of cuBLASLt products
// (cuda/matmul.cu) and the loss kernel (cuda/kd_loss.cu); no kernel of its own.
// Math: docs/ops/lm_head_kd_loss.md; CPU twin: engine/ops/cpu/lm_head_kd_loss.cpp.
//
// Per chunk R of rows (the last may be shorter):
//   t_R  = ht_R · wte_t^T      [|R|, Vt]  bf16, cuBLASLt (fp32 accumulate)
//   z_R  = h_R · wte^T         [|R|, Vs]  bf16, cuBLASLt
//   kd_loss(z_R, t_R)          the loss sums, and the gradient written over z_R (0 on the padding
//                              columns [V, Vs))
//   dh_R += z_R · wte          [|R|, C]   bf16, cuBLASLt (beta = 1)
//   dwte += z_R^T · h_R        [Vs, C]    fp32, cuBLASLt (beta = 1)
// Only one chunk's logits exist: (Vs + Vt) · 2 bytes a row. Work per chunk: 2·|R|·(Vt·Ct + 3·Vs·C)
// flops; bytes: the chunk's logits written by the products and read by the loss (6 B per student
// logit pair, see kd_loss.cu), dwte read and written once in fp32 (8·Vs·C) and wte, wte_t read.
// The dwte update is what makes small chunks slow (|R|/4 flop per byte of dwte traffic), hence
// the 1024-row floor of the automatic size.
#include <algorithm>
#include <string>

#include "cuda/kd_loss.cuh"
#include "cuda/lm_head_kd_loss.cuh"
#include "cuda/matmul.cuh"

namespace kd::cuda {

namespace {

size_t round256(size_t elems) {  // bf16 values up to a 256-byte boundary
  return (elems + 127) / 128 * 128;
}

}  // namespace

int lm_head_kd_loss_auto_chunk(int N, int Vs, int Vt) {
  constexpr long kBudget = 256L << 20;  // bytes of chunk logits
  constexpr long kMinRows = 1024;
  constexpr long kRound = 64;
  if (N <= 0) return 1;
  const long row_bytes = (long(Vs) + std::max(Vt, 0)) * long(sizeof(bf16));
  const long rows = std::max(kMinRows, kBudget / std::max(1L, row_bytes));
  const long chunks = (long(N) + rows - 1) / rows;
  const long even = (long(N) + chunks - 1) / chunks;
  return int(std::min<long>(N, (even + kRound - 1) / kRound * kRound));
}

size_t lm_head_kd_loss_workspace_elems(int chunk_rows, int Vs, int Vt) {
  const size_t rows = static_cast<size_t>(std::max(chunk_rows, 0));
  return round256(rows * static_cast<size_t>(Vs)) + rows * static_cast<size_t>(std::max(Vt, 0));
}

void lm_head_kd_loss(bf16* dh, float* dwte, kd::LossSums* sums, const bf16* h, const bf16* wte,
                     int Vs, const bf16* ht, const bf16* wte_t, int Ct, int Vt,
                     const int32_t* targets, int N, int C, int V, const kd::LossConfig& cfg,
                     float inv_norm, int chunk_rows, bf16* workspace, cudaStream_t s) {
  const std::string where = "lm_head_kd_loss (cuda): ";
  KD_REQUIRE(N >= 0 && C >= 1 && V >= 1 && Vs >= V,
             where + "need N >= 0, C >= 1, V >= 1 and Vs >= V; got N " + std::to_string(N) +
                 ", C " + std::to_string(C) + ", V " + std::to_string(V) + ", Vs " +
                 std::to_string(Vs));
  KD_REQUIRE(h != nullptr && wte != nullptr && targets != nullptr,
             where + "h, wte and targets are required");
  const bool teacher = ht != nullptr;
  KD_REQUIRE(!teacher || (wte_t != nullptr && Ct >= 1 && Vt >= V),
             where + "a teacher needs wte_t, Ct >= 1 and Vt >= V = " + std::to_string(V) +
                 "; got Ct " + std::to_string(Ct) + ", Vt " + std::to_string(Vt));
  if (N == 0) return;
  const int chunk =
      chunk_rows > 0 ? std::min(chunk_rows, N) : lm_head_kd_loss_auto_chunk(N, Vs, Vt);
  const int VtUsed = teacher ? Vt : 0;
  StreamScratch own(
      workspace == nullptr ? sizeof(bf16) * lm_head_kd_loss_workspace_elems(chunk, Vs, VtUsed) : 0,
      s);
  if (workspace == nullptr) workspace = own.as<bf16>();
  bf16* slog = workspace;                                         // [chunk, Vs]
  bf16* tlog = workspace + round256(size_t(chunk) * size_t(Vs));  // [chunk, Vt]
  const bool grad = dh != nullptr || dwte != nullptr;
  for (int r0 = 0; r0 < N; r0 += chunk) {
    const int n = std::min(chunk, N - r0);
    const bf16* hs = h + size_t(r0) * C;
    if (teacher)
      matmul_forward(tlog, ht + size_t(r0) * Ct, wte_t, nullptr, n, Ct, Vt, Layout::OutIn, false,
                     nullptr, s);
    matmul_forward(slog, hs, wte, nullptr, n, C, Vs, Layout::OutIn, false, nullptr, s);
    kd_loss(grad ? slog : nullptr, sums, slog, Vs, teacher ? tlog : nullptr, Vt, targets + r0, n, V,
            cfg, inv_norm, s);
    if (grad)
      matmul_backward(dh != nullptr ? dh + size_t(r0) * C : nullptr, dwte, nullptr, slog, hs, wte,
                      n, C, Vs, Layout::OutIn, s, true);
  }
}

}  // namespace kd::cuda
