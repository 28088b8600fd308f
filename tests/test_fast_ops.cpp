// The fast CPU ops (engine/ops/cpu/*.cpp, what the model calls) against their plainly written
// references (engine/ops/cpu/reference/), on random inputs of several shapes, odd sizes included,
// and with enough work that the fast ops split it across threads. Backward ops start from random
// gradients, so the "backward adds" contract is checked too. Then determinism: the same inputs and
// thread count give the same bits, for each op and for a whole training step of a small model.
//
// Tolerances are norm-wise relative errors. The fast ops reorder sums (SIMD lanes, BLAS blocking,
// per-tile matrix products) and use a polynomial exp (2 ulp), so they differ from the references
// in the last bits: ~1e-7..1e-6 measured. A wrong index, scale, mask or missing term gives errors
// of order 1e-2 or more.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engine/ops/cpu/ops.h"
#include "engine/ops/cpu/reference/ops_ref.h"
#include "engine/ops/cpu/threads.h"
#include "engine/ops/cpu/vmath.h"
#include "model/gpt2.h"
#include "tests/grad_check.h"

namespace {

namespace cpu = kd::cpu;
namespace ref = kd::cpu::ref;
using kd::test::random_floats;
using kd::test::rel_err;
using kd::test::to_double;

constexpr double kTol = 1e-5;

double err(const std::vector<float>& fast, const std::vector<float>& reference) {
  return rel_err(fast, to_double(reference));
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs f with n OpenMP threads, then restores the previous count.
template <class F>
void with_threads(int n, F&& f) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(n);
  f();
  omp_set_num_threads(saved);
}

struct Shape {
  int B, T, C, NH, V;
};

// Odd sizes (1, 7, 13, 33 tokens; heads of 4, 5 and 6 channels; vocabularies that are not
// multiples of a SIMD width) and one with enough work to run on several threads.
const Shape kShapes[] = {
    {1, 1, 8, 2, 5},      {2, 7, 12, 3, 37},   {3, 13, 30, 5, 257},
    {2, 33, 40, 4, 1001}, {4, 64, 64, 4, 256},
};

class FastOps : public ::testing::TestWithParam<Shape> {};

TEST_P(FastOps, EncoderMatchesReference) {
  const Shape s = GetParam();
  std::mt19937 rng(1);
  std::vector<int32_t> tokens(static_cast<size_t>(s.B) * s.T);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % s.V);
  auto wte = random_floats(static_cast<size_t>(s.V) * s.C, rng);
  auto wpe = random_floats(static_cast<size_t>(s.T) * s.C, rng);
  std::vector<float> out(tokens.size() * s.C), out_ref(out.size());
  cpu::encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), s.B, s.T, s.C);
  ref::encoder_forward(out_ref.data(), tokens.data(), wte.data(), wpe.data(), s.B, s.T, s.C);
  EXPECT_LT(err(out, out_ref), kTol);
  auto dout = random_floats(out.size(), rng);
  auto dwte = random_floats(wte.size(), rng), dwpe = random_floats(wpe.size(), rng);
  auto dwte_ref = dwte, dwpe_ref = dwpe;
  cpu::encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), s.B, s.T, s.C);
  ref::encoder_backward(dwte_ref.data(), dwpe_ref.data(), dout.data(), tokens.data(), s.B, s.T,
                        s.C);
  EXPECT_LT(err(dwte, dwte_ref), kTol);
  EXPECT_LT(err(dwpe, dwpe_ref), kTol);
}

