// End-to-end training throughput on the GPU: whole optimizer steps of engine/train/cuda_backend.h
// (data upload, teacher forward, student forward, fused KD loss, backward, global norm, AdamW, the
// one host sync).
//
// Configurations (B = 16 sequences of T = 1024 tokens, grad_accum 1, GPT-2's vocabulary of 50257):
//   pretrain_124m         GPT-2 124M (12 layers, 768 dims) on plain CE, no teacher
//   kd_124m_from_350m     GPT-2 124M distilled from a GPT-2 350M teacher (24 layers, 1024 dims)
//   kd_6l384_from_124m    a 6-layer, 384-dim student (head size 64) from a GPT-2 124M teacher
// Everything fits an 80 GB H100 with room to spare (about 9, 13 and 7 GB: see max_micro_batch).
//
// FLOPs (llm.c's count): per trained token 6 N + 6 L C T, where N is EVERY parameter, embeddings
// included (the tied wte is also the LM head's weight, so its product is counted through it), and
// 6 L C T is the attention's score and value products (forward + backward, causal halving
// included). The teacher's forward is counted separately as 2 N_t + 2 L_t C_t T per token.
// Counters: tokens_per_s (trained tokens per second of step time), student_tflops, teacher_tflops,
// total_tflops, mfu (total over the bf16 dense peak measured in this process by a large product
// through the cuBLASLt wrapper: an 8192^3 matmul_forward), mfu_nominal (over 989 TFLOP/s, the
// H100 SXM datasheet's dense bf16), peak_tflops (the measured peak), step_ms.
//
// Results can be written with --benchmark_out=step.json --benchmark_out_format=json; that file is
// what tools/compare_torch.py reads.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/train/cuda_backend.h"
#include "engine/train/device.h"
#include "model/gpt2.h"
#include "model/gpt2_cuda.h"

