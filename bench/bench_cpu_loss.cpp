// CPU twins of the distillation loss (N = 256 rows of the GPT-2 vocabulary, V = 50257) and of the
// optimizer (AdamW and the gradient norm over 10M parameters). Each benchmark reports the bytes it
// must move as a rate, so the output reads as GB/s: the loss reads the student and teacher logits
// and writes the gradient; AdamW reads params, grads, m, v and writes params, m, v.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "engine/ops/cpu/ops.h"

namespace {

constexpr int kN = 256;
constexpr int kV = 50257;
constexpr size_t kParams = 10'000'000;
constexpr double kF = sizeof(float);

std::vector<float> random_floats(size_t n, unsigned seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

void set_bytes(benchmark::State& state, double bytes) {
  state.counters["bytes"] =
      benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
}

// Argument 0: divergence (0 = forward KL, 1 = reverse KL, 2 = JSD(0.5)), or 3 for plain CE.
void BM_KdLoss(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));
  const std::vector<float> logits = random_floats(static_cast<size_t>(kN) * kV, 1, 2.0f);
  const std::vector<float> teacher = random_floats(static_cast<size_t>(kN) * kV, 2, 2.0f);
  std::vector<int32_t> targets(kN);
  std::mt19937 rng(3);
  for (auto& t : targets) t = static_cast<int32_t>(rng() % kV);
  std::vector<float> grad(logits.size());

  kd::LossConfig cfg;
  cfg.kd_weight = 1.0f;
  cfg.temperature = 2.0f;
  const kd::Divergence divs[] = {kd::Divergence::ForwardKL, kd::Divergence::ReverseKL,
                                 kd::Divergence::JSD};
  cfg.divergence = divs[which % 3];
  const float* t = which == 3 ? nullptr : teacher.data();

  for (auto _ : state) {
    kd::LossSums sums;
    kd::cpu::kd_loss(grad.data(), &sums, logits.data(), t, kV, targets.data(), kN, kV, cfg,
                     1.0f / kN);
    benchmark::DoNotOptimize(sums.loss);
    benchmark::ClobberMemory();
  }
  const double elems = static_cast<double>(kN) * kV;
  set_bytes(state, elems * kF * (t ? 3.0 : 2.0));
}
BENCHMARK(BM_KdLoss)->Arg(0)->Arg(1)->Arg(2)->Arg(3)->Unit(benchmark::kMillisecond);

void BM_AdamW(benchmark::State& state) {
  std::vector<float> params = random_floats(kParams, 4, 0.02f);
  const std::vector<float> grads = random_floats(kParams, 5, 1e-3f);
  std::vector<float> m(kParams, 0.0f), v(kParams, 0.0f);
  // Roughly a transformer's layout: mostly decayed matrices, a few undecayed vectors.
  const std::vector<kd::ParamSpan> spans = {
      {0, 9'000'000, true}, {9'000'000, 500'000, false}, {9'500'000, 500'000, true}};
  kd::AdamWConfig cfg;
  int t = 0;
  for (auto _ : state) {
    kd::cpu::adamw_update(params.data(), grads.data(), m.data(), v.data(), spans, cfg, ++t, 0.5f);
    benchmark::ClobberMemory();
  }
  set_bytes(state, static_cast<double>(kParams) * kF * 7.0);
}
BENCHMARK(BM_AdamW)->Unit(benchmark::kMillisecond);

void BM_GlobalNorm(benchmark::State& state) {
  const std::vector<float> grads = random_floats(kParams, 6, 1e-3f);
  for (auto _ : state) {
    benchmark::DoNotOptimize(kd::cpu::global_norm(grads.data(), grads.size()));
  }
  set_bytes(state, static_cast<double>(kParams) * kF);
}
BENCHMARK(BM_GlobalNorm)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
