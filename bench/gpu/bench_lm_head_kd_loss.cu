// GPU benchmarks of the distillation loss and the chunked LM head + loss (docs/ops/kd_loss.md,
// docs/ops/lm_head_kd_loss.md), at GPT-2's vocabulary padded as the GPU model holds it (V = 50257
// read on rows of 50304, teacher rows of 50304).
//
// BM_kd_loss: the loss kernel alone, gradient written in place, 8192 and 65536 rows. Reports
// B_per_logit, the DRAM bytes per logit the kernel is designed to move (6: z and t read once,
// dlogits written once, the row cached in shared memory; 10 or 14 when the row does not fit),
// GBps = that traffic / time, frac_copy = GBps over a device-to-device copy measured in the same
// process, and Glogit_per_s. The traffic is the design count, not a hardware counter: ncu's
// dram__bytes would tell whether the kernel really moves only that.
// BM_lm_head_kd_loss: the whole chunked head for a step's micro-batch (student C = 768, teacher
// C = 1024, 8192 rows), forward KL at T = 2, with the automatic chunk and with one chunk (the
// unchunked head): time, TFLOPps of the four products, GBps of the head's own traffic (14 B per
// logit pair, below, and dwte's per chunk), and the workspace it needs (MiB).
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "bench/gpu/bench_util.h"
#include "cuda/kd_loss.cuh"
#include "cuda/lm_head_kd_loss.cuh"

namespace {

using kd::bench::Buffer;
using kd::bench::run_timed;
using kd::cuda::bf16;

constexpr int kV = 50257;   // the vocabulary
constexpr int kVp = 50304;  // its padded rows, student and teacher

const char* label(kd::Divergence d) {
  return d == kd::Divergence::ForwardKL   ? "forward KL"
         : d == kd::Divergence::ReverseKL ? "reverse KL"
                                          : "JSD(0.5)";
}

void BM_kd_loss(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  const int N = static_cast<int>(state.range(0));
  const auto div = static_cast<kd::Divergence>(state.range(1));
  Buffer<bf16> z(size_t(N) * kVp), t(size_t(N) * kVp);
  z.fill(-4, 4, 31);
  t.fill(-4, 4, 32);
  Buffer<int32_t> targets(N);
  std::vector<int32_t> h(N);
  for (int i = 0; i < N; ++i) h[i] = static_cast<int32_t>((i * 131u) % kV);
  KD_CUDA_CHECK(cudaMemcpy(targets.get(), h.data(), N * sizeof(int32_t), cudaMemcpyHostToDevice));
  Buffer<kd::LossSums> sums(1);
  KD_CUDA_CHECK(cudaMemset(sums.get(), 0, sizeof(kd::LossSums)));
  kd::LossConfig cfg;
  cfg.kd_weight = 1.0f;
  cfg.temperature = 2.0f;
  cfg.divergence = div;
  const double logits = double(N) * kV;
  const double bytes_per_logit = 6.0;  // the row pair (4·V = 201 KB) fits the shared-memory cache
  // The gradient overwrites the logits; refilling them each call would be timed, so the later
  // calls see gradients as logits: the work per logit is the same. The 2·N·V·2 bytes of inputs
  // (1.6 GB at 8192 rows) are far larger than L2.
  run_timed(state, logits * bytes_per_logit, 0.0, [&](int) {
    kd::cuda::kd_loss(z.get(), sums.get(), z.get(), kVp, t.get(), kVp, targets.get(), N, kV, cfg,
                      1.0f / N, 0);
  });
  state.counters["B_per_logit"] = bytes_per_logit;
  if (state.counters["GBps"] > 0)
    state.counters["Glogit_per_s"] = state.counters["GBps"] / bytes_per_logit;
  state.SetLabel(label(div));
}

BENCHMARK(BM_kd_loss)
    ->Args({8192, static_cast<int>(kd::Divergence::ForwardKL)})
    ->Args({8192, static_cast<int>(kd::Divergence::ReverseKL)})
    ->Args({8192, static_cast<int>(kd::Divergence::JSD)})
    ->Args({65536, static_cast<int>(kd::Divergence::ForwardKL)})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// range(0): rows per chunk (0 = automatic, 8192 = one chunk).
void BM_lm_head_kd_loss(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  constexpr int N = 8192, C = 768, Ct = 1024;
  const int chunk_arg = static_cast<int>(state.range(0));
  const int chunk = chunk_arg > 0 ? chunk_arg : kd::cuda::lm_head_kd_loss_auto_chunk(N, kVp, kVp);
  Buffer<bf16> h(size_t(N) * C), wte(size_t(kVp) * C), ht(size_t(N) * Ct), wte_t(size_t(kVp) * Ct);
  Buffer<bf16> dh(size_t(N) * C);
  Buffer<float> dwte(size_t(kVp) * C);
  h.fill(-2, 2, 41);
  wte.fill(-0.1f, 0.1f, 42);
  ht.fill(-2, 2, 43);
  wte_t.fill(-0.1f, 0.1f, 44);
  KD_CUDA_CHECK(cudaMemset(dh.get(), 0, dh.size() * sizeof(bf16)));
  KD_CUDA_CHECK(cudaMemset(dwte.get(), 0, dwte.size() * sizeof(float)));
  Buffer<int32_t> targets(N);
  std::vector<int32_t> tg(N);
  for (int i = 0; i < N; ++i) tg[i] = static_cast<int32_t>((i * 131u) % kV);
  KD_CUDA_CHECK(cudaMemcpy(targets.get(), tg.data(), N * sizeof(int32_t), cudaMemcpyHostToDevice));
  const size_t ws_elems = kd::cuda::lm_head_kd_loss_workspace_elems(chunk, kVp, kVp);
  Buffer<bf16> ws(ws_elems);
  Buffer<kd::LossSums> sums(1);
  KD_CUDA_CHECK(cudaMemset(sums.get(), 0, sizeof(kd::LossSums)));
  kd::LossConfig cfg;
  cfg.kd_weight = 1.0f;
  cfg.temperature = 2.0f;
  // Four products: teacher and student logits, dh, dwte.
  const double flops = 2.0 * N * kVp * (double(Ct) + 3.0 * C);
  // Bytes per student/teacher logit pair: both written by the forward products (4), the loss
  // (6), dlogits read by the two backward products (4); plus dwte's fp32 read and write per chunk.
  const double bytes = 14.0 * N * kVp + 8.0 * kVp * C * ((N + chunk - 1) / chunk);
  run_timed(state, bytes, flops, [&](int) {
    kd::cuda::lm_head_kd_loss(dh.get(), dwte.get(), sums.get(), h.get(), wte.get(), kVp, ht.get(),
                              wte_t.get(), Ct, kVp, targets.get(), N, C, kV, cfg, 1.0f / N, chunk,
                              ws.get(), 0);
  });
  state.counters["chunk_rows"] = chunk;
  state.counters["workspace_MiB"] = double(ws_elems) * 2 / (1024.0 * 1024.0);
  state.SetLabel(chunk_arg > 0 ? "one chunk (unchunked)" : "automatic chunks");
}

BENCHMARK(BM_lm_head_kd_loss)->Arg(0)->Arg(8192)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