TEST_P(FastOps, LayerNormMatchesReference) {
  const Shape s = GetParam();
  const int N = s.B * s.T, C = s.C;
  std::mt19937 rng(2);
  auto x = random_floats(static_cast<size_t>(N) * C, rng, -2.0f, 3.0f);
  auto w = random_floats(C, rng), b = random_floats(C, rng);
  std::vector<float> out(x.size()), mean(N), rstd(N), out_ref(x.size()), mean_ref(N), rstd_ref(N);
  cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  ref::layernorm_forward(out_ref.data(), mean_ref.data(), rstd_ref.data(), x.data(), w.data(),
                         b.data(), N, C);
  EXPECT_LT(err(out, out_ref), kTol);
  EXPECT_LT(err(mean, mean_ref), kTol);
  EXPECT_LT(err(rstd, rstd_ref), kTol);
  auto dout = random_floats(x.size(), rng);
  auto dx = random_floats(x.size(), rng), dw = random_floats(C, rng), db = random_floats(C, rng);
  auto dx_ref = dx, dw_ref = dw, db_ref = db;
  cpu::layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                          mean.data(), rstd.data(), N, C);
  ref::layernorm_backward(dx_ref.data(), dw_ref.data(), db_ref.data(), dout.data(), x.data(),
                          w.data(), mean.data(), rstd.data(), N, C);
  EXPECT_LT(err(dx, dx_ref), kTol);
  EXPECT_LT(err(dw, dw_ref), kTol);
  EXPECT_LT(err(db, db_ref), kTol);
}

TEST_P(FastOps, MatmulMatchesReferenceInBothLayouts) {
  const Shape s = GetParam();
  const int N = s.B * s.T;
  std::mt19937 rng(3);
  // The attention projection (C -> 3C), the MLP (C -> 4C -> C) and the LM head (C -> V, OutIn).
  struct Case {
    int C, OC;
    kd::Layout layout;
    bool bias;
  };
  const Case cases[] = {{s.C, 3 * s.C, kd::Layout::InOut, true},
                        {4 * s.C, s.C, kd::Layout::InOut, true},
                        {s.C, s.V, kd::Layout::OutIn, false}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "C=" << c.C << " OC=" << c.OC);
    auto inp = random_floats(static_cast<size_t>(N) * c.C, rng);
    auto w = random_floats(static_cast<size_t>(c.C) * c.OC, rng);
    auto bias = random_floats(c.OC, rng);
    const float* bp = c.bias ? bias.data() : nullptr;
    std::vector<float> out(static_cast<size_t>(N) * c.OC, std::nanf("")), out_ref(out.size());
    cpu::matmul_forward(out.data(), inp.data(), w.data(), bp, N, c.C, c.OC, c.layout);
    ref::matmul_forward(out_ref.data(), inp.data(), w.data(), bp, N, c.C, c.OC, c.layout);
    EXPECT_LT(err(out, out_ref), kTol);
    auto dout = random_floats(out.size(), rng);
    auto dinp = random_floats(inp.size(), rng), dw = random_floats(w.size(), rng),
         db = random_floats(c.OC, rng);
    auto dinp_ref = dinp, dw_ref = dw, db_ref = db;
    cpu::matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), N,
                         c.C, c.OC, c.layout);
    ref::matmul_backward(dinp_ref.data(), dw_ref.data(), db_ref.data(), dout.data(), inp.data(),
                         w.data(), N, c.C, c.OC, c.layout);
    EXPECT_LT(err(dinp, dinp_ref), kTol);
    EXPECT_LT(err(dw, dw_ref), kTol);
    EXPECT_LT(err(db, db_ref), kTol);
  }
}

TEST_P(FastOps, AttentionMatchesReference) {
  const Shape s = GetParam();
  std::mt19937 rng(4);
  auto qkv = random_floats(static_cast<size_t>(s.B) * s.T * 3 * s.C, rng, -2.0f, 2.0f);
  const size_t NC = static_cast<size_t>(s.B) * s.T * s.C;
  std::vector<float> out(NC), lse(static_cast<size_t>(s.B) * s.NH * s.T);
  std::vector<float> out_ref(NC), lse_ref(lse.size());
  cpu::attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  ref::attention_forward(out_ref.data(), lse_ref.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  EXPECT_LT(err(out, out_ref), kTol);
  EXPECT_LT(err(lse, lse_ref), kTol);
  auto dout = random_floats(NC, rng);
  auto dqkv = random_floats(qkv.size(), rng);
  auto dqkv_ref = dqkv;
  cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                          s.C, s.NH);
  ref::attention_backward(dqkv_ref.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B,
                          s.T, s.C, s.NH);
  EXPECT_LT(err(dqkv, dqkv_ref), kTol);
}

