// CPU twins of the core ops at a small GPT-2-like shape (B=4, T=64, C=128, NH=4). Each benchmark
// reports the bytes it must move and the floating-point operations it performs as rates, so the
// output reads as GB/s and FLOP/s. The counts are the ones derived in docs/ops/<op>.md.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "engine/ops/cpu/ops.h"

namespace {

constexpr int kB = 4;
constexpr int kT = 64;
constexpr int kC = 128;
constexpr int kNH = 4;
constexpr int kV = 1024;  // a small vocabulary for the embedding and the LM-head matmul
constexpr int kN = kB * kT;

std::vector<float> random_floats(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Per-iteration bytes and FLOPs, reported as rates over the measured time.
void set_counters(benchmark::State& state, double bytes, double flops) {
  state.counters["bytes"] =
      benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["flops"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

constexpr double kF = sizeof(float);

// ---- encoder
// ---------------------------------------------------------------------------------------

std::vector<int32_t> random_tokens() {
  std::mt19937 rng(7);
  std::vector<int32_t> tokens(kN);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % kV);
  return tokens;
}

void BM_EncoderForward(benchmark::State& state) {
  const auto tokens = random_tokens();
  const auto wte = random_floats(static_cast<size_t>(kV) * kC, 1);
  const auto wpe = random_floats(static_cast<size_t>(kT) * kC, 2);
  std::vector<float> out(static_cast<size_t>(kN) * kC);
  for (auto _ : state) {
    kd::cpu::encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), kB, kT, kC);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double nc = static_cast<double>(kN) * kC;
  set_counters(state, 3 * nc * kF + kN * 4.0, nc);
}

void BM_EncoderBackward(benchmark::State& state) {
  const auto tokens = random_tokens();
  const auto dout = random_floats(static_cast<size_t>(kN) * kC, 3);
  std::vector<float> dwte(static_cast<size_t>(kV) * kC, 0.0f),
      dwpe(static_cast<size_t>(kT) * kC, 0.0f);
  for (auto _ : state) {
    kd::cpu::encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), kB, kT, kC);
    benchmark::DoNotOptimize(dwte.data());
    benchmark::ClobberMemory();
  }
  const double nc = static_cast<double>(kN) * kC;
  set_counters(state, 5 * nc * kF + kN * 4.0, 2 * nc);
}

// ---- layernorm
// -------------------------------------------------------------------------------------

void BM_LayerNormForward(benchmark::State& state) {
  const auto inp = random_floats(static_cast<size_t>(kN) * kC, 4);
  const auto w = random_floats(kC, 5), b = random_floats(kC, 6);
  std::vector<float> out(inp.size()), mean(kN), rstd(kN);
  for (auto _ : state) {
    kd::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(),
                               kN, kC);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double nc = static_cast<double>(kN) * kC;
  set_counters(state, (2 * nc + 2 * kC + 2 * kN) * kF, 8 * nc);
}

void BM_LayerNormBackward(benchmark::State& state) {
  const auto inp = random_floats(static_cast<size_t>(kN) * kC, 4);
  const auto w = random_floats(kC, 5), b = random_floats(kC, 6);
  const auto dout = random_floats(inp.size(), 7);
  std::vector<float> out(inp.size()), mean(kN), rstd(kN);
  kd::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(),
                             kN, kC);
  std::vector<float> dinp(inp.size(), 0.0f), dw(kC, 0.0f), db(kC, 0.0f);
  for (auto _ : state) {
    kd::cpu::layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(),
                                w.data(), mean.data(), rstd.data(), kN, kC);
    benchmark::DoNotOptimize(dinp.data());
    benchmark::ClobberMemory();
  }
  const double nc = static_cast<double>(kN) * kC;
  set_counters(state, (4 * nc + 5 * kC + 2 * kN) * kF, 16 * nc);
}

// ---- matmul: arg 0 is the layout (0 = InOut, the attention's c_attn C -> 3C; 1 = OutIn, the
// LM head C -> V)
// -----------------------------------------------------------------------------------

struct MatmulCase {
  kd::Layout layout;
  int OC;
};

MatmulCase matmul_case(const benchmark::State& state) {
  return state.range(0) == 0 ? MatmulCase{kd::Layout::InOut, 3 * kC}
                             : MatmulCase{kd::Layout::OutIn, kV};
}

void BM_MatmulForward(benchmark::State& state) {
  const auto mc = matmul_case(state);
  const auto inp = random_floats(static_cast<size_t>(kN) * kC, 8);
  const auto w = random_floats(static_cast<size_t>(kC) * mc.OC, 9);
  const auto bias = random_floats(mc.OC, 10);
  std::vector<float> out(static_cast<size_t>(kN) * mc.OC);
  for (auto _ : state) {
    kd::cpu::matmul_forward(out.data(), inp.data(), w.data(), bias.data(), kN, kC, mc.OC,
                            mc.layout);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double n = kN, c = kC, oc = mc.OC;
  set_counters(state, (n * c + c * oc + oc + n * oc) * kF, 2 * n * c * oc);
}

void BM_MatmulBackward(benchmark::State& state) {
  const auto mc = matmul_case(state);
  const auto inp = random_floats(static_cast<size_t>(kN) * kC, 8);
  const auto w = random_floats(static_cast<size_t>(kC) * mc.OC, 9);
  const auto dout = random_floats(static_cast<size_t>(kN) * mc.OC, 11);
  std::vector<float> dinp(inp.size(), 0.0f), dw(w.size(), 0.0f), db(mc.OC, 0.0f);
  for (auto _ : state) {
    kd::cpu::matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                             kN, kC, mc.OC, mc.layout);
    benchmark::DoNotOptimize(dw.data());
    benchmark::ClobberMemory();
  }
  const double n = kN, c = kC, oc = mc.OC;
  set_counters(state, (n * oc + 3 * n * c + 3 * c * oc + 2 * oc) * kF, 4 * n * c * oc + n * oc);
}

