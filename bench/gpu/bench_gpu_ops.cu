// GPU benchmarks of the non-matmul ops at GPT-2 124M shapes (B*T = 8192, C = 768, V = 50257),
// AdamW on 124M parameters (the KD loss is in bench_lm_head_kd_loss.cu), and the ceiling they are
// measured against: a 1 GiB device-to-device copy, timed in the same process. Inputs rotate over
// enough sets (> 256 MiB together) that L2 does not hold them between calls. Every benchmark
// reports GBps (bytes it must move per call / time), TFLOPps and frac_copy (GBps over the copy's).
#include <benchmark/benchmark.h>

#include <memory>
#include <vector>

#include "bench/gpu/bench_util.h"
#include "cuda/adamw.cuh"
#include "cuda/encoder.cuh"
#include "cuda/gelu.cuh"
#include "cuda/layernorm.cuh"
#include "cuda/residual.cuh"

namespace {

using kd::bench::Buffer;
using kd::bench::rotation_sets;
using kd::bench::run_timed;
using kd::cuda::bf16;

constexpr int kN = 8192;  // B*T
constexpr int kT = 1024;
constexpr int kC = 768;
constexpr int kV = 50257;

template <typename T>
std::vector<std::unique_ptr<Buffer<T>>> make_sets(int sets, size_t n, float lo, float hi,
                                                  uint32_t seed) {
  std::vector<std::unique_ptr<Buffer<T>>> v;
  for (int i = 0; i < sets; ++i) {
    v.push_back(std::make_unique<Buffer<T>>(n));
    v.back()->fill(lo, hi, seed + i);
  }
  return v;
}

void BM_copy_1GiB(benchmark::State& state) {
  const size_t bytes = size_t{1} << 30;
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  Buffer<char> a(bytes), b(bytes);
  run_timed(state, 2.0 * bytes, 0.0, [&](int) {
    KD_CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice));
  });
}

void BM_encoder_forward(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  const size_t nc = size_t{kN} * kC;
  const int sets = rotation_sets(3.0 * nc * 2);
  Buffer<bf16> wte(size_t{kV} * kC), wpe(size_t{kT} * kC);
  wte.fill(-1, 1, 1);
  wpe.fill(-1, 1, 2);
  auto out = make_sets<bf16>(sets, nc, 0, 0, 3);
  Buffer<int32_t> tokens(kN);
  std::vector<int32_t> h(kN);
  for (int i = 0; i < kN; ++i) h[i] = static_cast<int32_t>((i * 7919u) % kV);
  KD_CUDA_CHECK(cudaMemcpy(tokens.get(), h.data(), kN * sizeof(int32_t), cudaMemcpyHostToDevice));
  run_timed(state, 3.0 * nc * 2, nc, [&](int i) {
    kd::cuda::encoder_forward(out[i % sets]->get(), tokens.get(), wte.get(), wpe.get(), kN / kT, kT,
                              kC, 0);
  });
}

void BM_encoder_backward(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  const size_t nc = size_t{kN} * kC;
  const int sets = rotation_sets(nc * 2.0);
  Buffer<float> dwte(size_t{kV} * kC), dwpe(size_t{kT} * kC);
  dwte.fill(0, 0, 0);
  dwpe.fill(0, 0, 0);
  auto dout = make_sets<bf16>(sets, nc, -1, 1, 5);
  Buffer<int32_t> tokens(kN);
  std::vector<int32_t> h(kN);
  for (int i = 0; i < kN; ++i) h[i] = static_cast<int32_t>((i * 7919u) % 5000);  // repeats
  KD_CUDA_CHECK(cudaMemcpy(tokens.get(), h.data(), kN * sizeof(int32_t), cudaMemcpyHostToDevice));
  // dout read twice (2 x 2 bytes), touched dwte rows and dwpe read + written (fp32).
  const double bytes = nc * 4.0 + 5000.0 * kC * 8 + double(kT) * kC * 8;
  run_timed(state, bytes, 2.0 * nc, [&](int i) {
    kd::cuda::encoder_backward(dwte.get(), dwpe.get(), dout[i % sets]->get(), tokens.get(), kN / kT,
                               kT, kC, 0);
  });
}