TEST_P(FastOps, GeluAndResidualMatchReference) {
  const Shape s = GetParam();
  const size_t n = static_cast<size_t>(s.B) * s.T * 4 * s.C;
  std::mt19937 rng(5);
  // Include large |x|, where tanh saturates and exp(2u) is huge.
  auto x = random_floats(n, rng, -12.0f, 12.0f);
  std::vector<float> out(n), out_ref(n);
  cpu::gelu_forward(out.data(), x.data(), n);
  ref::gelu_forward(out_ref.data(), x.data(), n);
  EXPECT_LT(err(out, out_ref), kTol);
  auto dout = random_floats(n, rng);
  auto dx = random_floats(n, rng);
  auto dx_ref = dx;
  cpu::gelu_backward(dx.data(), x.data(), dout.data(), n);
  ref::gelu_backward(dx_ref.data(), x.data(), dout.data(), n);
  EXPECT_LT(err(dx, dx_ref), kTol);

  auto a = random_floats(n, rng), b = random_floats(n, rng);
  cpu::residual_forward(out.data(), a.data(), b.data(), n);
  ref::residual_forward(out_ref.data(), a.data(), b.data(), n);
  EXPECT_TRUE(same_bits(out, out_ref));  // one rounding per element either way
  auto da = random_floats(n, rng), db = random_floats(n, rng);
  auto da_ref = da, db_ref = db;
  cpu::residual_backward(da.data(), db.data(), dout.data(), n);
  ref::residual_backward(da_ref.data(), db_ref.data(), dout.data(), n);
  EXPECT_TRUE(same_bits(da, da_ref));
  EXPECT_TRUE(same_bits(db, db_ref));
}

TEST_P(FastOps, KdLossMatchesReference) {
  const Shape s = GetParam();
  const int N = s.B * s.T, V = s.V, Vt = V + 3;  // a padded teacher row
  std::mt19937 rng(6);
  auto logits = random_floats(static_cast<size_t>(N) * V, rng, -4.0f, 4.0f);
  auto teacher = random_floats(static_cast<size_t>(N) * Vt, rng, -4.0f, 4.0f);
  std::vector<int32_t> targets(N);
  for (int n = 0; n < N; ++n) targets[n] = n % 5 == 3 ? -1 : static_cast<int32_t>(rng() % V);
  struct Case {
    const char* name;
    kd::LossConfig cfg;
    bool teacher;
  };
  kd::LossConfig fkl1{0.5f, 0.5f, 1.0f, kd::Divergence::ForwardKL, 0.5f, true};
  kd::LossConfig fkl2{0.3f, 0.7f, 2.0f, kd::Divergence::ForwardKL, 0.5f, true};
  kd::LossConfig ce{1.0f, 0.0f, 1.0f, kd::Divergence::ForwardKL, 0.5f, true};
  kd::LossConfig rkl{0.5f, 0.5f, 1.5f, kd::Divergence::ReverseKL, 0.5f, true};
  const Case cases[] = {{"forward_kl T=1", fkl1, true},
                        {"forward_kl T=2", fkl2, true},
                        {"ce", ce, false},
                        {"ce T=2 (temperature only in the entropy)", fkl2, false},
                        {"reverse_kl (general path)", rkl, true}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const float* t = c.teacher ? teacher.data() : nullptr;
    std::vector<float> d(logits.size()), d_ref(logits.size());
    kd::LossSums sums, sums_ref;
    cpu::kd_loss(d.data(), &sums, logits.data(), t, Vt, targets.data(), N, V, c.cfg, 1.0f / N);
    ref::kd_loss(d_ref.data(), &sums_ref, logits.data(), t, Vt, targets.data(), N, V, c.cfg,
                 1.0f / N);
    EXPECT_LT(err(d, d_ref), kTol);
    EXPECT_EQ(sums.rows, sums_ref.rows);
    EXPECT_NEAR(sums.loss, sums_ref.loss, kTol * std::abs(sums_ref.loss) + 1e-6);
    EXPECT_NEAR(sums.ce, sums_ref.ce, kTol * std::abs(sums_ref.ce) + 1e-6);
    EXPECT_NEAR(sums.kd, sums_ref.kd, kTol * std::abs(sums_ref.kd) + 1e-6);
    EXPECT_NEAR(sums.kl, sums_ref.kl, kTol * std::abs(sums_ref.kl) + 1e-6);
    EXPECT_NEAR(sums.teacher_entropy, sums_ref.teacher_entropy,
                kTol * std::abs(sums_ref.teacher_entropy) + 1e-6);
    EXPECT_NEAR(sums.student_entropy, sums_ref.student_entropy,
                kTol * std::abs(sums_ref.student_entropy) + 1e-6);
    // In place (dlogits over the logits) gives the same bits as out of place.
    auto inplace = logits;
    kd::LossSums sums_in;
    cpu::kd_loss(inplace.data(), &sums_in, inplace.data(), t, Vt, targets.data(), N, V, c.cfg,
                 1.0f / N);
    EXPECT_TRUE(same_bits(inplace, d));
    EXPECT_EQ(sums_in.loss, sums.loss);
  }
}

