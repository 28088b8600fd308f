// The cuBLASLt matmul at GPT-2 124M shapes (N = B*T = 8192 rows): c_attn 768->2304, c_fc
// 768->3072 (bias + GELU epilogue), MLP c_proj 3072->768 and the LM head 768->50304 (OutIn, tied to
// wte), forward and backward, plus the ceiling: a bf16 8192 x 8192 x 8192 product through the same
// path, measured in the same process. Each benchmark reports TFLOP/s and frac_ceiling (its TFLOP/s
// over the ceiling's). Inputs rotate over sets larger than L2 where memory allows.
#include <benchmark/benchmark.h>

#include <memory>
#include <vector>

#include "bench/gpu/bench_util.h"
#include "cuda/matmul.cuh"

namespace {

using kd::Layout;
using kd::bench::Buffer;
using kd::cuda::bf16;

// TFLOP/s of the 8192^3 bf16 product (best of 10 after warm-up); 0 without a GPU.
double ceiling_tflops() {
  static const double ceiling = [] {
    if (!kd::probe_device().cuda_usable) return 0.0;
    const int n = 8192;
    Buffer<bf16> a(static_cast<size_t>(n) * n), b(static_cast<size_t>(n) * n),
        d(static_cast<size_t>(n) * n);
    a.fill(-1.0f, 1.0f, 1);
    b.fill(-1.0f, 1.0f, 2);
    cudaEvent_t e0, e1;
    KD_CUDA_CHECK(cudaEventCreate(&e0));
    KD_CUDA_CHECK(cudaEventCreate(&e1));
    float best = 1e30f;
    for (int rep = 0; rep < 13; ++rep) {
      KD_CUDA_CHECK(cudaEventRecord(e0));
      kd::cuda::matmul_forward(d.get(), a.get(), b.get(), nullptr, n, n, n, Layout::InOut, false,
                               nullptr, nullptr);
      KD_CUDA_CHECK(cudaEventRecord(e1));
      KD_CUDA_CHECK(cudaEventSynchronize(e1));
      float ms = 0.0f;
      KD_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
      if (rep >= 3 && ms < best) best = ms;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return 2.0 * n * static_cast<double>(n) * n / (best * 1e-3) * 1e-12;
  }();
  return ceiling;
}

void add_ceiling_counters(benchmark::State& state) {
  const double ceiling = ceiling_tflops();
  state.counters["ceiling_TFLOPps"] = ceiling;
  const auto it = state.counters.find("TFLOPps");
  if (ceiling > 0 && it != state.counters.end())
    state.counters["frac_ceiling"] = static_cast<double>(it->second) / ceiling;
}

struct MmSet {
  Buffer<bf16> inp, weight, bias, out, pre, dout, dinp;
  Buffer<float> dweight, dbias;
  MmSet(int N, int C, int OC, bool gelu, bool backward)
      : inp(static_cast<size_t>(N) * C),
        weight(static_cast<size_t>(C) * OC),
        bias(OC),
        out(backward ? 0 : static_cast<size_t>(N) * OC),
        pre(gelu && !backward ? static_cast<size_t>(N) * OC : 0),
        dout(backward ? static_cast<size_t>(N) * OC : 0),
        dinp(backward ? static_cast<size_t>(N) * C : 0),
        dweight(backward ? static_cast<size_t>(C) * OC : 0),
        dbias(backward ? OC : 0) {}
};

// range: C, OC, layout (0 InOut, 1 OutIn), bias, gelu.
void BM_matmul(benchmark::State& state, bool backward) {
  const int N = 8192;
  const int C = static_cast<int>(state.range(0)), OC = static_cast<int>(state.range(1));
  const Layout layout = state.range(2) == 0 ? Layout::InOut : Layout::OutIn;
  const bool bias = state.range(3) != 0, gelu = state.range(4) != 0;
  if (!kd::probe_device().cuda_usable) {
    state.SkipWithError("no usable GPU");
    return;
  }
  ceiling_tflops();  // measured before this benchmark's buffers exist
  const double elems_in = static_cast<double>(N) * C, elems_w = static_cast<double>(C) * OC;
  const double elems_out = static_cast<double>(N) * OC;
  const double bytes = backward
                           ? 2 * elems_out + 2 * elems_in * 3 + 2 * elems_w + 8 * elems_w + 8.0 * OC
                           : 2 * elems_in + 2 * elems_w + 2 * elems_out * (gelu ? 2 : 1) + 2.0 * OC;
  const int sets = kd::bench::rotation_sets(bytes);
  std::vector<std::unique_ptr<MmSet>> data;
  for (int s = 0; s < sets; ++s) {
    data.push_back(std::make_unique<MmSet>(N, C, OC, gelu, backward));
    MmSet& d = *data.back();
    d.inp.fill(-1.0f, 1.0f, 10 + s);
    d.weight.fill(-0.05f, 0.05f, 20 + s);
    d.bias.fill(-0.1f, 0.1f, 30 + s);
    if (backward) {
      d.dout.fill(-1.0f, 1.0f, 40 + s);
      KD_CUDA_CHECK(cudaMemset(d.dinp.get(), 0, d.dinp.size() * sizeof(bf16)));
      KD_CUDA_CHECK(cudaMemset(d.dweight.get(), 0, d.dweight.size() * sizeof(float)));
      KD_CUDA_CHECK(cudaMemset(d.dbias.get(), 0, d.dbias.size() * sizeof(float)));
    }
  }
  KD_CUDA_CHECK(cudaDeviceSynchronize());
  const double flops = (backward ? 4.0 : 2.0) * N * static_cast<double>(C) * OC;
  kd::bench::run_timed(state, bytes, flops, [&](int i) {
    MmSet& d = *data[i % sets];
    if (backward)
      kd::cuda::matmul_backward(d.dinp.get(), d.dweight.get(), bias ? d.dbias.get() : nullptr,
                                d.dout.get(), d.inp.get(), d.weight.get(), N, C, OC, layout,
                                nullptr);
    else
      kd::cuda::matmul_forward(d.out.get(), d.inp.get(), d.weight.get(),
                               bias ? d.bias.get() : nullptr, N, C, OC, layout, gelu,
                               gelu ? d.pre.get() : nullptr, nullptr);
  });
  add_ceiling_counters(state);
}

void BM_matmul_forward(benchmark::State& state) {
  BM_matmul(state, false);
}
void BM_matmul_backward(benchmark::State& state) {
  BM_matmul(state, true);
}

void BM_matmul_ceiling_8192(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) {
    state.SkipWithError("no usable GPU");
    return;
  }
  const int n = 8192;
  ceiling_tflops();
  Buffer<bf16> a(static_cast<size_t>(n) * n), b(static_cast<size_t>(n) * n),
      d(static_cast<size_t>(n) * n);
  a.fill(-1.0f, 1.0f, 3);
  b.fill(-1.0f, 1.0f, 4);
  kd::bench::run_timed(state, 3.0 * 2 * n * static_cast<double>(n),
                       2.0 * n * static_cast<double>(n) * n, [&](int) {
                         kd::cuda::matmul_forward(d.get(), a.get(), b.get(), nullptr, n, n, n,
                                                  Layout::InOut, false, nullptr, nullptr);
                       });
  add_ceiling_counters(state);
}

// C, OC, layout, bias, gelu
void shapes(benchmark::internal::Benchmark* b) {
  b->Args({768, 2304, 0, 1, 0});   // c_attn
  b->Args({768, 3072, 0, 1, 1});   // c_fc + GELU
  b->Args({3072, 768, 0, 1, 0});   // MLP c_proj
  b->Args({768, 50304, 1, 0, 0});  // LM head (tied wte, no bias)
  b->ArgNames({"C", "OC", "outin", "bias", "gelu"});
}

}  // namespace

BENCHMARK(BM_matmul_ceiling_8192)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_matmul_forward)->Apply(shapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_matmul_backward)->Apply(shapes)->UseManualTime()->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