void BM_layernorm_forward(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  const size_t nc = size_t{kN} * kC;
  const int sets = rotation_sets(nc * 4.0);
  auto x = make_sets<bf16>(sets, nc, -2, 2, 7);
  auto out = make_sets<bf16>(sets, nc, 0, 0, 8);
  Buffer<bf16> w(kC), b(kC);
  w.fill(0.5f, 1.5f, 9);
  b.fill(-0.5f, 0.5f, 10);
  Buffer<float> mean(kN), rstd(kN);
  run_timed(state, nc * 4.0 + kN * 8.0, nc * 8.0, [&](int i) {
    kd::cuda::layernorm_forward(out[i % sets]->get(), mean.get(), rstd.get(), x[i % sets]->get(),
                                w.get(), b.get(), kN, kC, 0);
  });
}

void BM_fused_residual_layernorm(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  const size_t nc = size_t{kN} * kC;
  const int sets = rotation_sets(nc * 8.0);
  auto a = make_sets<bf16>(sets, nc, -2, 2, 11);
  auto bb = make_sets<bf16>(sets, nc, -2, 2, 12);
  auto resid = make_sets<bf16>(sets, nc, 0, 0, 13);
  auto out = make_sets<bf16>(sets, nc, 0, 0, 14);
  Buffer<bf16> w(kC), b(kC);
  w.fill(0.5f, 1.5f, 9);
  b.fill(-0.5f, 0.5f, 10);
  Buffer<float> mean(kN), rstd(kN);
  run_timed(state, nc * 8.0 + kN * 8.0, nc * 9.0, [&](int i) {
    const int k = i % sets;
    kd::cuda::fused_residual_layernorm_forward(resid[k]->get(), out[k]->get(), mean.get(),
                                               rstd.get(), a[k]->get(), bb[k]->get(), w.get(),
                                               b.get(), kN, kC, 0);
  });
}

void BM_layernorm_backward(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  const size_t nc = size_t{kN} * kC;
  const int sets = rotation_sets(nc * 6.0);
  auto x = make_sets<bf16>(sets, nc, -2, 2, 15);
  auto dout = make_sets<bf16>(sets, nc, -1, 1, 16);
  auto dinp = make_sets<bf16>(sets, nc, -1, 1, 17);
  Buffer<bf16> w(kC);
  w.fill(0.5f, 1.5f, 9);
  Buffer<float> mean(kN), rstd(kN), dw(kC), db(kC);
  mean.fill(-0.1f, 0.1f, 18);
  rstd.fill(0.9f, 1.1f, 19);
  dw.fill(0, 0, 0);
  db.fill(0, 0, 0);
  run_timed(state, nc * 8.0 + kN * 8.0, nc * 14.0, [&](int i) {
    const int k = i % sets;
    kd::cuda::layernorm_backward(dinp[k]->get(), dw.get(), db.get(), dout[k]->get(), x[k]->get(),
                                 w.get(), mean.get(), rstd.get(), kN, kC, 0);
  });
}

void BM_gelu_forward(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  const size_t n = size_t{kN} * 4 * kC;  // the MLP's hidden activations
  const int sets = rotation_sets(n * 4.0);
  auto x = make_sets<bf16>(sets, n, -4, 4, 20);
  auto y = make_sets<bf16>(sets, n, 0, 0, 21);
  run_timed(state, n * 4.0, n * 10.0,
            [&](int i) { kd::cuda::gelu_forward(y[i % sets]->get(), x[i % sets]->get(), n, 0); });
}

void BM_gelu_backward(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  const size_t n = size_t{kN} * 4 * kC;
  const int sets = rotation_sets(n * 6.0);
  auto x = make_sets<bf16>(sets, n, -4, 4, 22);
  auto g = make_sets<bf16>(sets, n, -1, 1, 23);
  auto d = make_sets<bf16>(sets, n, -1, 1, 24);
  run_timed(state, n * 8.0, n * 20.0, [&](int i) {
    const int k = i % sets;
    kd::cuda::gelu_backward(d[k]->get(), x[k]->get(), g[k]->get(), n, 0);
  });
}