// ---- attention
// -------------------------------------------------------------------------------------

// Query-key pairs a causal head visits: T(T+1)/2 per (b, h).
constexpr double kPairs = static_cast<double>(kB) * kNH * kT * (kT + 1) / 2;
constexpr int kHs = kC / kNH;

void BM_AttentionForward(benchmark::State& state) {
  const auto qkv = random_floats(static_cast<size_t>(kN) * 3 * kC, 12);
  std::vector<float> out(static_cast<size_t>(kN) * kC), lse(static_cast<size_t>(kB) * kNH * kT);
  for (auto _ : state) {
    kd::cpu::attention_forward(out.data(), lse.data(), qkv.data(), kB, kT, kC, kNH);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double nc = static_cast<double>(kN) * kC;
  set_counters(state, (4 * nc + kB * kNH * kT) * kF, kPairs * 4 * kHs);
}

void BM_AttentionBackward(benchmark::State& state) {
  const auto qkv = random_floats(static_cast<size_t>(kN) * 3 * kC, 12);
  const auto dout = random_floats(static_cast<size_t>(kN) * kC, 13);
  std::vector<float> out(static_cast<size_t>(kN) * kC), lse(static_cast<size_t>(kB) * kNH * kT);
  kd::cpu::attention_forward(out.data(), lse.data(), qkv.data(), kB, kT, kC, kNH);
  std::vector<float> dqkv(qkv.size(), 0.0f);
  for (auto _ : state) {
    kd::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), kB,
                                kT, kC, kNH);
    benchmark::DoNotOptimize(dqkv.data());
    benchmark::ClobberMemory();
  }
  const double nc = static_cast<double>(kN) * kC;
  set_counters(state, (11 * nc + kB * kNH * kT) * kF, kPairs * 10 * kHs);
}

// ---- gelu (on the MLP's hidden activation, 4C wide)
// -------------------------------------------------

constexpr size_t kGeluN = static_cast<size_t>(kN) * 4 * kC;

void BM_GeluForward(benchmark::State& state) {
  const auto inp = random_floats(kGeluN, 14);
  std::vector<float> out(kGeluN);
  for (auto _ : state) {
    kd::cpu::gelu_forward(out.data(), inp.data(), kGeluN);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2.0 * kGeluN * kF, 8.0 * kGeluN);
}

void BM_GeluBackward(benchmark::State& state) {
  const auto inp = random_floats(kGeluN, 14);
  const auto dout = random_floats(kGeluN, 15);
  std::vector<float> dinp(kGeluN, 0.0f);
  for (auto _ : state) {
    kd::cpu::gelu_backward(dinp.data(), inp.data(), dout.data(), kGeluN);
    benchmark::DoNotOptimize(dinp.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 4.0 * kGeluN * kF, 16.0 * kGeluN);
}

// ---- residual
// --------------------------------------------------------------------------------------

constexpr size_t kResN = static_cast<size_t>(kN) * kC;

void BM_ResidualForward(benchmark::State& state) {
  const auto a = random_floats(kResN, 16), b = random_floats(kResN, 17);
  std::vector<float> out(kResN);
  for (auto _ : state) {
    kd::cpu::residual_forward(out.data(), a.data(), b.data(), kResN);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 3.0 * kResN * kF, 1.0 * kResN);
}

void BM_ResidualBackward(benchmark::State& state) {
  const auto dout = random_floats(kResN, 18);
  std::vector<float> da(kResN, 0.0f), db(kResN, 0.0f);
  for (auto _ : state) {
    kd::cpu::residual_backward(da.data(), db.data(), dout.data(), kResN);
    benchmark::DoNotOptimize(da.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 5.0 * kResN * kF, 2.0 * kResN);
}

}  // namespace

BENCHMARK(BM_EncoderForward);
BENCHMARK(BM_EncoderBackward);
BENCHMARK(BM_LayerNormForward);
BENCHMARK(BM_LayerNormBackward);
BENCHMARK(BM_MatmulForward)->ArgName("lm_head")->Arg(0)->Arg(1);
BENCHMARK(BM_MatmulBackward)->ArgName("lm_head")->Arg(0)->Arg(1);
BENCHMARK(BM_AttentionForward);
BENCHMARK(BM_AttentionBackward);
BENCHMARK(BM_GeluForward);
BENCHMARK(BM_GeluBackward);
BENCHMARK(BM_ResidualForward);
BENCHMARK(BM_ResidualBackward);

BENCHMARK_MAIN();
