// Causal flash attention, forward and backward, at GPT-2 sizes: B=8, T=1024, (NH, hs) = (12, 64)
// and (6, 128). Timed with CUDA events over rotating input sets (more than L2 several times over).
// FLOPs are the useful work of causal attention: forward 4 B NH T^2 hs / 2, backward 2.5x that.
#include <benchmark/benchmark.h>

#include <memory>
#include <vector>

#include "bench/gpu/bench_util.h"
#include "cuda/attention.cuh"

namespace {

using kd::bench::Buffer;
using kd::cuda::bf16;

struct AttnSet {
  Buffer<bf16> qkv, out, dout, dqkv;
  Buffer<float> lse, scratch;
  AttnSet(int B, int T, int C, int NH, bool backward)
      : qkv(static_cast<size_t>(B) * T * 3 * C),
        out(static_cast<size_t>(B) * T * C),
        dout(backward ? static_cast<size_t>(B) * T * C : 0),
        dqkv(backward ? static_cast<size_t>(B) * T * 3 * C : 0),
        lse(static_cast<size_t>(B) * NH * T),
        scratch(backward ? kd::cuda::attention_backward_scratch_floats(B, T, NH) : 0) {}
};

double causal_forward_flops(int B, int T, int NH, int hs) {
  return 4.0 * B * NH * static_cast<double>(T) * T * hs / 2.0;
}

void BM_attention(benchmark::State& state, bool backward) {
  const int B = 8, T = 1024;
  const int hs = static_cast<int>(state.range(0));
  const int NH = hs == 64 ? 12 : 6;
  const int C = NH * hs;
  if (!kd::probe_device().cuda_usable) {
    state.SkipWithError("no usable GPU");
    return;
  }
  const double set_bytes = static_cast<double>(B) * T * C * 2 * (backward ? 3 + 1 + 1 + 3 : 3 + 1) +
                           static_cast<double>(B) * NH * T * 4;
  const int sets = kd::bench::rotation_sets(set_bytes);
  std::vector<std::unique_ptr<AttnSet>> data;
  for (int s = 0; s < sets; ++s) {
    data.push_back(std::make_unique<AttnSet>(B, T, C, NH, backward));
    AttnSet& d = *data.back();
    d.qkv.fill(-1.0f, 1.0f, 100 + s);
    if (backward) {
      d.dout.fill(-1.0f, 1.0f, 200 + s);
      // Realistic out and lse for the backward: run the forward once.
      kd::cuda::attention_forward(d.out.get(), d.lse.get(), d.qkv.get(), B, T, C, NH, nullptr);
    }
  }
  KD_CUDA_CHECK(cudaDeviceSynchronize());
  const double fwd = causal_forward_flops(B, T, NH, hs);
  const double flops = backward ? 2.5 * fwd : fwd;
  // Compulsory traffic: forward reads qkv, writes out and lse; backward reads qkv, out, dout, lse
  // and writes dqkv.
  const double bytes = set_bytes;
  kd::bench::run_timed(state, bytes, flops, [&](int i) {
    AttnSet& d = *data[i % sets];
    if (backward)
      kd::cuda::attention_backward(d.dqkv.get(), d.dout.get(), d.qkv.get(), d.out.get(),
                                   d.lse.get(), B, T, C, NH, nullptr, d.scratch.get());
    else
      kd::cuda::attention_forward(d.out.get(), d.lse.get(), d.qkv.get(), B, T, C, NH, nullptr);
  });
  state.counters["hs"] = hs;
  state.counters["NH"] = NH;
}

void BM_attention_forward(benchmark::State& state) {
  BM_attention(state, false);
}
void BM_attention_backward(benchmark::State& state) {
  BM_attention(state, true);
}

}  // namespace

BENCHMARK(BM_attention_forward)->Arg(64)->Arg(128)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_attention_backward)->Arg(64)->Arg(128)->UseManualTime()->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