void BM_residual_forward(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  const size_t n = size_t{kN} * kC;
  const int sets = rotation_sets(n * 6.0);
  auto a = make_sets<bf16>(sets, n, -1, 1, 25);
  auto b = make_sets<bf16>(sets, n, -1, 1, 26);
  auto o = make_sets<bf16>(sets, n, 0, 0, 27);
  run_timed(state, n * 6.0, n * 1.0, [&](int i) {
    const int k = i % sets;
    kd::cuda::residual_forward(o[k]->get(), a[k]->get(), b[k]->get(), n, 0);
  });
}

void BM_residual_backward(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  const size_t n = size_t{kN} * kC;
  const int sets = rotation_sets(n * 6.0);
  auto g = make_sets<bf16>(sets, n, -1, 1, 28);
  auto da = make_sets<bf16>(sets, n, -1, 1, 29);
  auto db = make_sets<bf16>(sets, n, -1, 1, 30);
  run_timed(state, n * 10.0, n * 2.0, [&](int i) {
    const int k = i % sets;
    kd::cuda::residual_backward(da[k]->get(), db[k]->get(), g[k]->get(), n, 0);
  });
}

constexpr size_t kParams = 124439808;  // GPT-2 124M

void BM_adamw_124M(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  Buffer<bf16> params(kParams);
  Buffer<float> master(kParams), grads(kParams), m(kParams), v(kParams), scale(1);
  master.fill(-1, 1, 40);
  grads.fill(-1e-2f, 1e-2f, 41);
  m.fill(-1e-3f, 1e-3f, 42);
  v.fill(0, 1e-4f, 43);
  scale.fill(1, 1, 0);
  // 12 layers x 12 tensors + embeddings + final LayerNorm: ~150 spans, alternating decay.
  std::vector<kd::ParamSpan> spans;
  size_t off = 0;
  const size_t layer_sizes[] = {768, 768, 768 * 2304, 2304, 768 * 768,  768,
                                768, 768, 768 * 3072, 3072, 3072 * 768, 768};
  spans.push_back({off, 50257 * 768, true});
  off += 50257 * 768;
  spans.push_back({off, 1024 * 768, true});
  off += 1024 * 768;
  for (int l = 0; l < 12; ++l)
    for (size_t s : layer_sizes) {
      spans.push_back({off, s, s > 4096});
      off += s;
    }
  spans.push_back({off, 768, false});
  off += 768;
  spans.push_back({off, kParams - off, false});
  Buffer<kd::ParamSpan> d_spans(spans.size());
  KD_CUDA_CHECK(cudaMemcpy(d_spans.get(), spans.data(), spans.size() * sizeof(spans[0]),
                           cudaMemcpyHostToDevice));
  kd::AdamWConfig cfg;
  const bool sr = state.range(0) != 0;
  run_timed(state, kParams * 30.0, kParams * 15.0, [&](int i) {
    kd::cuda::adamw_update(params.get(), master.get(), grads.get(), m.get(), v.get(), d_spans.get(),
                           static_cast<int>(spans.size()), kParams, cfg, i + 1, 1.0f, scale.get(),
                           {sr, 7}, 0);
  });
  state.SetLabel(sr ? "stochastic rounding" : "round to nearest");
}

void BM_global_norm_124M(benchmark::State& state) {
  if (!kd::probe_device().cuda_usable) return state.SkipWithError("no usable GPU");
  Buffer<float> grads(kParams), norm(1), scale(1);
  grads.fill(-1e-2f, 1e-2f, 44);
  run_timed(state, kParams * 4.0, kParams * 2.0, [&](int) {
    kd::cuda::global_norm(norm.get(), scale.get(), grads.get(), kParams, 1.0f, 0);
  });
}

BENCHMARK(BM_copy_1GiB)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_encoder_forward)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_encoder_backward)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_layernorm_forward)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_fused_residual_layernorm)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_layernorm_backward)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gelu_forward)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gelu_backward)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_residual_forward)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_residual_backward)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_adamw_124M)->Arg(0)->Arg(1)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_global_norm_124M)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