TEST_P(FastOps, AdamWAndNormMatchReference) {
  const Shape s = GetParam();
  const size_t n = static_cast<size_t>(s.V) * s.C + 3 * s.C;
  std::mt19937 rng(7);
  auto p = random_floats(n, rng), g = random_floats(n, rng);
  auto m = random_floats(n, rng, -0.1f, 0.1f), v = random_floats(n, rng, 0.0f, 0.01f);
  auto p_ref = p, m_ref = m, v_ref = v;
  const std::vector<kd::ParamSpan> spans = {{0, static_cast<size_t>(s.V) * s.C, true},
                                            {static_cast<size_t>(s.V) * s.C, 3u * s.C, false}};
  kd::AdamWConfig cfg;
  cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), spans, cfg, 3, 0.7f);
  ref::adamw_update(p_ref.data(), g.data(), m_ref.data(), v_ref.data(), spans, cfg, 3, 0.7f);
  // The update is elementwise with the same operations in the same order: the same bits.
  EXPECT_TRUE(same_bits(p, p_ref));
  EXPECT_TRUE(same_bits(m, m_ref));
  EXPECT_TRUE(same_bits(v, v_ref));
  const double norm = cpu::global_norm(g.data(), n), norm_ref = ref::global_norm(g.data(), n);
  EXPECT_NEAR(norm, norm_ref, 1e-12 * norm_ref);
}

TEST_P(FastOps, FusedOpsMatchTheReferenceOpsInSequence) {
  const Shape s = GetParam();
  const int N = s.B * s.T, C = s.C;
  std::mt19937 rng(10);
  // residual + LayerNorm
  auto a = random_floats(static_cast<size_t>(N) * C, rng, -2.0f, 2.0f);
  auto b = random_floats(a.size(), rng, -2.0f, 2.0f);
  auto w = random_floats(C, rng), bias = random_floats(C, rng);
  std::vector<float> res(a.size()), out(a.size()), mean(N), rstd(N);
  std::vector<float> res_ref(a.size()), out_ref(a.size()), mean_ref(N), rstd_ref(N);
  cpu::residual_layernorm_forward(res.data(), out.data(), mean.data(), rstd.data(), a.data(),
                                  b.data(), w.data(), bias.data(), N, C);
  ref::residual_forward(res_ref.data(), a.data(), b.data(), a.size());
  ref::layernorm_forward(out_ref.data(), mean_ref.data(), rstd_ref.data(), res_ref.data(), w.data(),
                         bias.data(), N, C);
  EXPECT_TRUE(same_bits(res, res_ref));
  EXPECT_LT(err(out, out_ref), kTol);
  EXPECT_LT(err(mean, mean_ref), kTol);
  EXPECT_LT(err(rstd, rstd_ref), kTol);
  // ...and the same bits as the fast ops unfused.
  std::vector<float> res2(a.size()), out2(a.size()), mean2(N), rstd2(N);
  cpu::residual_forward(res2.data(), a.data(), b.data(), a.size());
  cpu::layernorm_forward(out2.data(), mean2.data(), rstd2.data(), res2.data(), w.data(),
                         bias.data(), N, C);
  EXPECT_TRUE(same_bits(out, out2));
  EXPECT_TRUE(same_bits(rstd, rstd2));

  // bias + GELU after the MLP's first product (C -> 4C), values from -6 to 6 and beyond.
  const int OC = 4 * C;
  auto inp = random_floats(static_cast<size_t>(N) * C, rng, -3.0f, 3.0f);
  auto wf = random_floats(static_cast<size_t>(C) * OC, rng);
  auto bf = random_floats(OC, rng);
  std::vector<float> pre(static_cast<size_t>(N) * OC), act(pre.size());
  std::vector<float> pre_ref(pre.size()), act_ref(pre.size());
  cpu::matmul_gelu_forward(pre.data(), act.data(), inp.data(), wf.data(), bf.data(), N, C, OC);
  ref::matmul_forward(pre_ref.data(), inp.data(), wf.data(), bf.data(), N, C, OC,
                      kd::Layout::InOut);
  ref::gelu_forward(act_ref.data(), pre_ref.data(), pre_ref.size());
  EXPECT_LT(err(pre, pre_ref), kTol);
  EXPECT_LT(err(act, act_ref), kTol);
  std::vector<float> act2(pre.size());
  cpu::gelu_forward(act2.data(), pre.data(), pre.size());
  EXPECT_TRUE(same_bits(act, act2));
}

