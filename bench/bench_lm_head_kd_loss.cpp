// The chunked, fused LM head + distillation loss (lm_head_kd_loss) against the unchunked path it
// replaces (the two full [N, V] logit products, kd_loss over all rows, the head's matmul backward),
// at GPT-2 shapes: N = 256 rows, V = 50257, student C = 384, teacher C = 768. Argument: chunk rows
// (0 = automatic); BM_LmHeadUnchunked is the baseline. Both report FLOP/s over the same four
// products (teacher head, student head, dh, dwte), so the rates compare directly. Peak memory is
// measured on whole steps (docs/results.md), not here.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "engine/ops/cpu/ops.h"

namespace {

constexpr int kN = 256, kV = 50257, kC = 384, kCt = 768;

std::vector<float> random_floats(size_t n, unsigned seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

struct Inputs {
  std::vector<float> h = random_floats(size_t(kN) * kC, 1, 1.0f);
  std::vector<float> wte = random_floats(size_t(kV) * kC, 2, 0.05f);
  std::vector<float> ht = random_floats(size_t(kN) * kCt, 3, 1.0f);
  std::vector<float> wte_t = random_floats(size_t(kV) * kCt, 4, 0.05f);
  std::vector<int32_t> targets;
  kd::LossConfig cfg;
  Inputs() {
    std::mt19937 rng(5);
    targets.resize(kN);
    for (auto& t : targets) t = int32_t(rng() % kV);
    cfg.kd_weight = 1.0f;
    cfg.temperature = 2.0f;
  }
};

void set_flops(benchmark::State& state) {
  const double flops = 2.0 * kN * kV * (kCt + 3.0 * kC);
  state.counters["flops"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_LmHeadKdLoss(benchmark::State& state) {
  const Inputs in;
  const int chunk = int(state.range(0));
  std::vector<float> dh(size_t(kN) * kC), dwte(size_t(kV) * kC);
  const int used = chunk > 0 ? chunk : kd::cpu::lm_head_kd_loss_auto_chunk(kN, kV, kV);
  std::vector<float> ws(kd::cpu::lm_head_kd_loss_workspace_floats(used, kV, kV));
  for (auto _ : state) {
    kd::LossSums sums;
    kd::cpu::lm_head_kd_loss(dh.data(), dwte.data(), &sums, in.h.data(), in.wte.data(),
                             in.ht.data(), in.wte_t.data(), kCt, kV, in.targets.data(), kN, kC, kV,
                             in.cfg, 1.0f / kN, used, ws.data());
    benchmark::DoNotOptimize(sums.loss);
    benchmark::ClobberMemory();
  }
  state.counters["chunk"] = used;
  set_flops(state);
}
BENCHMARK(BM_LmHeadKdLoss)->Arg(0)->Arg(16)->Arg(64)->Arg(256)->Unit(benchmark::kMillisecond);

void BM_LmHeadUnchunked(benchmark::State& state) {
  const Inputs in;
  std::vector<float> dh(size_t(kN) * kC), dwte(size_t(kV) * kC);
  std::vector<float> logits(size_t(kN) * kV), tlog(size_t(kN) * kV);
  for (auto _ : state) {
    kd::LossSums sums;
    kd::cpu::matmul_forward(tlog.data(), in.ht.data(), in.wte_t.data(), nullptr, kN, kCt, kV,
                            kd::Layout::OutIn);
    kd::cpu::matmul_forward(logits.data(), in.h.data(), in.wte.data(), nullptr, kN, kC, kV,
                            kd::Layout::OutIn);
    kd::cpu::kd_loss(logits.data(), &sums, logits.data(), tlog.data(), kV, in.targets.data(), kN,
                     kV, in.cfg, 1.0f / kN);
    kd::cpu::matmul_backward(dh.data(), dwte.data(), nullptr, logits.data(), in.h.data(),
                             in.wte.data(), kN, kC, kV, kd::Layout::OutIn);
    benchmark::DoNotOptimize(sums.loss);
    benchmark::ClobberMemory();
  }
  set_flops(state);
}
BENCHMARK(BM_LmHeadUnchunked)->Unit(benchmark::kMillisecond);

}  // namespace
BENCHMARK_MAIN();
