// The CPU backend's step and evaluation run the LM heads and the loss through the chunked
// lm_head_kd_loss (the models stop at ln_f). Checked against the unchunked path written out here
// (GPT2::forward's full logits, the teacher's full logits, kd_loss, GPT2::backward), over two
// micro-batches (global normalisation), a teacher with a padded vocabulary and masked targets, at
// chunk sizes 1, 7 (divides no micro-batch of 18 rows), automatic and beyond the micro-batch.
// Tolerance 1e-5 relative: the same fp32 math, summed in another order (dwte per chunk).
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "engine/base/rng.h"
#include "engine/ops/cpu/ops.h"
#include "engine/train/backend.h"
#include "model/gpt2.h"

namespace {

constexpr int B = 2, T = 9, A = 2, V = 41, Vt = 48;

kd::GPT2Config config(int vocab, int C) {
  kd::GPT2Config c;
  c.n_layer = 2;
  c.n_head = 3;
  c.n_embd = C;
  c.vocab_size = vocab;
  c.block_size = 16;
  return c;
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    n += double(b[i]) * b[i];
  }
  return std::sqrt(d / n);
}

struct Fixture {
  kd::GPT2 student{config(V, 24)}, teacher{config(Vt, 36)};
  std::vector<int32_t> tok, tgt;
  kd::LossConfig loss;
  Fixture() {
    student.init_random(21);
    teacher.init_random(22);
    kd::Rng rng(9);
    for (int i = 0; i < A * B * T; ++i) tok.push_back(int32_t(rng.below(V)));
    for (int i = 0; i < A * B * T; ++i) tgt.push_back(i % 5 == 1 ? -1 : int32_t(rng.below(V)));
    loss.ce_weight = 0.4f;
    loss.kd_weight = 0.6f;
    loss.temperature = 2.0f;
    loss.divergence = kd::Divergence::JSD;
    loss.beta = 0.3f;
  }
};

// The unchunked reference: loss and gradients of one step.
std::pair<double, std::vector<float>> unchunked(const Fixture& f) {
  kd::GPT2 s = f.student;
  s.enable_training();
  int rows = 0;
  for (int x : f.tgt) rows += x >= 0;
  kd::LossSums sums;
  const size_t N = size_t(B) * T;
  std::vector<float> tlog(N * Vt);
  for (int a = 0; a < A; ++a) {
    s.forward(f.tok.data() + a * N, B, T);
    f.teacher.forward_inference(tlog.data(), f.tok.data() + a * N, B, T);
    kd::cpu::kd_loss(s.logits(), &sums, s.logits(), tlog.data(), Vt, f.tgt.data() + a * N, B * T, V,
                     f.loss, 1.0f / float(rows));
    s.backward(s.logits());
  }
  return {sums.loss / double(sums.rows), s.grads};
}

TEST(CpuBackendChunked, StepEqualsTheUnchunkedPathAtEveryChunkSize) {
  const Fixture f;
  const auto [ref_loss, ref_grads] = unchunked(f);
  for (int chunk : {1, 7, 0, 1000}) {
    SCOPED_TRACE("loss_chunk = " + std::to_string(chunk));
    kd::GPT2 s = f.student;
    std::ostringstream quiet;
    auto be = kd::make_backend(kd::Device::Cpu, s, &f.teacher, f.loss, kd::AdamWConfig{},
                               {B, T, A, chunk}, quiet);
    const kd::StepResult r = be->step(f.tok.data(), f.tgt.data(), 1e-3f, 0.0f, 1);
    EXPECT_NEAR(r.loss, ref_loss, 1e-5 * std::fabs(ref_loss));
    EXPECT_LT(rel_err(s.grads, ref_grads), 1e-5);
  }
}

TEST(CpuBackendChunked, StepIsDeterministic) {
  const Fixture f;
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    kd::GPT2 s = f.student;
    std::ostringstream quiet;
    auto be = kd::make_backend(kd::Device::Cpu, s, &f.teacher, f.loss, kd::AdamWConfig{},
                               {B, T, A, 5}, quiet);
    be->step(f.tok.data(), f.tgt.data(), 1e-3f, 1.0f, 1);
    be->step(f.tok.data(), f.tgt.data(), 1e-3f, 1.0f, 2);
    if (run == 0)
      first = s.params;
    else
      EXPECT_EQ(s.params, first);  // bitwise
  }
}

TEST(CpuBackendChunked, EvaluationEqualsTheUnchunkedLoss) {
  const Fixture f;
  kd::GPT2 s = f.student;
  const size_t N = size_t(B) * T;
  std::vector<float> slog(N * V), tlog(N * Vt);
  s.forward_inference(slog.data(), f.tok.data(), B, T);
  f.teacher.forward_inference(tlog.data(), f.tok.data(), B, T);
  kd::LossConfig cfg;
  cfg.temperature = 1.5f;
  kd::LossSums ref, ref_teacher;
  kd::cpu::kd_loss(nullptr, &ref, slog.data(), tlog.data(), Vt, f.tgt.data(), B * T, V, cfg, 1.0f);
  kd::cpu::kd_loss(nullptr, &ref_teacher, tlog.data(), nullptr, 0, f.tgt.data(), B * T, Vt,
                   kd::LossConfig{}, 1.0f);
  std::ostringstream quiet;
  auto be = kd::make_backend(kd::Device::Cpu, s, &f.teacher, f.loss, kd::AdamWConfig{},
                             {B, T, A, 4}, quiet);
  const kd::LossSums got = be->eval_student(f.tok.data(), f.tgt.data(), B, T, 1.5f);
  EXPECT_NEAR(got.ce, ref.ce, 1e-5 * ref.ce);
  EXPECT_NEAR(got.kl, ref.kl, 1e-5 * ref.kl);
  EXPECT_EQ(got.rows, ref.rows);
  const kd::LossSums gt = be->eval_teacher(f.tok.data(), f.tgt.data(), B, T);
  EXPECT_NEAR(gt.ce, ref_teacher.ce, 1e-5 * ref_teacher.ce);
}

TEST(CpuBackendChunked, MemoryPlanHoldsOneChunkOfLogits) {
  const kd::GPT2Config s = config(50257, 384), t = config(50257, 768);
  kd::StepShape one{4, 1024, 1, 4096}, auto_{4, 1024, 1, 0};
  const kd::MemoryPlan full = kd::cpu_memory_plan(s, &t, one);
  const kd::MemoryPlan chunked = kd::cpu_memory_plan(s, &t, auto_);
  const size_t logits = size_t(4096) * 2 * 50257 * sizeof(float);
  const size_t dh = 2 * size_t(4096) * 384 * sizeof(float);
  EXPECT_EQ(full.loss_workspace, logits + dh);
  EXPECT_EQ(chunked.loss_workspace, size_t(316) * 2 * 50257 * sizeof(float) + dh);  // 13 chunks
  // The student's activations no longer hold [B,T,V] logits.
  EXPECT_EQ(full.activations,
            kd::GPT2::activation_bytes(s, 4, 1024) - kd::GPT2::logits_bytes(s, 4, 1024));
}

}  // namespace