INSTANTIATE_TEST_SUITE_P(Shapes, FastOps, ::testing::ValuesIn(kShapes),
                         [](const testing::TestParamInfo<Shape>& info) {
                           const Shape& s = info.param;
                           char name[96];
                           std::snprintf(name, sizeof(name), "B%d_T%d_C%d_NH%d_V%d", s.B, s.T, s.C,
                                         s.NH, s.V);
                           return std::string(name);
                         });

TEST(VectorExp, WithinTwoUlpOfStdExp) {
  double worst = 0.0;
  for (int i = 0; i <= 2000000; ++i) {
    const float x = -87.0f + 175.0f * static_cast<float>(i) / 2000000.0f;
    const double want = std::exp(static_cast<double>(x));
    const double rel = std::abs(static_cast<double>(cpu::vexp(x)) - want) / want;
    worst = std::max(worst, rel);
  }
  EXPECT_LT(worst, 2.5e-7);  // 2 ulp of a float is 2.4e-7 relative at worst
  EXPECT_EQ(cpu::vexp(0.0f), 1.0f);
  EXPECT_GT(cpu::vexp(-1000.0f), 0.0f);  // clamped, not 0 and not a NaN
  EXPECT_LT(cpu::vexp(-1000.0f), 1e-37f);
  EXPECT_TRUE(std::isfinite(cpu::vexp(1000.0f)));
}

// Matmul splits its product across threads and attention hands tiles to threads: for a fixed
// thread count both give the same bits every time, and attention's result does not depend on the
// thread count at all (a tile is one thread's work).
TEST(FastOpsDeterminism, SameThreadsSameBits) {
  const int N = 256, C = 96, OC = 1000, B = 4, T = 64, NH = 4, AC = 64;
  std::mt19937 rng(8);
  auto inp = random_floats(static_cast<size_t>(N) * C, rng);
  auto w = random_floats(static_cast<size_t>(C) * OC, rng);
  auto dout = random_floats(static_cast<size_t>(N) * OC, rng);
  auto qkv = random_floats(static_cast<size_t>(B) * T * 3 * AC, rng);
  auto adout = random_floats(static_cast<size_t>(B) * T * AC, rng);
  auto run = [&](int threads) {
    std::vector<float> all;
    with_threads(threads, [&] {
      std::vector<float> out(static_cast<size_t>(N) * OC), dinp(inp.size(), 0.0f),
          dw(w.size(), 0.0f);
      cpu::matmul_forward(out.data(), inp.data(), w.data(), nullptr, N, C, OC, kd::Layout::OutIn);
      cpu::matmul_backward(dinp.data(), dw.data(), nullptr, dout.data(), inp.data(), w.data(), N, C,
                           OC, kd::Layout::OutIn);
      std::vector<float> aout(adout.size()), lse(static_cast<size_t>(B) * NH * T),
          dqkv(qkv.size(), 0.0f);
      cpu::attention_forward(aout.data(), lse.data(), qkv.data(), B, T, AC, NH);
      cpu::attention_backward(dqkv.data(), adout.data(), qkv.data(), aout.data(), lse.data(), B, T,
                              AC, NH);
      for (auto* v : {&out, &dinp, &dw, &aout, &lse, &dqkv})
        all.insert(all.end(), v->begin(), v->end());
    });
    return all;
  };
  EXPECT_TRUE(same_bits(run(2), run(2)));
  EXPECT_TRUE(same_bits(run(3), run(3)));
  EXPECT_TRUE(same_bits(run(1), run(1)));
}

