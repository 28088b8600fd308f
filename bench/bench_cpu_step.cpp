// One whole CPU training step (what the trainer does per optimizer step on the CPU): zero the
// gradients, the frozen teacher's forward (forward_inference), the student's forward, the fused
// loss with dlogits written in place, the student's backward, the global gradient norm and AdamW.
// Without --teacher it is the CE-only (pretraining) step. Inputs are random tokens; models start
// from GPT-2 initialisation (normal(0, 0.02), residual projections scaled by 1/sqrt(2L)).
//
// Reports tokens/s as items_per_second. Shapes come from the command line, before the usual
// Google Benchmark flags:
//   bench_cpu_step --student 2,4,64 --teacher 4,4,128 --vocab 256 --batch 16 --seq 64
//                  [--steps 20] [--warmup 3] [--threads 0] [--benchmark_format=json]
// (L,H,C = layers, heads, width; --teacher none or absent: CE only; --threads 0 = the cores
// available). tools/compare_cpu_torch.py runs it alternately with the same step in PyTorch.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/ops/cpu/ops.h"
#include "engine/ops/cpu/threads.h"
#include "model/gpt2.h"

namespace {

struct Options {
  int s_layer = 2, s_head = 4, s_embd = 64;
  int t_layer = 0, t_head = 0, t_embd = 0;  // 0: no teacher (CE only)
  int vocab = 256, batch = 16, seq = 64, steps = 20, warmup = 3, threads = 0;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "bench_cpu_step: %s\nusage: bench_cpu_step --student L,H,C [--teacher L,H,C|none] "
               "--vocab V --batch B --seq T [--steps S] [--warmup W] [--threads N] "
               "[benchmark flags]\n",
               why.c_str());
  std::exit(2);
}

int to_int(const std::string& flag, const std::string& v, int lo) {
  char* end = nullptr;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo || x > 1000000)
    usage(flag + " expects an integer >= " + std::to_string(lo) + ", got '" + v + "'");
  return static_cast<int>(x);
}

void parse_dims(const std::string& flag, const std::string& v, int& l, int& h, int& c) {
  const size_t a = v.find(','), b = v.rfind(',');
  if (a == std::string::npos || a == b) usage(flag + " expects L,H,C, got '" + v + "'");
  l = to_int(flag, v.substr(0, a), 1);
  h = to_int(flag, v.substr(a + 1, b - a - 1), 1);
  c = to_int(flag, v.substr(b + 1), 1);
  if (c % h != 0) usage(flag + ": width " + std::to_string(c) + " is not a multiple of the heads");
}

// Takes this benchmark's flags out of argv (leaving Google Benchmark's).
Options parse(int& argc, char** argv) {
  Options o;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--student") {
      parse_dims(a, value(), o.s_layer, o.s_head, o.s_embd);
    } else if (a == "--teacher") {
      const std::string v = value();
      if (v == "none") {
        o.t_layer = o.t_head = o.t_embd = 0;
      } else {
        parse_dims(a, v, o.t_layer, o.t_head, o.t_embd);
      }
    } else if (a == "--vocab") {
      o.vocab = to_int(a, value(), 1);
    } else if (a == "--batch") {
      o.batch = to_int(a, value(), 1);
    } else if (a == "--seq") {
      o.seq = to_int(a, value(), 1);
    } else if (a == "--steps") {
      o.steps = to_int(a, value(), 1);
    } else if (a == "--warmup") {
      o.warmup = to_int(a, value(), 0);
    } else if (a == "--threads") {
      o.threads = to_int(a, value(), 0);
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  return o;
}

kd::GPT2Config config(int l, int h, int c, const Options& o) {
  kd::GPT2Config cfg;
  cfg.n_layer = l;
  cfg.n_head = h;
  cfg.n_embd = c;
  cfg.vocab_size = o.vocab;
  cfg.block_size = o.seq;
  return cfg;
}

struct Step {
  Options o;
  std::unique_ptr<kd::GPT2> student, teacher;
  std::vector<float> m, v, tlog;
  std::vector<kd::ParamSpan> spans;
  std::vector<int32_t> inputs, targets;
  kd::LossConfig loss;
  kd::AdamWConfig opt;
  int t = 0;

  explicit Step(const Options& opts) : o(opts) {
    student = std::make_unique<kd::GPT2>(config(o.s_layer, o.s_head, o.s_embd, o));
    student->init_random(1);
    student->enable_training();
    m.assign(student->params.size(), 0.0f);
    v.assign(student->params.size(), 0.0f);
    for (const auto& p : student->table()) spans.push_back({p.offset, p.numel, p.decay});
    if (o.t_layer > 0) {
      teacher = std::make_unique<kd::GPT2>(config(o.t_layer, o.t_head, o.t_embd, o));
      teacher->init_random(2);
      tlog.assign(static_cast<size_t>(o.batch) * o.seq * o.vocab, 0.0f);
      loss = {0.5f, 0.5f, 2.0f, kd::Divergence::ForwardKL, 0.5f, true};
    } else {
      loss = {1.0f, 0.0f, 1.0f, kd::Divergence::ForwardKL, 0.5f, true};
    }
    opt.lr = 1e-4f;
    const size_t N = static_cast<size_t>(o.batch) * o.seq;
    std::mt19937 rng(3);
    inputs.resize(N);
    targets.resize(N);
    for (auto& x : inputs) x = static_cast<int32_t>(rng() % o.vocab);
    for (auto& x : targets) x = static_cast<int32_t>(rng() % o.vocab);
  }

  void run() {
    const int N = o.batch * o.seq;
    student->zero_grad();
    if (teacher) teacher->forward_inference(tlog.data(), inputs.data(), o.batch, o.seq);
    student->forward(inputs.data(), o.batch, o.seq);
    kd::LossSums sums;
    kd::cpu::kd_loss(student->logits(), &sums, student->logits(), teacher ? tlog.data() : nullptr,
                     o.vocab, targets.data(), N, o.vocab, loss, 1.0f / static_cast<float>(N));
    student->backward(student->logits());
    const double norm = kd::cpu::global_norm(student->grads.data(), student->grads.size());
    const float scale = norm > 1.0 ? static_cast<float>(1.0 / norm) : 1.0f;
    kd::cpu::adamw_update(student->params.data(), student->grads.data(), m.data(), v.data(), spans,
                          opt, ++t, scale);
    benchmark::DoNotOptimize(sums.loss);
  }
};

}  // namespace

int main(int argc, char** argv) {
  kd::cpu::ensure_thread_environment(argv);  // the same OpenMP set-up as kdengine
  const Options o = parse(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  const int threads = kd::cpu::set_threads(kd::cpu::resolve_threads(o.threads));
  const std::string name =
      std::string(o.t_layer > 0 ? "kd_step" : "ce_step") + "/threads:" + std::to_string(threads);
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [o](benchmark::State& state) {
    Step step(o);
    for (int i = 0; i < o.warmup; ++i) step.run();
    for (auto _ : state) step.run();
    state.SetItemsProcessed(state.iterations() * int64_t{o.batch} * o.seq);
    state.counters["tokens_per_s"] = benchmark::Counter(
        static_cast<double>(o.batch) * o.seq, benchmark::Counter::kIsIterationInvariantRate);
  });
  b->Iterations(o.steps)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
