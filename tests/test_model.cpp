// The GPT-2 model as a whole: the parameter table, inference vs training forward, an end-to-end
// finite-difference check through every layer, and gradient-accumulation invariance of CE and KD
// (the loss is normalised by the supervised tokens of the whole optimizer step).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/base/rng.h"
#include "engine/ops/cpu/ops.h"
#include "model/gpt2.h"

namespace {

kd::GPT2Config tiny(int vocab = 53) {
  kd::GPT2Config c;
  c.n_layer = 2;
  c.n_head = 3;
  c.n_embd = 24;
  c.vocab_size = vocab;
  c.block_size = 16;
  return c;
}

std::vector<int32_t> random_tokens(kd::Rng& rng, size_t n, int vocab) {
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  return t;
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

TEST(Model, ParameterTableUsesHFNamesAndCountsGPT2Small) {
  kd::GPT2Config c;
  c.n_layer = 12;
  c.n_head = 12;
  c.n_embd = 768;
  c.vocab_size = 50257;
  c.block_size = 1024;
  // GPT-2 small has 124,439,808 parameters with the tied LM head counted once.
  EXPECT_EQ(c.num_parameters(), 124439808u);
  const auto t = kd::gpt2_param_table(c);
  EXPECT_EQ(t.front().name, "wte.weight");
  EXPECT_EQ(t[4].name, "h.0.attn.c_attn.weight");
  EXPECT_EQ(t[4].shape, (std::vector<int64_t>{768, 2304}));
  EXPECT_TRUE(t[4].decay);
  EXPECT_FALSE(t[5].decay);  // c_attn.bias
  EXPECT_EQ(t.back().name, "ln_f.bias");
  for (size_t i = 1; i < t.size(); ++i) EXPECT_EQ(t[i].offset, t[i - 1].offset + t[i - 1].numel);
}

TEST(Model, InferenceForwardEqualsTrainingForward) {
  kd::GPT2 m(tiny());
  m.init_random(7);
  kd::Rng rng(1);
  const int B = 3, T = 11;
  auto tok = random_tokens(rng, B * T, m.config().vocab_size);
  m.forward(tok.data(), B, T);
  std::vector<float> a(m.logits(), m.logits() + size_t(B) * T * m.config().vocab_size);
  std::vector<float> b(a.size(), std::nanf(""));
  m.forward_inference(b.data(), tok.data(), B, T);
  EXPECT_EQ(a, b);  // same ops in the same order: bitwise equal
}

TEST(Model, InitialisationFollowsGPT2) {
  kd::GPT2Config c = tiny();
  c.n_layer = 4;
  c.n_embd = 96;
  kd::GPT2 m(c);
  m.init_random(3);
  auto stdev = [&](const std::string& name) {
    const auto& p = m.info(name);
    double s = 0;
    for (size_t i = 0; i < p.numel; ++i)
      s += double(m.params[p.offset + i]) * m.params[p.offset + i];
    return std::sqrt(s / double(p.numel));
  };
  EXPECT_NEAR(stdev("h.0.mlp.c_fc.weight"), 0.02, 0.001);
  EXPECT_NEAR(stdev("h.1.attn.c_proj.weight"), 0.02 / std::sqrt(8.0), 0.0005);
  EXPECT_EQ(m.param("h.0.ln_1.weight")[5], 1.0f);
  EXPECT_EQ(m.param("h.0.ln_1.bias")[5], 0.0f);
}

// Loss of the model on a batch (CE, mean over supervised targets), in double from float logits.
double model_loss(kd::GPT2& m, const std::vector<int32_t>& tok, const std::vector<int32_t>& tgt,
                  int B, int T) {
  m.forward(tok.data(), B, T);
  kd::LossSums s;
  kd::LossConfig cfg;
  kd::cpu::kd_loss(nullptr, &s, m.logits(), nullptr, 0, tgt.data(), B * T, m.config().vocab_size,
                   cfg, 1.0f);
  return s.loss / double(s.rows);
}

TEST(Model, EndToEndGradientMatchesFiniteDifferences) {
  kd::GPT2 m(tiny(29));
  m.init_random(11);
  // Weights 3x GPT-2's init so that every layer matters to the loss.
  for (auto& p : m.params) p *= 3.0f;
  m.enable_training();
  kd::Rng rng(5);
  const int B = 2, T = 7, V = m.config().vocab_size;
  auto tok = random_tokens(rng, B * T, V);
  auto tgt = random_tokens(rng, B * T, V);
  tgt[3] = -1;  // a masked position
  m.forward(tok.data(), B, T);
  kd::LossSums s;
  kd::LossConfig cfg;
  std::vector<float> dlogits(size_t(B) * T * V);
  kd::cpu::kd_loss(dlogits.data(), &s, m.logits(), nullptr, 0, tgt.data(), B * T, V, cfg,
                   1.0f / float(B * T - 1));
  m.zero_grad();
  m.backward(dlogits.data());
  // Central differences on a sample of parameters from every tensor. fp32 forward with h = 1e-2
  // relative: the difference quotient is good to ~1e-3 relative for gradients that are not tiny.
  int checked = 0;
  for (const auto& p : m.table()) {
    for (int k = 0; k < 3; ++k) {
      const size_t i = p.offset + rng.below(p.numel);
      const float orig = m.params[i];
      const float h = 1e-3f * std::max(1.0f, std::fabs(orig));
      m.params[i] = orig + h;
      const double lp = model_loss(m, tok, tgt, B, T);
      m.params[i] = orig - h;
      const double lm = model_loss(m, tok, tgt, B, T);
      m.params[i] = orig;
      const double fd = (lp - lm) / (2.0 * h);
      const double an = m.grads[i];
      EXPECT_NEAR(an, fd, 2e-3 * std::max(1.0, std::fabs(fd)) + 2e-4)
          << p.name << " element " << (i - p.offset);
      ++checked;
    }
  }
  EXPECT_EQ(checked, int(m.table().size()) * 3);
}

// One batch of 8 rows gives the same gradients as 4 micro-batches of 2 when the loss is normalised
// by the supervised tokens of the whole step.
void check_accumulation(bool with_teacher) {
  const int V = 41, T = 9;
  kd::GPT2 student(tiny(V));
  student.init_random(21);
  student.enable_training();
  kd::GPT2Config tc = tiny(V);
  tc.n_embd = 36;
  kd::GPT2 teacher(tc);
  teacher.init_random(22);
  kd::Rng rng(9);
  auto tok = random_tokens(rng, 8 * T, V);
  auto tgt = random_tokens(rng, 8 * T, V);
  for (int i = 0; i < 8 * T; i += 5) tgt[i] = -1;  // masks spread unevenly over micro-batches
  int rows = 0;
  for (int x : tgt) rows += x >= 0;
  kd::LossConfig cfg;
  cfg.ce_weight = with_teacher ? 0.3f : 1.0f;
  cfg.kd_weight = with_teacher ? 0.7f : 0.0f;
  cfg.temperature = 2.0f;

  auto run = [&](int micro) {
    student.zero_grad();
    double loss = 0;
    for (int b0 = 0; b0 < 8; b0 += micro) {
      const size_t off = size_t(b0) * T, n = size_t(micro) * T;
      student.forward(tok.data() + off, micro, T);
      std::vector<float> tlog(n * V);
      if (with_teacher) teacher.forward_inference(tlog.data(), tok.data() + off, micro, T);
      kd::LossSums s;
      kd::cpu::kd_loss(student.logits(), &s, student.logits(), with_teacher ? tlog.data() : nullptr,
                       V, tgt.data() + off, micro * T, V, cfg, 1.0f / float(rows));
      loss += s.loss;
      student.backward(student.logits());
    }
    return std::make_pair(loss / rows, student.grads);
  };
  auto [loss8, g8] = run(8);
  auto [loss2, g2] = run(2);
  EXPECT_NEAR(loss8, loss2, 1e-6 * std::fabs(loss8));
  EXPECT_LT(rel_err(g2, g8), 1e-5);
  // The bug this guards against: normalising each micro-batch by its own token count.
  double norm = 0;
  for (float g : g8) norm += double(g) * g;
  EXPECT_GT(norm, 0.0);
}

TEST(Model, GradientAccumulationInvarianceCE) {
  check_accumulation(false);
}
TEST(Model, GradientAccumulationInvarianceKD) {
  check_accumulation(true);
}

}  // namespace