// A whole training forward and backward of a small model, twice with the same threads: the same
// logits and the same gradients, bit for bit.
TEST(FastOpsDeterminism, ModelStepIsBitwiseRepeatable) {
  kd::GPT2Config cfg;
  cfg.n_layer = 2;
  cfg.n_head = 4;
  cfg.n_embd = 64;
  cfg.vocab_size = 300;
  cfg.block_size = 32;
  const int B = 4, T = 32, N = B * T;
  std::mt19937 rng(9);
  std::vector<int32_t> tokens(N), targets(N);
  for (int i = 0; i < N; ++i) {
    tokens[i] = static_cast<int32_t>(rng() % cfg.vocab_size);
    targets[i] = static_cast<int32_t>(rng() % cfg.vocab_size);
  }
  auto step = [&](int threads) {
    std::vector<float> result;
    with_threads(threads, [&] {
      kd::GPT2 model(cfg);
      model.init_random(42);
      model.enable_training();
      model.forward(tokens.data(), B, T);
      std::vector<float> logits(model.logits(), model.logits() + static_cast<size_t>(N) * 300);
      kd::LossSums sums;
      cpu::kd_loss(model.logits(), &sums, model.logits(), nullptr, 0, targets.data(), N, 300,
                   kd::LossConfig{}, 1.0f / N);
      model.backward(model.logits());
      result = logits;
      result.insert(result.end(), model.grads.begin(), model.grads.end());
    });
    return result;
  };
  const auto a = step(2), b = step(2);
  EXPECT_TRUE(same_bits(a, b));
  const auto c = step(1), d = step(1);
  EXPECT_TRUE(same_bits(c, d));
}

TEST(Threads, ResolveAndSet) {
  EXPECT_GE(cpu::available_cores(), 1);
  const char* env = std::getenv("OMP_NUM_THREADS");
  const std::string saved_env = env ? env : "";
  ::unsetenv("OMP_NUM_THREADS");
  EXPECT_EQ(cpu::resolve_threads(0), cpu::available_cores());
  EXPECT_EQ(cpu::resolve_threads(3), 3);
  // threads = 0 honours OMP_NUM_THREADS (its first entry), and ignores a value that is no count
  const std::pair<const char*, int> cases[] = {
      {"5", 5}, {"7,2", 7}, {"0", cpu::available_cores()}, {"many", cpu::available_cores()}};
  for (const auto& [value, want] : cases) {
    ::setenv("OMP_NUM_THREADS", value, 1);
    EXPECT_EQ(cpu::resolve_threads(0), want) << "OMP_NUM_THREADS=" << value;
    EXPECT_EQ(cpu::resolve_threads(3), 3) << "a recipe's count wins";
  }
  if (env)
    ::setenv("OMP_NUM_THREADS", saved_env.c_str(), 1);
  else
    ::unsetenv("OMP_NUM_THREADS");
  const int saved = omp_get_max_threads();
  EXPECT_EQ(cpu::set_threads(3), 3);
  EXPECT_EQ(omp_get_max_threads(), 3);
  cpu::set_threads(saved);
}

}  // namespace