namespace {

constexpr double kNominalPeak = 989e12;  // H100 SXM dense bf16, FLOP/s

kd::GPT2Config gpt2(int layers, int heads, int dims) {
  kd::GPT2Config c;
  c.n_layer = layers;
  c.n_head = heads;
  c.n_embd = dims;
  c.vocab_size = 50257;
  c.block_size = 1024;
  return c;
}

// Best of 20 products of 8192^3 (bf16 in, fp32 accumulate), in FLOP/s; 0 when it cannot run.
double measured_peak() {
  static const double peak = [] {
    const int n = 8192;
    const size_t bytes = size_t(n) * n * 2;
    void *a = nullptr, *b = nullptr, *c = nullptr;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess ||
        cudaMalloc(&c, bytes) != cudaSuccess) {
      cudaFree(a);
      cudaFree(b);
      return 0.0;
    }
    cudaMemset(a, 0x3c, bytes);  // 0x3c3c as bf16 is about 0.0115: finite, no denormals
    cudaMemset(b, 0x3c, bytes);
    auto* A = static_cast<kd::cuda::bf16*>(a);
    auto* B = static_cast<kd::cuda::bf16*>(b);
    auto* C = static_cast<kd::cuda::bf16*>(c);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    float best = 1e30f;
    for (int rep = 0; rep < 22; ++rep) {
      cudaEventRecord(e0, nullptr);
      kd::cuda::matmul_forward(C, A, B, nullptr, n, n, n, kd::Layout::InOut, false, nullptr,
                               nullptr);
      cudaEventRecord(e1, nullptr);
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      if (rep >= 2 && ms < best) best = ms;  // the first two plan and warm up
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    return 2.0 * n * n * double(n) / (best * 1e-3);
  }();
  return peak;
}

struct Case {
  const char* name;
  kd::GPT2Config student;
  bool has_teacher;
  kd::GPT2Config teacher;
  int B, T;
};

double train_flops_per_token(const kd::GPT2Config& c, int T) {
  return 6.0 * double(c.num_parameters()) + 6.0 * c.n_layer * double(c.n_embd) * T;
}
double forward_flops_per_token(const kd::GPT2Config& c, int T) {
  return 2.0 * double(c.num_parameters()) + 2.0 * c.n_layer * double(c.n_embd) * T;
}

void run_case(benchmark::State& state, const Case& k) {
  if (!kd::probe_device().cuda_usable) {
    state.SkipWithError("no usable GPU");
    return;
  }
  kd::GPT2 student(k.student);
  student.init_random(1);
  std::unique_ptr<kd::GPT2> teacher;
  if (k.has_teacher) {
    teacher = std::make_unique<kd::GPT2>(k.teacher);
    teacher->init_random(2);
  }
  kd::LossConfig loss;
  if (k.has_teacher) {
    loss.ce_weight = 0.5f;
    loss.kd_weight = 0.5f;
    loss.temperature = 2.0f;
  }
  kd::CudaBackend tr(student, teacher.get(), loss, kd::AdamWConfig{}, {k.B, k.T, 1});
  const int64_t max_b = tr.largest_micro_batch();

  const size_t n = size_t(k.B) * k.T;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> tok(0, k.student.vocab_size - 1);
  std::vector<std::vector<int32_t>> in(4, std::vector<int32_t>(n)), tg(4, std::vector<int32_t>(n));
  for (int s = 0; s < 4; ++s)
    for (size_t i = 0; i < n; ++i) {
      in[s][i] = tok(rng);
      tg[s][i] = tok(rng);
    }
  int t = 1;
  for (int w = 0; w < 3; ++w, ++t) tr.step(in[w % 4].data(), tg[w % 4].data(), 1e-4f, 1.0f, t);

  double total = 0;
  int iters = 0;
  bool finite = true;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    const kd::StepResult r = tr.step(in[t % 4].data(), tg[t % 4].data(), 1e-4f, 1.0f, t);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    finite = finite && r.finite;
    ++t;
    state.SetIterationTime(sec);
    total += sec;
    ++iters;
  }
  if (!finite) state.SkipWithError("a step gave a non-finite loss or norm");
  const double per_step = total / std::max(1, iters);
  const double tokens = double(n);
  const double sflops = train_flops_per_token(k.student, k.T) * tokens;
  const double tflops = k.has_teacher ? forward_flops_per_token(k.teacher, k.T) * tokens : 0.0;
  const double peak = measured_peak();
  state.counters["tokens_per_s"] = tokens / per_step;
  state.counters["step_ms"] = per_step * 1e3;
  state.counters["student_tflops"] = sflops / per_step * 1e-12;
  state.counters["teacher_tflops"] = tflops / per_step * 1e-12;
  state.counters["total_tflops"] = (sflops + tflops) / per_step * 1e-12;
  state.counters["peak_tflops"] = peak * 1e-12;
  state.counters["mfu"] = peak > 0 ? (sflops + tflops) / per_step / peak : 0.0;
  state.counters["mfu_nominal"] = (sflops + tflops) / per_step / kNominalPeak;
  state.counters["max_micro_batch"] = double(max_b);
  state.counters["device_GiB"] = double(tr.device_bytes()) / (1024.0 * 1024.0 * 1024.0);
  state.counters["B"] = k.B;
  state.counters["T"] = k.T;
  state.SetLabel(std::string(k.has_teacher ? "kd" : "pretrain"));
}

const Case kCases[] = {
    {"pretrain_124m", gpt2(12, 12, 768), false, {}, 16, 1024},
    {"kd_124m_from_350m", gpt2(12, 12, 768), true, gpt2(24, 16, 1024), 16, 1024},
    {"kd_6l384_from_124m", gpt2(6, 6, 384), true, gpt2(12, 12, 768), 16, 1024},
};

const bool kRegistered = [] {
  for (const Case& c : kCases)
    benchmark::RegisterBenchmark((std::string("BM_Step/") + c.name).c_str(),
                                 [&c](benchmark::State& s) { run_case(s, c); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond)
        ->Iterations(20);
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
